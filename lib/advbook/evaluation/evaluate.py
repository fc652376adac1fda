"""Robustness evaluation suite (VIR §5.4): one call, many attacks, per-sample robust flags.

Every evaluation maps ``(model, x, y, **settings)`` to a boolean tensor: True where the sample
is still classified correctly after the attack. :func:`evaluate` runs a list of them on a
fixed test subset. A sample the model already gets wrong is not robust under any attack, so
attacks only run on the naturally correct ones. With ``resume_dir`` each attack's flags are
written (atomically) when it finishes, and an interrupted evaluation skips the attacks it has
already done; AutoAttack also keeps its own state file there, so it resumes between its parts.

* ``natural``; ``fgsm``; ``pgd`` (L-inf, random start, all steps run);
* ``bim``: the basic iterative method (Kurakin et al., 2017): the ``pgd`` loop from the clean image,
  no random start, all steps run, the last iterate judged;
* ``mim``: the momentum iterative method (Dong et al., 2018): sign steps along an accumulated,
  L1-normalised gradient, ``decay`` (mu) 1.0 as in the paper, from the clean image;
* ``transfer``: L-inf PGD examples crafted on a *surrogate* model (black box for the evaluated one):
  the setting ``surrogate`` names a model of the ``surrogates`` that :func:`evaluate` is given;
* ``cw``: the CW margin loss (confidence ``kappa``, 50 as in the GAIRAT and MAIL reference
  evaluations) maximised by L-inf PGD;
* ``fmn``: foolbox's ``LInfFMNAttack`` (minimum norm, robust if no adversarial within ``eps``);
* ``autoattack``: the faithful port ``pyautoattack`` (``version="standard"``, or ``"custom"``:
  the standard version's settings restricted to the listed ``parts``, a reduced, labelled budget);
* ``apgd_ce``: pyautoattack's ``APGDAttack`` alone with the cross-entropy loss, L-inf or L2
  (``norm``), ``steps`` iterations and ``restarts`` random restarts (a restart attacks only the
  samples the earlier ones left robust) - the reference evaluation of the RRM chapter, whose
  ``l_inf/ibm_test.py`` (github:Ethos-lab/robust-representation-matching) runs ART's
  ``AutoProjectedGradientDescent`` with ``eps_step=2*eps`` (l.151; pyautoattack's initial step is
  the same 2 eps), ``batch_size`` 50 (l.25), the loss of its ``PyTorchClassifier``,
  cross-entropy summed (l.118-120), and, as its README runs it (l.87), ``--pgd-iters 50`` and
  ``--random-restarts 10``, passed as ``max_iter`` and ``nb_random_init`` (l.148-158);
  ``l_2/ibm_test.py`` is the same with ``norm=2`` (l.155-165). ART's implementation judges a sample
  by the last iterate of each restart, pyautoattack's by every iterate; on the tests' model the two
  agree within one image of 200 (tests/test_apgd_ce.py);
* ``square``: pyautoattack's Square attack with ``n_queries`` queries (black box);
* ``spsa``: gradient-free SPSA (:mod:`advbook.spsa`; black box);
* ``mde``: the margin-decomposition ensemble (:mod:`advbook.mde`): APGD-CE, MD, MD-MT and FAB-T
  chained, each on the samples the previous parts left robust; ``parts`` picks a subset.

Settings are checked before any work: a misspelled or missing setting is an error naming the
evaluation and the valid settings (those of its function's signature, less the ``batch_size``,
``state_path`` and ``surrogates`` that :func:`evaluate` supplies). A resume file is keyed by the
settings *and* by the evaluation's code version (:data:`EVAL_CODE_VERSION`, with the versions of the
evaluations and reference libraries it calls): bump an evaluation's number whenever a change to its
code can change its flags, and its cached flags are recomputed while the others are still read back.
:func:`display_name` names what actually ran ("APGD-CE" for AutoAttack reduced to that part).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import contextlib
import inspect
import time
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
import torch.nn.functional as F

from advbook.core import cache
from advbook.attacks.core import linf_start, margin, pgd, sign_ascent
from advbook.attacks.mde import md_attack, md_targets
from advbook.attacks.spsa import spsa_attack
from advbook.attacks.threats import get_threat
from advbook.models.defended import is_randomized
from advbook.training.framework import in_eval_mode

__all__ = ["EVALUATIONS", "EVAL_CODE_VERSION", "AA_PARTS", "AA_STANDARD", "MDE_PARTS", "APGD_NORMS", "evaluate",
           "cw_loss", "EvalResult", "pgd_predictions", "display_name", "code_version", "valid_settings",
           "bim_examples", "mim_examples"]


def _fgsm(model, x, y, *, eps: float):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    x_adv = (x + eps * grad.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _pgd_predictions(model, x, y, *, eps: float, step_size: float, steps: int, seed: int = 0):
    res = pgd(model, x, y, norm="linf", eps=eps, step_size=step_size, steps=steps, random_start=True,
              stop_on_success=False, seed=seed)
    with torch.no_grad():
        return model(res.x_adv).argmax(1)


def _pgd(model, x, y, *, eps: float, step_size: float, steps: int, seed: int = 0):
    return _pgd_predictions(model, x, y, eps=eps, step_size=step_size, steps=steps, seed=seed) == y


def cw_loss(logits: torch.Tensor, y: torch.Tensor, *, kappa: float = 50.0) -> torch.Tensor:
    """Summed CW margin loss ``-clamp(z_y - max_{j != y} z_j + kappa, min=0)``, to be maximised."""
    return -(margin(logits, y) + kappa).clamp(min=0).sum()


def _cw(model, x, y, *, eps: float, step_size: float, steps: int, kappa: float = 50.0, seed: int = 0):
    g = torch.Generator(device=x.device).manual_seed(seed)
    start = linf_start(x, eps=eps, generator=g)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)

    def still_correct(logits):
        robust.logical_and_(logits.argmax(1) == y)

    x_adv = sign_ascent(model, x, x_start=start, objective=lambda logits: cw_loss(logits, y, kappa=kappa), eps=eps,
                        step_size=step_size, steps=steps, observe=still_correct)
    with torch.no_grad():
        return robust & (model(x_adv).argmax(1) == y)


def _fmn(model, x, y, *, eps: float, steps: int):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
    _, clipped, success = fb.attacks.LInfFMNAttack(steps=steps)(fmodel, x, y, epsilons=eps)
    with torch.no_grad():
        return ~success & (model(clipped).argmax(1) == y)


AA_PARTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")   # pyautoattack's attacks
AA_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")                  # its standard version


def _autoattack(model, x, y, *, eps: float, version: str = "standard", parts: list | tuple | None = None,
                seed: int = 0, batch_size: int = 250, state_path: Path | None = None):
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, eps=eps, norm="Linf", seed=seed, device=x.device, version=version,
                           attacks=list(parts) if version == "custom" else None)
    adversary.verbose = False
    if version == "custom":  # the standard version's settings (one restart, 9 targets) on a subset
        adversary._set_version("standard")
        adversary.attacks_to_run = list(parts)
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    for targeted in (adversary.fab, adversary.apgd_targeted):  # 9 targets, or all there are
        targeted.n_target_classes = min(targeted.n_target_classes, n_classes - 1)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state_path)
    with torch.no_grad():
        return model(x_adv.to(x.device)).argmax(1) == y


APGD_NORMS = ("Linf", "L2")   # the threat models of APGD-CE here (pyautoattack also has L1)


def _apgd_ce(model, x, y, *, eps: float, norm: str = "Linf", steps: int = 50, restarts: int = 1, seed: int = 0):
    """pyautoattack's APGD with the CE loss, ``rho`` 0.75 and one EOT sample (its defaults, as in
    AutoAttack's standard version); 50 steps as in the RRM reference evaluation, one restart as in
    AutoAttack's standard APGD-CE (the reference's 10 are a setting)."""
    from pyautoattack.autopgd_base import APGDAttack

    attack = APGDAttack(model, n_iter=steps, norm=norm, n_restarts=restarts, eps=eps, seed=seed, loss="ce",
                        device=x.device)
    x_adv = attack.perturb(x, y)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _apgd_settings(settings: dict) -> tuple:
    """(norm, steps, restarts) of apgd_ce ``settings``, its defaults where left out."""
    defaults = {p.name: p.default for p in inspect.signature(_apgd_ce).parameters.values()}
    return tuple(settings.get(k, defaults[k]) for k in ("norm", "steps", "restarts"))


def _square_examples(model, x, y, *, eps: float, n_queries: int, seed: int = 0) -> torch.Tensor:
    """pyautoattack's Square attack (L-inf, one restart, ``p_init`` 0.8 as in AutoAttack): its examples."""
    from pyautoattack.square import SquareAttack

    attack = SquareAttack(model, p_init=0.8, n_queries=n_queries, eps=eps, norm="Linf", n_restarts=1, seed=seed,
                          verbose=False, device=x.device, resc_schedule=False)
    return attack.perturb(x, y)


def _square(model, x, y, *, eps: float, n_queries: int, seed: int = 0):
    x_adv = _square_examples(model, x, y, eps=eps, n_queries=n_queries, seed=seed)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _spsa(model, x, y, *, eps: float, steps: int, samples: int, delta: float = 0.001, lr: float = 0.01,
          seed: int = 0):
    return spsa_attack(model, x, y, eps=eps, steps=steps, samples=samples, delta=delta, lr=lr, seed=seed)


MDE_PARTS = ("apgd-ce", "md", "mdmt", "fab-t")


def _mde(model, x, y, *, eps: float, parts: list | tuple = MDE_PARTS, steps: int = 50, change_point: int = 20,
         n_targets: int = 9, seed: int = 0, batch_size: int = 250):
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    md = dict(eps=eps, steps=steps, change_point=change_point, seed=seed)
    for part in parts:
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        xs, ys = x[idx], y[idx]
        if part in ("apgd-ce", "fab-t"):
            r = _autoattack(model, xs, ys, eps=eps, version="custom", parts=[part], seed=seed, batch_size=batch_size)
        elif part == "md":
            r = md_attack(model, xs, ys, **md)
        else:  # mdmt: one targeted MD per target, each on the samples still robust
            targets = md_targets(model, xs, ys, n_targets=n_targets)
            r = torch.ones(len(xs), dtype=torch.bool, device=x.device)
            for k in range(n_targets):
                sub = r.nonzero().squeeze(1)
                if len(sub):
                    r[sub] = md_attack(model, xs[sub], ys[sub], target=targets[sub, k], **md)
        robust[idx] = r
    return robust


def bim_examples(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int) -> torch.Tensor:
    """The basic iterative method's examples (Kurakin, Goodfellow & Bengio, 2017, "Adversarial
    examples in the physical world", Eq. 2): ``steps`` sign steps of ``step_size`` on the summed
    cross-entropy from the clean image, each clipped to the L-inf ``eps``-ball and to [0, 1] - the
    ``pgd`` loop (:func:`advbook.attacks.core.pgd`) without its random start, every step run and
    the last iterate returned, as foolbox 3.3.4's ``LinfBasicIterativeAttack`` does (a PGD with
    ``random_start=False``). Kurakin et al. step by 1/255 for min(eps + 4, 1.25 eps) steps (in
    pixels); the supplement's BIM(10) gives only the steps, so the step size is a setting."""
    return pgd(model, x, y, norm="linf", eps=eps, step_size=step_size, steps=steps, random_start=False,
               stop_on_success=False).x_adv


def _bim(model, x, y, *, eps: float, step_size: float, steps: int):
    x_adv = bim_examples(model, x, y, eps=eps, step_size=step_size, steps=steps)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def mim_examples(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
                 decay: float = 1.0) -> torch.Tensor:
    """The momentum iterative method's examples (Dong et al., 2018, "Boosting adversarial attacks
    with momentum", Algorithm 1): from the clean image, ``g <- decay * g + grad / ||grad||_1`` (per
    sample, the gradient of the summed cross-entropy), then a sign step of ``step_size`` along ``g``
    clipped to the L-inf ``eps``-ball and to [0, 1] (the L-inf threat model's step and projection, as
    in ``pgd``); the last iterate is returned. ``decay`` 1.0 is the paper's mu; Algorithm 1 steps by
    eps / steps (the supplement's MIM(40) gives only the steps, so the step size is a setting).

    The paper and ART 1.20's ``MomentumIterativeMethod`` divide by the L1 norm, the paper's code
    (github:dongyp13/Non-Targeted-Adversarial-Attacks, ``attack_iter.py``, ``graph``: momentum 1.0,
    ``alpha = eps / num_iter``, clipping to ``[x - eps, x + eps]`` and the image range) by the mean
    absolute value: that scales every term of ``g`` by the same number of pixels, so the sign, and
    the step, are the same. A sample whose
    gradient is zero adds nothing to ``g`` (ART's guard too). With ``decay=0``,
    ``g`` is the normalised gradient of this step alone, whose sign is the gradient's: the examples
    are then those of :func:`bim_examples` with the same ``step_size`` and ``steps``, bit for bit
    (tests/test_agk_eval.py)."""
    threat = get_threat("linf", eps=eps, step_size=step_size)
    x_adv, g = x.clone(), torch.zeros_like(x)
    tiny = torch.finfo(x.dtype).tiny
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        with torch.no_grad():
            l1 = grad.abs().flatten(1).sum(1).clamp_min(tiny).view(-1, *([1] * (x.dim() - 1)))
            g = decay * g + grad / l1
            x_adv = threat.project(threat.step(x_adv, grad=g), x=x)
    return x_adv.detach()


def _mim(model, x, y, *, eps: float, step_size: float, steps: int, decay: float = 1.0):
    x_adv = mim_examples(model, x, y, eps=eps, step_size=step_size, steps=steps, decay=decay)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _transfer(model, x, y, *, surrogate: str, eps: float, step_size: float, steps: int, seed: int = 0,
              surrogates: dict | None = None):
    """Black-box transfer: L-inf PGD (random start, all steps, the ``pgd`` evaluation's attack) on
    the cross-entropy of the surrogate ``surrogates[surrogate]`` for the true labels, the last
    iterate then classified by ``model``. The surrogate model is an object, not a JSON setting, so
    :func:`evaluate` supplies ``surrogates`` (name -> model) as it supplies ``batch_size``, and the
    setting ``surrogate`` names one of them: its resume file is keyed by that name, as the evaluated
    model's is keyed by nothing (keep a ``resume_dir`` for one model, one ``x`` and one surrogate per
    name). AGK-T5 (the CAT comparison) transfers from a VGG-16 and a WideResNet this way. With the
    evaluated model as its own surrogate the flags are the ``pgd`` evaluation's, bit for bit."""
    res = pgd(surrogates[surrogate], x, y, norm="linf", eps=eps, step_size=step_size, steps=steps,
              random_start=True, stop_on_success=False, seed=seed)
    with torch.no_grad():
        return model(res.x_adv).argmax(1) == y


EVALUATIONS: dict[str, Callable] = {"fgsm": _fgsm, "pgd": _pgd, "cw": _cw, "fmn": _fmn,
                                    "autoattack": _autoattack, "square": _square, "spsa": _spsa, "mde": _mde,
                                    "apgd_ce": _apgd_ce, "bim": _bim, "mim": _mim, "transfer": _transfer}

# The code version of each evaluation. Bump an entry whenever a change to the code behind it (the
# function above, or the attack it calls in advbook.attacks) can change its flags: its resume
# files then no longer match and are recomputed, while every other evaluation's are still read.
EVAL_CODE_VERSION: dict[str, int] = {"fgsm": 1, "pgd": 1, "cw": 1, "fmn": 1, "autoattack": 1, "square": 1,
                                     "spsa": 1, "mde": 1, "apgd_ce": 1, "bim": 1, "mim": 1, "transfer": 1}
SUITE_VERSION = 1   # what every evaluation shares: natural flags first, batching, seeds, file format
_CALLS = {"mde": ("autoattack",)}   # evaluations that run another one's code
_LIBRARIES = {"fmn": ("foolbox",), "autoattack": ("pyautoattack",), "square": ("pyautoattack",),
              "mde": ("pyautoattack",), "apgd_ce": ("pyautoattack",)}
_INJECTED = frozenset({"batch_size", "state_path", "surrogates"})   # supplied by evaluate(), not settings


@functools.lru_cache(maxsize=None)
def _library_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def code_version(kind: str) -> dict:
    """What a resume file of evaluation ``kind`` is keyed by besides its settings: the suite's
    version, the evaluation's own (:data:`EVAL_CODE_VERSION`) and those of the evaluations and
    reference libraries it calls."""
    evals = (kind, *_CALLS.get(kind, ()))
    return {"suite": SUITE_VERSION, "evaluations": {k: EVAL_CODE_VERSION[k] for k in evals},
            "libraries": {lib: _library_version(lib) for lib in _LIBRARIES.get(kind, ())}}


def valid_settings(kind: str) -> tuple[list[str], list[str]]:
    """(valid, required) setting names of evaluation ``kind``, from its function's signature."""
    params = [p for p in list(inspect.signature(EVALUATIONS[kind]).parameters.values())[3:]
              if p.name not in _INJECTED]
    return [p.name for p in params], [p.name for p in params if p.default is inspect.Parameter.empty]


def _check(attacks: dict[str, dict]) -> None:
    """Every name known and every setting valid, before any work; each error is one line."""
    bad = sorted({name.split(":")[0] for name in attacks} - set(EVALUATIONS))
    if bad:
        raise ValueError(f"unknown evaluation(s) {', '.join(bad)}; valid: {', '.join(EVALUATIONS)}")
    for name, settings in attacks.items():
        kind = name.split(":")[0]
        if not isinstance(settings, dict):
            raise ValueError(f"{name}: settings must be a dict, got {type(settings).__name__}")
        valid, required = valid_settings(kind)
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise ValueError(f"{name}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        missing = [k for k in required if k not in settings]
        if missing:
            raise ValueError(f"{name}: missing setting(s) {', '.join(missing)}; valid: {', '.join(valid)}")
        if kind == "mde":
            wrong = sorted(set(settings.get("parts", MDE_PARTS)) - set(MDE_PARTS))
            if wrong:
                raise ValueError(f"unknown MDE part(s) {', '.join(wrong)}; valid: {', '.join(MDE_PARTS)}")
        if kind == "apgd_ce":
            norm, steps, restarts = _apgd_settings(settings)
            if norm not in APGD_NORMS:
                raise ValueError(f"{name}: unknown norm {norm!r}; valid: {', '.join(APGD_NORMS)}")
            if not (isinstance(steps, int) and steps >= 1 and isinstance(restarts, int) and restarts >= 1):
                raise ValueError(f"{name}: steps and restarts must be integers >= 1, got {steps!r} and {restarts!r}")
        if kind == "mim":
            decay = settings.get("decay", 1.0)
            if not (isinstance(decay, (int, float)) and decay >= 0):
                raise ValueError(f"{name}: decay must be a number >= 0, got {decay!r}")
        if kind == "autoattack":
            version, parts = settings.get("version", "standard"), settings.get("parts")
            if version not in ("standard", "custom"):
                raise ValueError(f"{name}: version must be standard or custom, got {version!r}")
            if version == "custom" and not parts:
                raise ValueError(f"{name}: version='custom' needs parts, a subset of {', '.join(AA_PARTS)}")
            wrong = sorted(set(parts or ()) - set(AA_PARTS))
            if wrong:
                raise ValueError(f"{name}: unknown AutoAttack part(s) {', '.join(wrong)}; valid: {', '.join(AA_PARTS)}")
            if version == "standard" and parts is not None and sorted(parts) != sorted(AA_STANDARD):
                raise ValueError(f"{name}: parts {', '.join(parts)} would be ignored by version='standard' "
                                 f"(it runs {', '.join(AA_STANDARD)}); use version='custom'")


def _check_surrogates(attacks: dict[str, dict], surrogates: dict | None) -> None:
    """Every ``transfer`` evaluation names one of ``surrogates``, before any work."""
    known = dict(surrogates or {})
    for name, settings in attacks.items():
        if name.split(":")[0] == "transfer" and not (isinstance(settings["surrogate"], str)
                                                     and settings["surrogate"] in known):
            valid = ", ".join(map(str, known)) or "none (pass evaluate(..., surrogates={name: model}))"
            raise ValueError(f"{name}: unknown surrogate {settings['surrogate']!r}; valid: {valid}")


_PART_NAMES = {"apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T", "fab": "FAB", "fab-t": "FAB-T",
               "square": "Square", "md": "MD", "mdmt": "MD-MT"}


def display_name(name: str, settings: dict) -> str:
    """The name of what actually ran under ``settings``: "AutoAttack" and "MDE" only with all their
    parts (else the parts that ran, e.g. "APGD-CE" or "MD + MD-MT"), and the budget of a single
    iterative attack ("PGD-20", "Square-5000"; "APGD-CE, 50 steps, 1 restart")."""
    kind = name.split(":")[0]
    if kind in ("autoattack", "mde"):
        full, label = (AA_STANDARD, "AutoAttack") if kind == "autoattack" else (MDE_PARTS, "MDE")
        standard = kind == "autoattack" and settings.get("version", "standard") == "standard"
        parts = tuple(full if standard else settings.get("parts") or (() if kind == "autoattack" else MDE_PARTS))
        if sorted(parts) == sorted(full):
            return label
        return " + ".join(_PART_NAMES.get(p, p) for p in parts)
    if kind == "apgd_ce":
        norm, steps, restarts = _apgd_settings(settings)
        label = "APGD-CE" if norm == "Linf" else f"APGD-CE ({norm})"
        return f"{label}, {steps} steps, {restarts} restart{'s' if restarts != 1 else ''}"
    if kind == "transfer":
        steps = f"-{settings['steps']}" if "steps" in settings else ""
        return f"PGD{steps} transfer from {settings.get('surrogate', '?')}"
    budget = {"fgsm": None, "pgd": "steps", "cw": "steps", "fmn": "steps", "square": "n_queries", "spsa": "steps",
              "bim": "steps", "mim": "steps"}
    base = {"fgsm": "FGSM", "pgd": "PGD", "cw": "CW", "fmn": "FMN", "square": "Square", "spsa": "SPSA",
            "bim": "BIM", "mim": "MIM"}.get(kind, name)
    key = budget.get(kind)
    return f"{base}-{settings[key]}" if key and key in settings else base


@dataclasses.dataclass
class EvalResult:
    robust: pd.DataFrame   # one boolean column per evaluation ("natural" first), one row per sample
    seconds: dict          # evaluation -> wall seconds (0 when read back from a resume file)
    ran: dict = dataclasses.field(default_factory=dict)    # evaluation (and "worst") -> what ran (display_name)
    code: dict = dataclasses.field(default_factory=dict)   # evaluation -> the code version it ran under

    def accuracy(self) -> pd.Series:
        """Accuracy in % per evaluation, plus ``worst`` (robust under every attack)."""
        acc = self.robust.mean() * 100
        acc["worst"] = self.robust.all(axis=1).mean() * 100
        return acc


def _batches(todo: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """The positions ``todo`` in consecutive batches: the one batching (and so the one seeding,
    each batch's attack seeded with the same ``seed``) of :func:`evaluate` and :func:`pgd_predictions`."""
    for i in range(0, len(todo), batch_size):
        yield todo[i:i + batch_size]


@torch.no_grad()
def _predict(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, attacks: dict[str, dict], batch_size: int = 500,
             resume_dir: str | Path | None = None, surrogates: dict[str, torch.nn.Module] | None = None) -> EvalResult:
    """Run ``attacks`` (name -> settings; names from :data:`EVALUATIONS`, a name may carry a
    suffix after ``:``, e.g. ``"pgd:20"``) on inputs ``x`` in [0, 1] with labels ``y``, with the
    model in eval mode (its own mode is given back afterwards). ``resume_dir`` must be kept for one
    model and one ``x``: its files are keyed by settings and code version only. A randomised model
    (:func:`~advbook.models.defended.is_randomized`) is refused one: its flags depend on its seed and
    on the calls made before, and would be read back as if they did not. ``surrogates`` (name -> model,
    on the device of ``x``, each run in eval mode too) are the models the ``transfer`` evaluations
    craft their examples on, named by their setting ``surrogate``; a randomised one is refused a
    ``resume_dir`` as well."""
    _check(attacks)
    _check_surrogates(attacks, surrogates)
    if resume_dir is not None:
        for who in (model, *(surrogates or {}).values()):
            if is_randomized(who):
                raise ValueError(f"evaluate: resume_dir caches flags as a deterministic function of the settings, "
                                 f"and {type(who).__name__} is randomised; evaluate it without resume_dir")
    folder = Path(resume_dir) if resume_dir is not None else None
    y = y.to(x.device)
    with contextlib.ExitStack() as modes:
        for who in (model, *(surrogates or {}).values()):
            modes.enter_context(in_eval_mode(who))
        natural = _predict(model, x, batch_size) == y
        flags, seconds, code = {"natural": natural.cpu()}, {}, {}
        todo = natural.nonzero().squeeze(1)
        for name, settings in attacks.items():
            kind = name.split(":")[0]
            code[name] = code_version(kind)
            stem = f"{name.replace(':', '_')}-{cache.stable_hash({'settings': settings, 'code': code[name]})}"
            path = folder / f"{stem}.pt" if folder else None
            if path is not None and path.exists():
                try:
                    state = cache.load_checkpoint(path)
                    if state.get("code") == code[name] and len(state["robust"]) == len(x):
                        flags[name], seconds[name] = state["robust"].bool(), 0.0
                        continue
                except cache.CorruptCheckpoint:
                    pass
                path.unlink(missing_ok=True)
            fn = EVALUATIONS[kind]
            params = inspect.signature(fn).parameters
            extra = {"batch_size": batch_size} if "batch_size" in params else {}
            if "surrogates" in params:
                extra["surrogates"] = surrogates
            if folder is not None and "state_path" in params:
                extra["state_path"] = folder / f"{stem}-aa-state.json"
            t0 = time.perf_counter()
            robust = torch.zeros(len(x), dtype=torch.bool)
            if len(todo):
                if kind == "autoattack":  # it batches and resumes by itself
                    robust[todo.cpu()] = fn(model, x[todo], y[todo], **extra, **settings).cpu()
                else:
                    for idx in _batches(todo, batch_size):
                        robust[idx.cpu()] = fn(model, x[idx], y[idx], **extra, **settings).cpu()
            seconds[name] = time.perf_counter() - t0
            flags[name] = robust
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                cache.save_checkpoint(path, {"robust": robust, "settings": settings, "code": code[name]})
    ran = {"natural": "natural", **{name: display_name(name, s) for name, s in attacks.items()}}
    ran["worst"] = "worst of " + ", ".join(ran[n] for n in attacks) if attacks else "natural"
    return EvalResult(pd.DataFrame({k: v.numpy() for k, v in flags.items()}), seconds, ran, code)


def pgd_predictions(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
                    batch_size: int = 500, seed: int = 0) -> torch.Tensor:
    """The model's predictions on L-inf PGD examples (random start, all steps), for confusion
    matrices under attack (VIR Fig. 1–2).

    The same computation as :func:`evaluate`'s ``pgd`` with these settings and ``batch_size``
    (same batches, same seed), so ``pgd_predictions(...) == y`` are its flags exactly. As there
    (and in AutoAttack), a sample the model already gets wrong is not attacked: its prediction is
    the natural one."""
    settings = dict(eps=eps, step_size=step_size, steps=steps, seed=seed)
    _check({"pgd": settings})
    y = y.to(x.device)
    with in_eval_mode(model):
        pred = _predict(model, x, batch_size)
        for idx in _batches((pred == y).nonzero().squeeze(1), batch_size):
            pred[idx] = _pgd_predictions(model, x[idx], y[idx], **settings)
    return pred.cpu()

"""Robustness evaluation suite (VIR §5.4): one call, many attacks, per-sample robust flags.

Every evaluation maps ``(model, x, y, **settings)`` to a boolean tensor: True where the sample
is still classified correctly after the attack. :func:`evaluate` runs a list of them on a
fixed test subset. A sample the model already gets wrong is not robust under any attack, so
attacks only run on the naturally correct ones. With ``resume_dir`` each attack's flags are
written (atomically) when it finishes, and an interrupted evaluation skips the attacks it has
already done; AutoAttack also keeps its own state file there, so it resumes between its parts.

* ``natural``; ``fgsm``; ``pgd`` (L-inf, random start, all steps run);
* ``cw``: the CW margin loss (confidence ``kappa``, 50 as in the GAIRAT and MAIL reference
  evaluations) maximised by L-inf PGD;
* ``fmn``: foolbox's ``LInfFMNAttack`` (minimum norm, robust if no adversarial within ``eps``);
* ``autoattack``: the faithful port ``pyautoattack`` (``version="standard"``, or ``"custom"``:
  the standard version's settings restricted to the listed ``parts``, a reduced, labelled budget);
* ``square``: pyautoattack's Square attack with ``n_queries`` queries (black box);
* ``spsa``: gradient-free SPSA (:mod:`advbook.spsa`; black box);
* ``mde``: the margin-decomposition ensemble (:mod:`advbook.mde`): APGD-CE, MD, MD-MT and FAB-T
  chained, each on the samples the previous parts left robust; ``parts`` picks a subset.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from advbook.core import cache
from advbook.attacks.core import linf_start, margin, pgd, sign_ascent
from advbook.attacks.mde import md_attack, md_targets
from advbook.attacks.spsa import spsa_attack

__all__ = ["EVALUATIONS", "evaluate", "cw_loss", "EvalResult", "pgd_predictions"]


def _fgsm(model, x, y, *, eps: float, **_):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    x_adv = (x + eps * grad.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _pgd(model, x, y, *, eps: float, step_size: float, steps: int, seed: int = 0, **_):
    res = pgd(model, x, y, norm="linf", eps=eps, step_size=step_size, steps=steps, random_start=True,
              stop_on_success=False, seed=seed)
    return ~res.success


def cw_loss(logits: torch.Tensor, y: torch.Tensor, *, kappa: float = 50.0) -> torch.Tensor:
    """Summed CW margin loss ``-clamp(z_y - max_{j != y} z_j + kappa, min=0)``, to be maximised."""
    return -(margin(logits, y) + kappa).clamp(min=0).sum()


def _cw(model, x, y, *, eps: float, step_size: float, steps: int, kappa: float = 50.0, seed: int = 0, **_):
    g = torch.Generator(device=x.device).manual_seed(seed)
    start = linf_start(x, eps=eps, generator=g)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)

    def still_correct(logits):
        robust.logical_and_(logits.argmax(1) == y)

    x_adv = sign_ascent(model, x, x_start=start, objective=lambda logits: cw_loss(logits, y, kappa=kappa), eps=eps,
                        step_size=step_size, steps=steps, observe=still_correct)
    with torch.no_grad():
        return robust & (model(x_adv).argmax(1) == y)


def _fmn(model, x, y, *, eps: float, steps: int, **_):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)
    _, clipped, success = fb.attacks.LInfFMNAttack(steps=steps)(fmodel, x, y, epsilons=eps)
    with torch.no_grad():
        return ~success & (model(clipped).argmax(1) == y)


def _autoattack(model, x, y, *, eps: float, version: str = "standard", parts: list | None = None,
                seed: int = 0, batch_size: int = 250, state_path: Path | None = None, **_):
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


def _square(model, x, y, *, eps: float, n_queries: int, seed: int = 0, **_):
    from pyautoattack.square import SquareAttack

    attack = SquareAttack(model, p_init=0.8, n_queries=n_queries, eps=eps, norm="Linf", n_restarts=1, seed=seed,
                          verbose=False, device=x.device, resc_schedule=False)
    x_adv = attack.perturb(x, y)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def _spsa(model, x, y, *, eps: float, steps: int, samples: int, delta: float = 0.001, lr: float = 0.01,
          seed: int = 0, **_):
    return spsa_attack(model, x, y, eps=eps, steps=steps, samples=samples, delta=delta, lr=lr, seed=seed)


MDE_PARTS = ("apgd-ce", "md", "mdmt", "fab-t")


def _mde(model, x, y, *, eps: float, parts: list | tuple = MDE_PARTS, steps: int = 50, change_point: int = 20,
         n_targets: int = 9, seed: int = 0, batch_size: int = 250, **_):
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


EVALUATIONS: dict[str, Callable] = {"fgsm": _fgsm, "pgd": _pgd, "cw": _cw, "fmn": _fmn,
                                    "autoattack": _autoattack, "square": _square, "spsa": _spsa, "mde": _mde}


def _check(attacks: dict[str, dict]) -> None:
    bad = sorted({name.split(":")[0] for name in attacks} - set(EVALUATIONS))
    if bad:
        raise ValueError(f"unknown evaluation(s) {', '.join(bad)}; valid: {', '.join(EVALUATIONS)}")
    for name, settings in attacks.items():
        if name.split(":")[0] == "mde":
            wrong = sorted(set(settings.get("parts", MDE_PARTS)) - set(MDE_PARTS))
            if wrong:
                raise ValueError(f"unknown MDE part(s) {', '.join(wrong)}; valid: {', '.join(MDE_PARTS)}")


@dataclasses.dataclass
class EvalResult:
    robust: pd.DataFrame   # one boolean column per evaluation ("natural" first), one row per sample
    seconds: dict          # evaluation -> wall seconds (0 when read back from a resume file)

    def accuracy(self) -> pd.Series:
        """Accuracy in % per evaluation, plus ``worst`` (robust under every attack)."""
        acc = self.robust.mean() * 100
        acc["worst"] = self.robust.all(axis=1).mean() * 100
        return acc


def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, attacks: dict[str, dict], batch_size: int = 500,
             resume_dir: str | Path | None = None) -> EvalResult:
    """Run ``attacks`` (name -> settings; names from :data:`EVALUATIONS`, a name may carry a
    suffix after ``:``, e.g. ``"pgd:20"``) on inputs ``x`` in [0, 1] with labels ``y``."""
    _check(attacks)
    model.eval()
    y = y.to(x.device)
    folder = Path(resume_dir) if resume_dir is not None else None
    with torch.no_grad():
        natural = torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                             for i in range(0, len(x), batch_size)])
    flags, seconds = {"natural": natural.cpu()}, {}
    todo = natural.nonzero().squeeze(1)
    for name, settings in attacks.items():
        path = folder / f"{name.replace(':', '_')}-{cache.stable_hash(settings)}.pt" if folder else None
        if path is not None and path.exists():
            try:
                flags[name] = cache.load_checkpoint(path)["robust"].bool()
                seconds[name] = 0.0
                continue
            except cache.CorruptCheckpoint:
                path.unlink(missing_ok=True)
        fn = EVALUATIONS[name.split(":")[0]]
        t0 = time.perf_counter()
        robust = torch.zeros(len(x), dtype=torch.bool)
        if len(todo):
            if fn is _autoattack:  # it batches and resumes by itself
                extra = {"state_path": folder / f"{name.replace(':', '_')}-aa-state.json"} if folder else {}
                robust[todo.cpu()] = fn(model, x[todo], y[todo], batch_size=batch_size, **extra, **settings).cpu()
            else:
                for i in range(0, len(todo), batch_size):
                    idx = todo[i:i + batch_size]
                    robust[idx.cpu()] = fn(model, x[idx], y[idx], **settings).cpu()
        seconds[name] = time.perf_counter() - t0
        flags[name] = robust
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            cache.save_checkpoint(path, {"robust": robust})
    return EvalResult(pd.DataFrame({k: v.numpy() for k, v in flags.items()}), seconds)


def pgd_predictions(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
                    batch_size: int = 500, seed: int = 0) -> torch.Tensor:
    """The model's predictions on L-inf PGD examples (random start, all steps), for confusion
    matrices under attack (VIR Fig. 1–2)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        res = pgd(model, x[i:i + batch_size], y[i:i + batch_size].to(x.device), norm="linf", eps=eps,
                  step_size=step_size, steps=steps, random_start=True, stop_on_success=False, seed=seed + i)
        with torch.no_grad():
            out.append(model(res.x_adv).argmax(1).cpu())
    return torch.cat(out)

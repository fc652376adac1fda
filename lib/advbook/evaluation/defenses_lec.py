"""LEC-F11: every defense of the lecture under the attack it stops and under the one that breaks it.

Athalye, Carlini & Wagner (2018), "Obfuscated gradients give a false sense of security", found that
most defenses of their time stopped the attacks they were tested with only because those attacks
could not follow the defended model's gradient, and fell to an attack adapted to the defense. Each
row of :data:`DEFENSES` is therefore evaluated twice with the same budget on the same images:

* ``plain``: the attack the defense was designed against, its negative control;
* ``adaptive``: the attack built to get past it: EOT for randomness, BPDA for a non-differentiable
  pre-processor, the full gradient through a differentiable purifier, the logit margin for
  distillation's saturated softmax (:mod:`advbook.attacks.adaptive`).

The trained defenses (PGD-AT, ALP, TRADES) and the undefended model get the same two columns:
cross-entropy PGD and PGD on the logit margin. Every attack is L-inf PGD with a random start
(``eps``, ``step_size``, ``steps``; :func:`advbook.attacks.core.pgd` or
:func:`advbook.attacks.adaptive.margin_pgd`), all steps run; only the model it differentiates, or
its loss, differs (:data:`ATTACKS`).

**Judging.** A test image counts as correct under an attack when the *defended* model (one fresh
draw of its randomness, as Xie et al. and a deployed defense classify) still predicts its label at
the attack's last iterate, and it was classified correctly when clean (as in
:func:`advbook.evaluation.evaluate.evaluate`, attacks run only on those images). The attacker's
model (an EOT average, a BPDA surrogate, the undefended classifier) never judges.

**Randomness.** Every randomised wrapper is reseeded before each of the three evaluations of a row
(clean, plain, adaptive) with a seed of its own, so each column is reproducible on its own and
does not depend on which columns ran before. Nothing here is cached: a randomised model's flags are
not a function of the settings alone (see :mod:`advbook.models.defended`).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from advbook.attacks.adaptive import BPDA, EOT, margin_pgd
from advbook.attacks.core import pgd
from advbook.models.defended import NoiseLayers, Purified, Quantize, RandomResizePad, is_randomized
from advbook.training.framework import in_eval_mode

__all__ = ["Row", "DEFENSES", "ATTACKS", "ATTACK_NAMES", "WRAPPERS", "EVALUATIONS", "build_defenses",
           "attack_examples", "defense_flags", "evaluate_defenses", "gradient_table", "reseed"]

EVALUATIONS = ("clean", "plain", "adaptive")


@dataclasses.dataclass(frozen=True)
class Row:
    """One defense: the trained model it uses, the wrapper around it (:data:`WRAPPERS`), its plain
    and adaptive attacks (:data:`ATTACKS`), and what it is, in words."""
    model: str
    wrapper: str
    plain: str
    adaptive: str
    label: str
    kind: str       # "test-time" (a wrapper around the standard model) or "training"


DEFENSES: dict[str, Row] = {
    "undefended": Row("standard", "none", "pgd", "margin", "undefended", "none"),
    "resize_pad": Row("standard", "resize_pad", "pgd", "eot", "random resize-and-pad", "test-time"),
    "noise": Row("standard", "noise", "pgd", "eot", "input noise", "test-time"),
    "quantise": Row("standard", "quantise", "pgd", "bpda", "bit-depth reduction", "test-time"),
    "denoiser": Row("standard", "denoiser", "transfer", "pgd", "denoiser", "test-time"),
    "distillation": Row("student", "none", "pgd", "margin", "defensive distillation", "training"),
    "at": Row("at", "none", "pgd", "margin", "PGD-AT", "training"),
    "alp": Row("alp", "none", "pgd", "margin", "ALP", "training"),
    "trades": Row("trades", "none", "pgd", "margin", "TRADES", "training"),
}


def _none(model, *, params, purifier, seed):
    return model


def _resize_pad(model, *, params, purifier, seed):
    return RandomResizePad(model, out_size=params["resize_out"], seed=seed)


def _noise(model, *, params, purifier, seed):
    return NoiseLayers(model, sigma=params["noise_sigma"], seed=seed)


def _quantise(model, *, params, purifier, seed):
    return Purified(model, Quantize(bits=params["quantise_bits"]))


def _denoiser(model, *, params, purifier, seed):
    if purifier is None:
        raise ValueError("the denoiser defense needs a fitted purifier (purifier=)")
    return Purified(model, purifier)


# wrapper -> the defended model around a trained classifier
WRAPPERS: dict[str, Callable[..., nn.Module]] = {"none": _none, "resize_pad": _resize_pad, "noise": _noise,
                                                 "quantise": _quantise, "denoiser": _denoiser}


def build_defenses(models: dict, *, params: dict, purifier: nn.Module | None = None,
                   names: list[str] | None = None) -> dict[str, tuple[nn.Module, nn.Module]]:
    """name -> (defended model, the trained classifier inside it) for ``names`` (default: every row
    of :data:`DEFENSES`). ``models`` maps a model name to a trained classifier or a
    :class:`~advbook.training.train.TrainedModel`. Randomised wrappers get the seed ``params["seed"]``."""
    names = list(DEFENSES) if names is None else names
    unknown = [n for n in names if n not in DEFENSES]
    if unknown:
        raise ValueError(f"unknown defense(s) {', '.join(unknown)}; valid: {', '.join(DEFENSES)}")
    missing = sorted({DEFENSES[n].model for n in names} - set(models))
    if missing:
        raise ValueError(f"models {', '.join(missing)} are needed and missing; given: {', '.join(models)}")
    out = {}
    for name in names:
        row = DEFENSES[name]
        base = getattr(models[row.model], "model", models[row.model]).eval()
        out[name] = (WRAPPERS[row.wrapper](base, params=params, purifier=purifier, seed=params["seed"]), base)
    return out


# ---------------------------------------------------------------------------------------------
# Attacks: each returns the adversarial examples; the defended model judges them afterwards.
# ---------------------------------------------------------------------------------------------

def _pgd(defended, base, x, y, *, eps, step_size, steps, eot_samples, seed):
    """Cross-entropy PGD through the defended model as it is: one draw of its randomness per step, the
    exact (zero) gradient of a quantiser, the softmax at T = 1 of a distilled model."""
    return pgd(defended, x, y, eps=eps, step_size=step_size, steps=steps, random_start=True,
               stop_on_success=False, seed=seed).x_adv


def _margin(defended, base, x, y, *, eps, step_size, steps, eot_samples, seed):
    """PGD on the logit margin (Carlini & Wagner 2016) through the defended model."""
    return margin_pgd(defended, x, y, eps=eps, step_size=step_size, steps=steps, random_start=True,
                      stop_on_success=False, seed=seed).x_adv


def _eot(defended, base, x, y, *, eps, step_size, steps, eot_samples, seed):
    """Cross-entropy PGD through :class:`~advbook.attacks.adaptive.EOT`: the mean logits of
    ``eot_samples`` draws per step (Athalye, Engstrom, Ilyas & Kwok 2018)."""
    return pgd(EOT(defended, samples=eot_samples), x, y, eps=eps, step_size=step_size, steps=steps,
               random_start=True, stop_on_success=False, seed=seed).x_adv


def _bpda(defended, base, x, y, *, eps, step_size, steps, eot_samples, seed):
    """Cross-entropy PGD through :class:`~advbook.attacks.adaptive.BPDA`: the pre-processor forwards,
    the identity backwards (Athalye et al. 2018, §4.1)."""
    if not isinstance(defended, Purified):
        raise ValueError(f"bpda needs a Purified model (a pre-processor before a classifier), got {type(defended).__name__}")
    return pgd(BPDA(defended.purifier, defended.model), x, y, eps=eps, step_size=step_size, steps=steps,
               random_start=True, stop_on_success=False, seed=seed).x_adv


def _transfer(defended, base, x, y, *, eps, step_size, steps, eot_samples, seed):
    """Cross-entropy PGD on the undefended classifier alone, its examples then given to the defense:
    the attacker who does not know the pre-processor (MagNet's and Defense-GAN's threat model)."""
    return pgd(base, x, y, eps=eps, step_size=step_size, steps=steps, random_start=True,
               stop_on_success=False, seed=seed).x_adv


ATTACKS: dict[str, Callable[..., torch.Tensor]] = {"pgd": _pgd, "margin": _margin, "eot": _eot, "bpda": _bpda,
                                                   "transfer": _transfer}
ATTACK_NAMES = {"pgd": "PGD (cross-entropy)", "margin": "PGD on the logit margin", "eot": "EOT-PGD",
                "bpda": "BPDA-PGD (identity backward)", "transfer": "PGD on the undefended classifier"}


def reseed(model: nn.Module, seed: int) -> None:
    """Restart the random stream of every randomised wrapper inside ``model`` at ``seed``."""
    for m in model.modules():
        if hasattr(m, "reseed"):
            m.reseed(seed)


@torch.no_grad()
def _correct(model, x, y, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                      for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, dtype=torch.bool)


def attack_examples(attack: str, defended, base, x, y, *, eps: float, step_size: float, steps: int,
                    eot_samples: int, seed: int) -> torch.Tensor:
    """The adversarial examples of ``attack`` (a key of :data:`ATTACKS`) against ``defended``, whose
    trained classifier is ``base``, with the models in eval mode."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; valid: {', '.join(ATTACKS)}")
    with in_eval_mode(defended), in_eval_mode(base):
        return ATTACKS[attack](defended, base, x, y, eps=eps, step_size=step_size, steps=steps,
                               eot_samples=eot_samples, seed=seed)


def defense_flags(defended, base, x, y, *, plain: str, adaptive: str, eps: float, step_size: float, steps: int,
                  eot_samples: int, batch_size: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per-image flags (evaluation -> bool tensor on the CPU) of one defended model: ``clean``, and
    under ``plain`` and ``adaptive``, True where the defended model is right on the clean image and
    on the attack's examples; and the seconds each took. Attacks run on the clean-correct images
    only, in batches of ``batch_size`` (each batch's attack seeded with ``seed``); randomised
    wrappers are reseeded with ``seed``, ``seed + 1`` and ``seed + 2`` before the three evaluations."""
    for name in (plain, adaptive):
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    y = y.to(x.device)
    t0 = time.perf_counter()
    with in_eval_mode(defended):
        reseed(defended, seed)
        clean = _correct(defended, x, y, batch_size)
    flags, seconds = {"clean": clean.cpu()}, {"clean": time.perf_counter() - t0}
    todo = clean.nonzero().squeeze(1)
    for offset, (column, attack) in enumerate((("plain", plain), ("adaptive", adaptive)), start=1):
        t0 = time.perf_counter()
        reseed(defended, seed + offset)
        robust = torch.zeros(len(x), dtype=torch.bool)
        for i in range(0, len(todo), batch_size):
            idx = todo[i:i + batch_size]
            x_adv = attack_examples(attack, defended, base, x[idx], y[idx], eps=eps, step_size=step_size,
                                    steps=steps, eot_samples=eot_samples, seed=seed)
            with in_eval_mode(defended):
                robust[idx.cpu()] = _correct(defended, x_adv, y[idx], batch_size).cpu()
        flags[column], seconds[column] = robust, time.perf_counter() - t0
    return flags, seconds


def _attack_label(attack: str, *, steps: int, eot_samples: int) -> str:
    name = ATTACK_NAMES[attack]
    return f"{name}, {eot_samples} draws, {steps} steps" if attack == "eot" else f"{name}, {steps} steps"


def evaluate_defenses(defended: dict[str, tuple[nn.Module, nn.Module]], *, x: torch.Tensor, y: torch.Tensor,
                      index: torch.Tensor, params: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`defense_flags` for every defense of ``defended`` (from :func:`build_defenses`) with the
    budget of ``params`` (``eval_eps``, ``eval_step_size``, ``eval_steps``, ``eot_samples``,
    ``eval_batch_size``, ``seed``; ``denoiser_adaptive`` replaces the denoiser's adaptive attack).

    Returns (the table: one row per defense with its clean, plain and adaptive accuracy in %, the
    attacks that ran, n and seconds; the per-image flags: seed, index, label, defense, evaluation,
    attack, robust)."""
    rows, samples = [], []
    budget = dict(eps=params["eval_eps"], step_size=params["eval_step_size"], steps=params["eval_steps"],
                  eot_samples=params["eot_samples"])
    for name, (model, base) in defended.items():
        row = DEFENSES[name]
        adaptive = params.get("denoiser_adaptive", row.adaptive) if name == "denoiser" else row.adaptive
        flags, seconds = defense_flags(model, base, x, y, plain=row.plain, adaptive=adaptive, **budget,
                                       batch_size=params["eval_batch_size"], seed=params["seed"])
        attacks = {"clean": "none", "plain": _attack_label(row.plain, steps=budget["steps"],
                                                           eot_samples=budget["eot_samples"]),
                   "adaptive": _attack_label(adaptive, steps=budget["steps"], eot_samples=budget["eot_samples"])}
        rows.append({"defense": name, "what": row.label, "kind": row.kind, "randomised": is_randomized(model),
                     **{e: 100 * flags[e].float().mean().item() for e in EVALUATIONS},
                     "plain attack": attacks["plain"], "adaptive attack": attacks["adaptive"], "n": len(x),
                     "seconds": round(sum(seconds.values()), 2)})
        for evaluation in EVALUATIONS:
            samples.append(pd.DataFrame({"seed": params["seed"], "index": index.numpy(), "label": y.cpu().numpy(),
                                         "defense": name, "evaluation": evaluation,
                                         "attack": attacks[evaluation], "robust": flags[evaluation].numpy()}))
    return pd.DataFrame(rows), pd.concat(samples, ignore_index=True)


def _unit_max(g: torch.Tensor) -> torch.Tensor:
    """Each row of ``g`` in float64, divided by its largest absolute entry."""
    g = g.double()
    return g / g.abs().amax(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def gradient_table(defended: dict[str, tuple[nn.Module, nn.Module]], *, x: torch.Tensor, y: torch.Tensor,
                   seed: int, batch_size: int) -> pd.DataFrame:
    """Why the plain attacks fail, per defense, on the clean images it classifies correctly (one draw):
    the share of images whose cross-entropy gradient with respect to the input is exactly zero
    (shattered by a quantiser, underflowed by a saturated softmax), and the median cosine between
    the gradients of two calls on the same image (1 for a deterministic model; below 1 when each
    call draws new randomness, which is what EOT averages out)."""
    rows = []
    y = y.to(x.device)
    for name, (model, _) in defended.items():
        with in_eval_mode(model):
            reseed(model, seed)
            keep = _correct(model, x, y, batch_size).to(x.device)
            xs, ys = x[keep], y[keep]
            grads = []
            for _ in range(2):
                parts = []
                for i in range(0, len(xs), batch_size):
                    xb = xs[i:i + batch_size].clone().requires_grad_(True)
                    (g,) = torch.autograd.grad(F.cross_entropy(model(xb), ys[i:i + batch_size], reduction="sum"), xb)
                    parts.append(g.flatten(1))
                grads.append(torch.cat(parts) if parts else torch.zeros(0, x[0].numel(), device=x.device))
        zero = (grads[0].abs().amax(1) == 0) if len(xs) else torch.zeros(0, dtype=torch.bool)
        live = ~zero & (grads[1].abs().amax(1) > 0) if len(xs) else zero
        # each gradient scaled to a largest entry of 1 in float64 first: a saturated softmax leaves
        # gradients of 1e-40, whose products underflow in float32 (a cosine of 0 for equal vectors)
        a, b = (_unit_max(g[live]) for g in grads)
        cos = F.cosine_similarity(a, b, dim=1) if live.any() else torch.zeros(0)
        rows.append({"defense": name, "images": int(len(xs)), "zero gradient (%)": 100 * zero.float().mean().item()
                     if len(xs) else float("nan"),
                     "median cosine, two calls": cos.median().item() if len(cos) else float("nan")})
    return pd.DataFrame(rows)

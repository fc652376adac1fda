"""Margin-decomposition (MD) attacks and their ensemble, MDE (Ma et al., 2023), as in the
reference code (HanxunH/MDAttack, ``attacks/MD.py`` and ``attack_handler.py``).

The margin loss ``z_t - z_y`` is a difference of two logits. When one term's gradient
dominates the other ("imbalanced gradients"), PGD on the margin can stall and overstate
robustness. An MD attack therefore runs two stages of L-inf sign steps:

1. for ``change_point`` steps, ascend one term alone (round 0: ``-z_y``; round 1: ``z_t``),
   after a single first step on ``+z_y`` (as the reference code does);
2. for the remaining steps, ascend the full margin ``z_t - z_y``.

Each stage's step size follows a cosine schedule from ``2 * eps`` (:func:`step_sizes`).
A sample counts as broken if any iterate of any round is misclassified. MD takes ``t`` as the
largest other logit (untargeted); MD-MT repeats MD with ``t`` fixed to each of the
``n_targets`` classes ranked highest on the clean input. MDE (in :mod:`advbook.evaluate`)
chains APGD-CE, MD, MD-MT and FAB-T, each on the samples still robust.

Choices where the reference code is silent or tied to its setting: the random start is
clipped to [0, 1] (the reference clips only after the first step), random numbers come from a
seeded generator, and MD-MT skips the true class (the reference loops over all ten ranks of
CIFAR-10, one of which is the true class of a correctly classified input: a step of zero).
"""
from __future__ import annotations

import math

import torch

from advbook.attacks.core import linf_start, sign_ascent, without_true

__all__ = ["step_sizes", "md_attack", "md_targets"]


def step_sizes(*, eps: float, steps: int, change_point: int) -> list[float]:
    """The reference schedule: ``2 eps * (1 + cos(pi * k / (steps - change_point))) / 2`` with
    ``k = i - 1`` up to the change point and ``k = i - change_point - 1`` after it."""
    if not 0 < change_point < steps:
        raise ValueError(f"change_point must be in (0, steps={steps}), got {change_point}")
    span = steps - change_point
    return [eps * (1 + math.cos(math.pi * ((i - change_point - 1) if i > change_point else (i - 1)) / span))
            for i in range(steps)]


def _terms(logits: torch.Tensor, y: torch.Tensor, *, target: torch.Tensor | None):
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        z_t = without_true(logits, y).amax(1)
    else:
        z_t = logits.gather(1, target[:, None]).squeeze(1)
    return z_y, z_t


def md_attack(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 50, change_point: int = 20,
              restarts: int = 1, target: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Robust flags (True: no iterate was misclassified) under the MD attack; ``target`` (one
    class per sample) makes it the targeted variant used by MD-MT."""
    sizes = step_sizes(eps=eps, steps=steps, change_point=change_point)
    g = torch.Generator(device=x.device).manual_seed(seed)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)

    def still_correct(logits):
        robust.logical_and_(logits.argmax(1) == y)

    for _ in range(max(restarts, 1)):
        for rnd in (0, 1):
            x_adv = linf_start(x, eps=eps, generator=g)
            stages = [  # (objective on the terms, steps of the schedule it takes)
                (lambda z_y, z_t: z_y, sizes[:1]),
                ((lambda z_y, z_t: z_t) if rnd else (lambda z_y, z_t: -z_y), sizes[1:change_point]),
                (lambda z_y, z_t: z_t - z_y, sizes[change_point:]),
            ]
            for term, stage_sizes in stages:
                x_adv = sign_ascent(model, x, x_start=x_adv,
                                    objective=lambda lg, term=term: term(*_terms(lg, y, target=target)).sum(),
                                    eps=eps, step_size=stage_sizes, steps=len(stage_sizes), observe=still_correct)
            with torch.no_grad():
                still_correct(model(x_adv))
    return robust


def md_targets(model, x: torch.Tensor, y: torch.Tensor, *, n_targets: int) -> torch.Tensor:
    """(N, n_targets): the classes other than ``y`` ranked highest on the clean input."""
    with torch.no_grad():
        logits = model(x)
    if not 1 <= n_targets < logits.shape[1]:
        raise ValueError(f"n_targets must be in [1, {logits.shape[1] - 1}], got {n_targets}")
    ranked = without_true(logits, y).argsort(1, descending=True)
    return ranked[:, :n_targets]

"""Batched white-box attacks that report, per sample, when the prediction first changed.

Both attacks return an :class:`AttackResult` of per-sample tensors:

* ``success``: the returned input is classified differently from ``y``;
* ``steps``: the first iteration after which the prediction differed from ``y``
  (0 if it already did on the start point, -1 if it never did within the budget);
* ``l2`` and ``linf``: norms of the returned perturbation; ``l2`` is the HOL paper's
  estimate of the distance to the decision boundary (DDB, §3);
* ``x_adv``: the returned inputs, in [0, 1].

``y`` is the label the prediction must move away from: pass the clean *prediction* to
measure how hard it is to change the model's mind (HOL §4), or the true label for a
robustness evaluation. The model must be in eval mode; nothing here changes it.
Device and dtype are taken from ``x``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from advbook.attacks.threats import get_threat

__all__ = ["AttackResult", "margin", "without_true", "linf_start", "pgd", "sign_ascent", "deepfool", "ATTACKS", "get_attack", "run_batched"]


@dataclasses.dataclass
class AttackResult:
    x_adv: torch.Tensor
    success: torch.Tensor  # bool
    steps: torch.Tensor    # int64, -1 = never changed
    l2: torch.Tensor
    linf: torch.Tensor

    @staticmethod
    def cat(parts: list["AttackResult"]) -> "AttackResult":
        return AttackResult(*(torch.cat([getattr(p, f.name) for p in parts])
                              for f in dataclasses.fields(AttackResult)))


def without_true(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``scores`` (N, C) with each sample's true class set to -inf: for the best or ranked wrong class."""
    return scores.scatter(1, y[:, None], float("-inf"))


def margin(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ``s_y - max_{j != y} s_j``: negative exactly when the sample is misclassified."""
    return scores.gather(1, y[:, None]).squeeze(1) - without_true(scores, y).amax(1)


def linf_start(x: torch.Tensor, *, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random point of the L-inf ``eps``-ball around ``x``, clipped to [0, 1] (the L-inf
    threat model's ``init``): the random start of the CW, MD, SPSA and training attacks."""
    return get_threat("linf", eps=eps, step_size=eps).init(x, generator=generator)


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"expected x of shape (N, ...) and y of shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"inputs must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]")


def _result(x: torch.Tensor, *, x_adv: torch.Tensor, success, steps) -> AttackResult:
    delta = (x_adv - x).flatten(1)
    return AttackResult(x_adv.detach(), success, steps, delta.norm(dim=1), delta.abs().amax(dim=1))


def _forward_active(model, x_adv, y, active):
    """Logits of the still-active samples, with their indices, a grad-enabled copy and fooled flags."""
    idx = active.nonzero().flatten()
    if len(idx) == 0:
        return None
    xa = x_adv[idx].requires_grad_(True)
    logits = model(xa)
    return idx, xa, logits, logits.argmax(1) != y[idx]


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf",
        eps: float, step_size: float, steps: int, random_start: bool = False,
        stop_on_success: bool = True, seed: int = 0) -> AttackResult:
    """Projected gradient ascent on the cross-entropy inside an ``norm``-ball of radius ``eps``.

    With ``stop_on_success`` (the default) each sample is frozen at the first iterate the
    model misclassifies, so ``l2`` is the size of the smallest PGD perturbation found along
    the path, and ``steps`` the number of steps it took. Without it every sample runs all
    ``steps`` (the classic robustness evaluation) and ``steps`` still records the first flip.
    """
    _check_inputs(x, y)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    threat = get_threat(norm, eps=eps, step_size=step_size)
    n = len(x)
    generator = torch.Generator(device=x.device).manual_seed(seed) if random_start else None
    x_adv = threat.init(x, generator=generator) if random_start else x.clone()
    first_flip = torch.full((n,), -1, dtype=torch.long, device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    for t in range(steps + 1):
        state = _forward_active(model, x_adv, y, active)
        if state is None:
            break
        idx, xa, logits, fooled = state
        new = fooled & (first_flip[idx] < 0)
        first_flip[idx[new]] = t
        if stop_on_success:
            active[idx[fooled]] = False
        if t == steps:
            break
        loss = F.cross_entropy(logits, y[idx], reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        move = ~fooled if stop_on_success else torch.ones_like(fooled)
        with torch.no_grad():
            stepped = threat.project(threat.step(xa[move], grad=grad[move]), x=x[idx[move]])
            x_adv[idx[move]] = stepped
    with torch.no_grad():
        success = model(x_adv).argmax(1) != y if not stop_on_success else first_flip >= 0
    return _result(x, x_adv=x_adv, success=success, steps=first_flip)


def sign_ascent(model: torch.nn.Module, x: torch.Tensor, *, x_start: torch.Tensor, objective: Callable,
                eps: float, step_size: float | Sequence[float], steps: int,
                observe: Callable | None = None) -> torch.Tensor:
    """L-inf ascent of ``objective(logits)`` (a scalar) from ``x_start``: sign steps of ``step_size``
    (one number, or one per step for a schedule), each projected on the ``eps``-ball around ``x``
    and on [0, 1]. ``observe(logits)`` sees every iterate's logits before its step. The loop behind
    the training attacks of TRADES-style objectives, the CW evaluation and the MD attacks, whose
    losses differ from :func:`pgd`'s cross-entropy. ``x_start`` is keyword-only: it has the shape of
    ``x``, and swapping the two would centre the ball on the random start."""
    sizes = [float(step_size)] * steps if isinstance(step_size, (int, float)) else [float(s) for s in step_size]
    if len(sizes) != steps:
        raise ValueError(f"got {len(sizes)} step sizes for {steps} steps")
    x_adv = x_start
    for size in sizes:
        threat = get_threat("linf", eps=eps, step_size=max(size, 1e-12))
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        if observe is not None:
            observe(logits)
        (grad,) = torch.autograd.grad(objective(logits), x_adv)
        with torch.no_grad():
            x_adv = threat.project(threat.step(x_adv, grad=grad), x=x)
    return x_adv.detach()


def deepfool(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 50,
             overshoot: float = 0.02, candidates: int | None = None) -> AttackResult:
    """Multi-class L2 DeepFool (Moosavi-Dezfooli et al., 2016), batched.

    At every iteration each still-correct sample is linearised around its current point;
    the step goes to the nearest of the linearised boundaries between ``y`` and the
    ``candidates - 1`` classes ranked highest on the clean input (all classes by default).
    The accumulated step is scaled by ``1 + overshoot``, as in the reference code and
    foolbox's ``L2DeepFoolAttack``, and the result clipped to [0, 1].
    """
    _check_inputs(x, y)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if overshoot < 0:
        raise ValueError(f"overshoot must be >= 0, got {overshoot}")
    n = len(x)
    with torch.no_grad():
        logits0 = model(x)
    k = logits0.shape[1] if candidates is None else candidates
    if not 2 <= k <= logits0.shape[1]:
        raise ValueError(f"candidates must be in [2, {logits0.shape[1]}], got {candidates}")
    # the k-1 other classes ranked highest on the clean input, per sample
    masked = without_true(logits0, y)
    others = masked.argsort(dim=1, descending=True)[:, : k - 1]
    x_adv = x.clone()
    p_total = torch.zeros_like(x)
    first_flip = torch.full((n,), -1, dtype=torch.long, device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    for t in range(steps + 1):
        state = _forward_active(model, x_adv, y, active)
        if state is None:
            break
        idx, xa, logits, fooled = state
        first_flip[idx[fooled]] = t
        active[idx[fooled]] = False
        if t == steps or fooled.all():
            break
        keep = ~fooled
        ref = logits.gather(1, y[idx, None])
        diffs = logits.gather(1, others[idx]) - ref  # (m, k-1), negative while correct
        grads = torch.stack([torch.autograd.grad(diffs[:, j].sum(), xa, retain_graph=j < k - 2)[0]
                             for j in range(k - 1)], dim=1)  # (m, k-1, ...)
        with torch.no_grad():
            gnorm = grads.flatten(2).norm(dim=2) + 1e-8
            dist = diffs.abs() / gnorm
            best = dist.argmin(dim=1)
            rows = torch.arange(len(idx), device=x.device)
            step_len = (dist[rows, best] + 1e-4) / gnorm[rows, best]
            r = grads[rows, best] * step_len.view(-1, *([1] * (x.dim() - 1)))
            sel = idx[keep]
            p_total[sel] += r[keep]
            x_adv[sel] = (x[sel] + (1 + overshoot) * p_total[sel]).clamp(0, 1)
    return _result(x, x_adv=x_adv, success=first_flip >= 0, steps=first_flip)


ATTACKS: dict[str, Callable[..., AttackResult]] = {"pgd": pgd, "deepfool": deepfool}


def get_attack(name: str) -> Callable[..., AttackResult]:
    """The attack called ``name``; an unknown name fails with the valid choices."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def run_batched(attack: Callable[..., AttackResult], model: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor, *, batch_size: int, desc: str | None = None, **kwargs) -> AttackResult:
    """Run ``attack`` over ``x`` in batches with a progress bar; results are concatenated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc or getattr(attack, "__name__", "attack"),
                  unit="batch", leave=False):
        parts.append(attack(model, x[i:i + batch_size], y[i:i + batch_size], **kwargs))
    return AttackResult.cat(parts)

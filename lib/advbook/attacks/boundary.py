"""Hard-label boundary search: OPT-attack's g(θ) (Cheng et al., ICLR 2019) from predicted labels only.

In the hard-label setting the attacker sees only the winning label. OPT-attack turns the attack into
an optimisation over a direction θ of

    g(θ) = min { λ > 0 : f(x + λ θ/‖θ‖) ≠ y },

the distance from x to the decision boundary along θ, which it evaluates from labels: a coarse
search for a λ whose label differs, then a binary search between the last λ with label y and the
first without. :func:`boundary_distance` evaluates g batched over samples:

* **coarse search**: λ = ``step``, 2·``step``, ... (linear, as the lecture describes; OPT's code grows
  λ by 1 % per query from a starting guess instead), up to the first multiple of ``step`` that is
  >= ``max_distance``: K = ceil(``max_distance`` / ``step``) points. λ = 0 is taken to have label
  ``y`` and is not queried (pass the model's own prediction as ``y``).
* **binary search**: on [λ_k − step, λ_k] for B = max(0, ceil(log2(``step`` / ``tol``))) halvings, the
  same B for every sample, so the final bracket is at most ``tol`` wide. The upper end is returned:
  a point whose label was seen to differ, so ``x + g θ/‖θ‖`` is adversarial, and g − tol <= g(θ) <= g
  whenever the label changes only once inside that coarse interval (a boundary crossed and re-crossed
  within one ``step`` may be missed: the price of a coarse grid).
* **queries** per sample: k + B if the label first changed at the k-th coarse point, K if it never
  changed (then the distance is ``inf``).
* Queried points are clipped to [0, 1] before they reach the model, as the reference code's model
  wrapper (cmhcbb/attackbox ``predict_label``) does; the returned distance is the length λ of the
  unclipped step, equal to the distance moved while the ray stays inside the image box.

:func:`hard_label_attack` is OPT-attack's first stage only: g(θ) along ``directions`` Gaussian
directions per sample (OPT draws 100), keeping the smallest. OPT then refines θ with a random
gradient-free estimate of ∇g; we stop here (a teaching baseline: the adversarial example found by a
search that only ever asked for labels). ``steps`` is the index of the first direction along which the
label changed (-1 if none), ``queries`` the total over all directions.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from advbook.attacks.core import _check_inputs, _result
from advbook.attacks.queries import QueryResult, with_queries

__all__ = ["Boundary", "boundary_distance", "hard_label_attack"]


@dataclasses.dataclass
class Boundary:
    distance: torch.Tensor   # (N,), inf where the label never changed up to max_distance
    queries: torch.Tensor    # (N,) int64


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _check_search(tol: float, step: float, max_distance: float) -> None:
    if not (tol > 0 and step > 0 and max_distance >= step):
        raise ValueError(f"need tol > 0, step > 0 and max_distance >= step; got tol={tol}, step={step}, "
                         f"max_distance={max_distance}")


@torch.no_grad()
def boundary_distance(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, direction: torch.Tensor,
                      tol: float = 1e-3, step: float = 0.1, max_distance: float = 5.0) -> Boundary:
    """g(θ) along ``direction`` (same shape as ``x``) for every sample, from labels only."""
    _check_inputs(x, y)
    if direction.shape != x.shape:
        raise ValueError(f"direction must have the shape of x {tuple(x.shape)}, got {tuple(direction.shape)}")
    _check_search(tol, step, max_distance)
    norms = direction.flatten(1).norm(dim=1)
    if (norms == 0).any():
        zero = norms.eq(0).nonzero().flatten().tolist()
        raise ValueError(f"direction must be non-zero for every sample; zero at {zero}")
    unit = direction / _bcast(norms, direction)
    n = len(x)

    def changed(rows: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        points = (x[rows] + _bcast(lam, unit) * unit[rows]).clamp(0, 1)
        return model(points).argmax(1) != y[rows]

    hi = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    n_coarse = math.ceil(max_distance / step - 1e-9)
    for k in range(1, n_coarse + 1):
        rows = torch.isinf(hi).nonzero().flatten()
        if len(rows) == 0:
            break
        lam = torch.full((len(rows),), k * step, device=x.device, dtype=x.dtype)
        queries[rows] += 1
        hit = changed(rows, lam)
        hi[rows[hit]] = lam[hit]
    rows = torch.isfinite(hi).nonzero().flatten()
    lo, up = hi[rows] - step, hi[rows].clone()
    for _ in range(max(0, math.ceil(math.log2(step / tol)))):
        mid = (lo + up) / 2
        hit = changed(rows, mid)
        up = torch.where(hit, mid, up)
        lo = torch.where(hit, lo, mid)
        queries[rows] += 1
    hi[rows] = up
    return Boundary(distance=hi, queries=queries)


@torch.no_grad()
def hard_label_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, directions: int = 20,
                      tol: float = 1e-3, step: float = 0.1, max_distance: float = 5.0, seed: int = 0,
                      max_batch: int = 4096) -> QueryResult:
    """OPT-attack's random-direction stage: the smallest g(θ) over ``directions`` Gaussian θ per sample."""
    _check_inputs(x, y)
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    _check_search(tol, step, max_distance)
    g = torch.Generator(device=x.device).manual_seed(seed)
    n = len(x)
    best = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
    best_unit = torch.zeros_like(x)
    first = torch.full((n,), -1, dtype=torch.long, device=x.device)
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    per_call = max(1, max_batch // max(n, 1))
    for start in range(0, directions, per_call):
        c = min(per_call, directions - start)
        # one draw per direction: the directions do not depend on how they are grouped into calls
        theta = torch.stack([torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) for _ in range(c)])
        found = boundary_distance(model, x.repeat(c, *([1] * (x.dim() - 1))), y.repeat(c),
                                  direction=theta.flatten(0, 1), tol=tol, step=step, max_distance=max_distance)
        dist, used = found.distance.view(c, n), found.queries.view(c, n)
        queries += used.sum(0)
        for j in range(c):  # in direction order: ties keep the earlier direction
            better = dist[j] < best
            best[better] = dist[j][better]
            best_unit[better] = theta[j][better] / _bcast(theta[j][better].flatten(1).norm(dim=1), x[better])
            first[(first < 0) & torch.isfinite(dist[j])] = start + j
    success = torch.isfinite(best)
    step_len = torch.where(success, best, torch.zeros_like(best))
    x_adv = (x + _bcast(step_len, x) * best_unit).clamp(0, 1)
    return with_queries(_result(x, x_adv=x_adv, success=success, steps=first), queries)

"""Zeroth-order gradient estimates (ZOO; Chen et al., AISec 2017) and a small ZOO-Adam attack.

Without the model's gradients, a loss f can still be differentiated from its values. Two estimators,
both from *symmetric* differences (exact for a quadratic f, for any h):

* ``"coordinate"`` (ZOO): for ``queries / 2`` coordinates i, drawn uniformly without replacement per
  sample, ĝ_i = (f(x + h e_i) − f(x − h e_i)) / 2h; the other coordinates of ĝ are 0 (not rescaled:
  ZOO updates the drawn coordinates only). With all d coordinates (``queries = 2 d``) ĝ is the full
  finite-difference gradient.
* ``"gaussian"`` (the random-direction estimator of NES-style attacks, Ilyas et al. 2018, with
  antithetic pairs): ĝ = 1/k Σ_j (f(x + h u_j) − f(x − h u_j)) / 2h · u_j over k = ``queries / 2``
  directions u_j ~ N(0, I). It is unbiased for the gradient of a Gaussian-smoothed f; every query
  informs every coordinate, so it points roughly along the gradient long before 2 d queries.

``queries`` counts model evaluations per sample (two per coordinate or direction) and must be even.
``loss_fn(batch, *, repeat)`` returns one loss per row of ``batch``, whose rows are ``repeat`` copies
of the N samples in order (sample i at rows i, N + i, ...): the convention of
:func:`advbook.attacks.spsa.spsa_gradient`. Probes ``x ± h v`` are not clipped to [0, 1] (as in ZOO).
Randomness comes only from ``generator``: equal seeds give bit-identical estimates.

:func:`zoo_attack` follows ZOO-Adam (the reference code, l2_attack_black.py): minimise
‖δ‖² + c · max(Z_y − max_{i≠y} Z_i, −κ) (on logits; the paper's log-probabilities give the same
differences) over δ; every step draws ``coords`` coordinates per sample (128 in the paper), estimates
their partial derivatives as above and updates only them with Adam, each coordinate with its own step
count (β1 = 0.9, β2 = 0.999, lr 0.01, h = 1e-4 as in the paper), then projects x + δ on [0, 1] (ZOO
without its tanh option). Choices of ours: one fixed c (no binary search over c), and each sample
stops at its first misclassified iterate, so ``queries`` is the cost of the first success: one query
per iterate checked plus ``2 · coords`` per step.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from advbook.attacks.core import _check_inputs, _result, margin
from advbook.attacks.queries import QueryResult, with_queries

__all__ = ["ESTIMATORS", "zoo_gradient", "true_gradient", "cosine_to_true", "zoo_attack"]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(*v.shape, *([1] * (like.dim() - v.dim())))


def _draw_coordinates(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k coordinate indices per sample, uniform without replacement: shape (N, k)."""
    n, d = len(x), x[0].numel()
    if k > d:
        raise ValueError(f"the coordinate estimator has {d} coordinates per sample (queries <= {2 * d}), "
                         f"got queries={2 * k}")
    return torch.rand(n, d, generator=generator, device=x.device).argsort(dim=1)[:, :k]


def _one_hot(idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The basis vectors e_i for ``idx`` (N, c): shape (c, N, ...) like ``like``."""
    c, n = idx.shape[1], len(like)
    v = torch.zeros(c, n, like[0].numel(), device=like.device, dtype=like.dtype)
    v.scatter_(2, idx.T[..., None], 1.0)
    return v.view(c, *like.shape)


def _coordinate(x: torch.Tensor, k: int, generator: torch.Generator):
    """Directions e_i for k coordinates per sample (without replacement) and the weight 1 of each term."""
    idx = _draw_coordinates(x, k, generator)
    return (lambda start, stop: _one_hot(idx[:, start:stop], x)), 1.0


def _gaussian(x: torch.Tensor, k: int, generator: torch.Generator):
    """Gaussian directions u ~ N(0, I) and the weight 1/k of each term. One draw per direction, so the
    estimate does not depend on how the directions are grouped into forward batches."""
    def chunk(start: int, stop: int) -> torch.Tensor:
        return torch.stack([torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                            for _ in range(start, stop)])
    return chunk, 1.0 / k


ESTIMATORS: dict[str, Callable] = {"coordinate": _coordinate, "gaussian": _gaussian}


@torch.no_grad()
def zoo_gradient(loss_fn: Callable, x: torch.Tensor, *, h: float, queries: int, generator: torch.Generator,
                 estimator: str = "coordinate", max_batch: int = 8192) -> tuple[torch.Tensor, int]:
    """The zeroth-order estimate of the gradient of the per-sample ``loss_fn`` at ``x`` from ``queries``
    evaluations per sample, and the number of queries used per sample (= ``queries``)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if queries < 2 or queries % 2:
        raise ValueError(f"queries must be an even number >= 2 (two per coordinate or direction), got {queries}")
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h}")
    k = queries // 2
    directions, weight = ESTIMATORS[estimator](x, k, generator)
    n = len(x)
    grad = torch.zeros_like(x)
    step = max(1, min(k, max_batch // (2 * max(n, 1))))
    for start in range(0, k, step):
        stop = min(k, start + step)
        v = directions(start, stop)                                   # (c, n, ...)
        probes = torch.cat([x[None] + h * v, x[None] - h * v]).flatten(0, 1)
        losses = loss_fn(probes, repeat=2 * (stop - start)).view(2, stop - start, n)
        diff = (losses[0] - losses[1]) / (2 * h)                      # (c, n)
        grad += (_bcast(diff, v) * v).sum(0)
    return grad * weight, queries


def true_gradient(loss_fn: Callable, x: torch.Tensor) -> torch.Tensor:
    """The autograd gradient of ``loss_fn`` (the same convention, ``repeat=1``) at ``x``, per sample."""
    xr = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(xr, repeat=1).sum(), xr)
    return grad


def cosine_to_true(loss_fn: Callable, x: torch.Tensor, *, h: float, queries: Sequence[int],
                   generator: torch.Generator, estimator: str = "coordinate") -> torch.Tensor:
    """Cosine similarity between each budget's estimate and the autograd gradient: shape
    (len(queries), N). Budgets are drawn one after another from ``generator`` (independent estimates)."""
    true = true_gradient(loss_fn, x).flatten(1)
    rows = []
    for q in queries:
        est, _ = zoo_gradient(loss_fn, x, h=h, queries=q, generator=generator, estimator=estimator)
        rows.append(torch.nn.functional.cosine_similarity(est.flatten(1), true, dim=1))
    return torch.stack(rows)


@torch.no_grad()
def zoo_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 20, coords: int = 128,
               lr: float = 0.01, h: float = 1e-4, const: float = 1.0, kappa: float = 0.0,
               seed: int = 0) -> QueryResult:
    """Untargeted ZOO-Adam (see the module docstring); ``steps`` is the first iterate misclassified."""
    _check_inputs(x, y)
    d = x[0].numel()
    if steps < 0 or not 1 <= coords <= d or not lr > 0 or not h > 0 or not const > 0 or kappa < 0:
        raise ValueError(f"need steps >= 0, 1 <= coords <= {d}, lr > 0, h > 0, const > 0, kappa >= 0; got "
                         f"steps={steps}, coords={coords}, lr={lr}, h={h}, const={const}, kappa={kappa}")
    g = torch.Generator(device=x.device).manual_seed(seed)
    n = len(x)
    x_adv = x.clone(memory_format=torch.contiguous_format)
    m, v = torch.zeros(n, d, device=x.device, dtype=x.dtype), torch.zeros(n, d, device=x.device, dtype=x.dtype)
    epoch = torch.ones(n, d, device=x.device, dtype=x.dtype)
    beta1, beta2 = 0.9, 0.999
    first_flip = torch.full((n,), -1, dtype=torch.long, device=x.device)
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    for t in range(steps + 1):
        idx = (first_flip < 0).nonzero().flatten()
        if len(idx) == 0:
            break
        xa, ya = x[idx], y[idx]
        queries[idx] += 1
        fooled = model(x_adv[idx]).argmax(1) != ya
        first_flip[idx[fooled]] = t
        idx, xa, ya = idx[~fooled], xa[~fooled], ya[~fooled]
        if t == steps or len(idx) == 0:
            break

        def loss_fn(batch, *, repeat):
            dist = (batch - xa.repeat(repeat, *([1] * (x.dim() - 1)))).flatten(1).pow(2).sum(1)
            return dist + const * margin(model(batch), ya.repeat(repeat)).clamp_min(-kappa)

        chosen = _draw_coordinates(xa, coords, g)                      # (n_active, coords)
        e = _one_hot(chosen, xa)                                        # (coords, n_active, ...)
        here = x_adv[idx][None]
        losses = loss_fn(torch.cat([here + h * e, here - h * e]).flatten(0, 1), repeat=2 * coords)
        plus, minus = losses.view(2, coords, len(idx))
        est = (plus - minus) / (2 * h)                                  # (coords, n_active)
        queries[idx] += 2 * coords
        rows = idx[:, None]
        gi = est.T
        m[rows, chosen] = beta1 * m[rows, chosen] + (1 - beta1) * gi
        v[rows, chosen] = beta2 * v[rows, chosen] + (1 - beta2) * gi * gi
        ep = epoch[rows, chosen]
        corr = (1 - beta2 ** ep).sqrt() / (1 - beta1 ** ep)
        flat = x_adv.view(n, d)
        flat[rows, chosen] = (flat[rows, chosen] - lr * corr * m[rows, chosen] / (v[rows, chosen].sqrt() + 1e-8)
                              ).clamp(0, 1)
        epoch[rows, chosen] = ep + 1
    return with_queries(_result(x, x_adv=x_adv, success=first_flip >= 0, steps=first_flip), queries)

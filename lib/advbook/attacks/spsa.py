"""SPSA (Uesato et al., 2018): a black-box L-inf attack that estimates gradients from queries.

It follows cleverhans' ``spsa``: minimise the margin ``z_y - max_{j != y} z_j`` with Adam
(learning rate ``lr``) from a uniform random start in the ``eps``-ball; each step's gradient is
estimated from ``samples`` Rademacher directions ``v`` as the mean of
``(L(x + delta v) - L(x - delta v)) / (2 delta) * v``; after each step the perturbation is
projected on the ball and on [0, 1]. A sample counts as broken at the first iterate whose margin
is negative, and it stops being attacked (cleverhans' early stop, per sample). Only logits are
used: no gradient of the model is ever taken.

Batched over samples: Adam is elementwise, so one update of a batch is the per-image update of
the reference. The directions are evaluated in chunks of at most ``max_batch`` forward inputs.
The probes ``x +- delta v`` are not clipped to [0, 1] (as in cleverhans); iterates always are.
"""
from __future__ import annotations

import torch

from advbook.attacks.core import linf_start, margin

__all__ = ["spsa_gradient", "spsa_attack"]


@torch.no_grad()
def spsa_gradient(loss_fn, x: torch.Tensor, *, delta: float, samples: int, generator: torch.Generator,
                  max_batch: int = 8192) -> torch.Tensor:
    """SPSA estimate of the gradient of the per-sample ``loss_fn`` (a function of a batch) at ``x``."""
    n = len(x)
    grad = torch.zeros_like(x)
    chunk = max(1, min(samples, max_batch // (2 * max(n, 1))))
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        v = torch.randint(0, 2, (k, *x.shape), generator=generator, device=x.device).to(x.dtype).mul_(2).sub_(1)
        probes = torch.cat([x[None] + delta * v, x[None] - delta * v]).flatten(0, 1)
        losses = loss_fn(probes, repeat=2 * k).view(2, k, n)
        diff = (losses[0] - losses[1]) / (2 * delta)  # (k, n)
        grad += (diff.view(k, n, *([1] * (x.dim() - 1))) * v).sum(0)
    return grad / samples


@torch.no_grad()
def spsa_attack(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 100, samples: int = 256,
                delta: float = 0.001, lr: float = 0.01, seed: int = 0, max_batch: int = 8192) -> torch.Tensor:
    """Robust flags (True: no iterate had a negative margin) under SPSA."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    pert = linf_start(x, eps=eps, generator=g) - x
    m, v2 = torch.zeros_like(x), torch.zeros_like(x)
    robust = margin(model(x + pert), y) >= 0
    beta1, beta2, tiny = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, as cleverhans uses
    for t in range(1, steps + 1):
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        xa, ya = x[idx], y[idx]

        def loss_fn(batch, *, repeat):
            return margin(model(batch), ya.repeat(repeat))

        grad = spsa_gradient(loss_fn, xa + pert[idx], delta=delta, samples=samples, generator=g, max_batch=max_batch)
        m[idx] = beta1 * m[idx] + (1 - beta1) * grad
        v2[idx] = beta2 * v2[idx] + (1 - beta2) * grad ** 2
        step = lr * (m[idx] / (1 - beta1 ** t)) / ((v2[idx] / (1 - beta2 ** t)).sqrt() + tiny)
        new = (xa + (pert[idx] - step).clamp(-eps, eps)).clamp(0, 1) - xa
        pert[idx] = new
        robust[idx] = margin(model(xa + new), ya) >= 0
    return robust

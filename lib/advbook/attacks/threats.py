"""Threat models as tiny classes: where to start, how to step, how to project.

Following the habit of MadryLab/robustness, an attack never branches on the norm: it
asks the threat model. Adding a new geometry is one class and one registry entry.
All methods work on batches in [0, 1] and keep the result in [0, 1].
"""
from __future__ import annotations

import torch

__all__ = ["Threat", "Linf", "L2", "THREATS", "get_threat"]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector to broadcast against a batch ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


class Threat:
    """An eps-ball around the clean input with a fixed step size."""

    name = "base"

    def __init__(self, *, eps: float, step_size: float):
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self.eps, self.step_size = float(eps), float(step_size)

    def init(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random point of the ball around ``x`` (clipped to [0, 1])."""
        raise NotImplementedError

    def step(self, x_adv: torch.Tensor, *, grad: torch.Tensor) -> torch.Tensor:
        """One ascent step along the steepest direction of this norm (``grad`` keyword-only: it has
        the shape of ``x_adv``, and a swap would step from the gradient)."""
        raise NotImplementedError

    def project(self, x_adv: torch.Tensor, *, x: torch.Tensor) -> torch.Tensor:
        """The nearest point of the ball around ``x`` (keyword-only: a swap would project the clean
        input on the ball around the adversarial one), clipped to [0, 1]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, step_size={self.step_size:g})"


class Linf(Threat):
    name = "linf"

    def init(self, x, *, generator=None):
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + (2 * noise - 1) * self.eps).clamp(0, 1)

    def step(self, x_adv, *, grad):
        return x_adv + self.step_size * grad.sign()

    def project(self, x_adv, *, x):
        return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)


class L2(Threat):
    name = "l2"

    def init(self, x, *, generator=None):
        # uniform in the ball: a Gaussian direction scaled by eps * U^(1/d)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _bcast(_l2(direction).clamp_min(1e-12), x)
        d = x[0].numel()
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        return (x + _bcast(self.eps * radius, x) * direction).clamp(0, 1)

    def step(self, x_adv, *, grad):
        unit = grad / _bcast(_l2(grad).clamp_min(1e-12), grad)
        return x_adv + self.step_size * unit

    def project(self, x_adv, *, x):
        delta = x_adv - x
        factor = (self.eps / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta * _bcast(factor, delta)).clamp(0, 1)


THREATS: dict[str, type[Threat]] = {cls.name: cls for cls in (Linf, L2)}


def get_threat(name: str, *, eps: float, step_size: float) -> Threat:
    """The threat model called ``name``; an unknown name fails with the valid choices."""
    if name not in THREATS:
        raise ValueError(f"unknown threat model {name!r}; valid: {', '.join(THREATS)}")
    return THREATS[name](eps=eps, step_size=step_size)

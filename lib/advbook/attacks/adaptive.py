"""Adaptive attacks: what breaks a defense whose gradient misleads the plain attack (LEC-F11).

Athalye, Carlini & Wagner (2018), "Obfuscated gradients give a false sense of security", name three
ways a defense can hide its gradient, and the fix for each used here:

* *stochastic* gradients (a randomised defense: :class:`~advbook.models.defended.RandomResizePad`,
  :class:`~advbook.models.defended.NoiseLayers`): :class:`EOT`, the gradient of the average over
  the randomness instead of one draw's (Athalye, Engstrom, Ilyas & Kwok 2018);
* *shattered* gradients (a non-differentiable pre-processor such as
  :class:`~advbook.models.defended.Quantize`): :class:`BPDA`, the real pre-processor forwards and a
  differentiable approximation (the identity) backwards;
* a loss that *saturates* (defensive distillation, Papernot et al. 2016: trained at temperature T,
  used at T = 1, its softmax is one-hot to float precision and the cross-entropy's gradient
  vanishes): :func:`margin_pgd`, PGD on the logit margin, as Carlini & Wagner (2016, "Defensive
  distillation is not robust to adversarial examples") do.

:class:`EOT` and :class:`BPDA` are models, not attacks: they wrap a model and are handed to any
gradient attack of the project (``pgd(EOT(defended, samples=10), x, y, ...)``), which
differentiates them like any classifier. None of them changes the wrapped model's train/eval mode.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from advbook.attacks.core import AttackResult, margin
from advbook.attacks.threats import get_threat
from advbook.models.defended import is_randomized

__all__ = ["EOT", "AVERAGES", "BPDA", "bpda_identity", "LOSSES", "loss_pgd", "margin_pgd"]


# How EOT averages its draws. The default is the logits, as foolbox's
# ExpectationOverTransformationWrapper does: the average is linear, so the gradient of any linear
# function of the output (the logit margin for a fixed runner-up class, a logit difference) is
# exactly the average of the draws' gradients, an unbiased estimate of the expected gradient, and
# over a deterministic model it changes nothing. A loss applied after the average (the attack's
# cross-entropy) then has the gradient of the loss of the expected logits, consistent as the
# number of draws grows. "probs" returns log E[softmax], the log-probabilities of the randomised
# classifier's expected prediction (RSE's ensemble decision); the cross-entropy on them is
# -log E[p_y], which attacks that ensemble directly, and their gradient is E[grad p_y] / E[p_y].
AVERAGES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logits": lambda z: z.mean(0),
    "probs": lambda z: torch.logsumexp(F.log_softmax(z, dim=-1), dim=0) - math.log(len(z)),
}


class EOT(nn.Module):
    """Expectation over Transformation: the average of ``samples`` calls of ``model`` (each a new
    draw of a randomised model's randomness), by :data:`AVERAGES` [``average``].

    An attack differentiating this module follows the average gradient of ``samples`` draws instead
    of one draw's; its cost is ``samples`` forward and backward passes per step. ``randomized`` is
    that of the wrapped model: the average of a few draws is still random (less so), so a robust
    flag measured on it is one draw too; judge success on fresh draws of the defended model.
    """

    def __init__(self, model: nn.Module, *, samples: int, average: str = "logits"):
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if average not in AVERAGES:
            raise ValueError(f"unknown average {average!r}; valid: {', '.join(AVERAGES)}")
        super().__init__()
        self.model, self.samples, self.average = model, int(samples), average

    @property
    def randomized(self) -> bool:
        return is_randomized(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return AVERAGES[self.average](torch.stack([self.model(x) for _ in range(self.samples)]))


ImageMap = Callable[[torch.Tensor], torch.Tensor]  # a map from images to images


def bpda_identity(preprocessor: ImageMap, *, approx: ImageMap | None = None) -> ImageMap:
    """``x -> preprocessor(x)`` forwards, the derivative of ``approx`` (the identity by default:
    straight-through) backwards.

    Athalye et al. write it ``x + (f(x) - x).detach()``; that value can differ from ``f(x)`` in the
    last bit (``x + (f - x)`` rounds), so we compute ``f(x) + (g(x) - g(x).detach())``, whose
    second term is exactly zero: the forward value is ``f(x)`` bit for bit, and the gradient is
    that of ``g`` (the identity's: the incoming gradient unchanged). ``f`` runs without gradient
    tracking: only its value is used.
    """
    def straight_through(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fx = preprocessor(x)
        gx = x if approx is None else approx(x)
        return fx + (gx - gx.detach())

    return straight_through


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation: ``model(preprocessor(x))`` forwards, with the
    pre-processor's derivative replaced by ``approx``'s (the identity by default) backwards.

    The identity suits a pre-processor that returns an image close to its input (quantisation,
    JPEG, denoising: Athalye et al. §4.1); ``approx`` takes a differentiable stand-in otherwise.
    Its output equals ``Purified(model, preprocessor)``'s exactly.
    """

    def __init__(self, preprocessor: ImageMap, model: nn.Module, *, approx: ImageMap | None = None):
        super().__init__()
        self.preprocessor, self.model = preprocessor, model
        self._through = bpda_identity(preprocessor, approx=approx)

    @property
    def randomized(self) -> bool:
        return is_randomized(self.preprocessor) or is_randomized(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._through(x))


# The losses loss_pgd ascends, summed over the batch. "margin" is max_{j != y} z_j - z_y on the
# logits z (Carlini & Wagner's f without the confidence clamp: a sample stops at its first flip
# anyway with stop_on_success): its gradient is the difference of two logits' gradients, which a
# saturated softmax does not scale down. "ce" is core.pgd's cross-entropy, whose gradient
# softmax(z) - onehot(y) underflows to exactly zero once the margin exceeds about 104 in float32.
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": lambda logits, y: F.cross_entropy(logits, y, reduction="sum"),
    "margin": lambda logits, y: -margin(logits, y).sum(),
}


def loss_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str, norm: str = "linf", eps: float,
             step_size: float, steps: int, random_start: bool = False, stop_on_success: bool = True,
             seed: int = 0) -> AttackResult:
    """:func:`advbook.attacks.core.pgd` with the ascended loss chosen from :data:`LOSSES`.

    The same loop, start, steps, projection and per-sample bookkeeping as ``pgd`` (with ``loss="ce"``
    it returns exactly ``pgd``'s result), so a comparison of the two losses differs in the loss
    only. The model must be in eval mode; nothing here changes it.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"expected x of shape (N, ...) and y of shape (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"inputs must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    objective = LOSSES[loss]
    threat = get_threat(norm, eps=eps, step_size=step_size)
    n = len(x)
    generator = torch.Generator(device=x.device).manual_seed(seed) if random_start else None
    x_adv = threat.init(x, generator=generator) if random_start else x.clone()
    first_flip = torch.full((n,), -1, dtype=torch.long, device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    for t in range(steps + 1):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        xa = x_adv[idx].requires_grad_(True)
        logits = model(xa)
        fooled = logits.argmax(1) != y[idx]
        new = fooled & (first_flip[idx] < 0)
        first_flip[idx[new]] = t
        if stop_on_success:
            active[idx[fooled]] = False
        if t == steps:
            break
        (grad,) = torch.autograd.grad(objective(logits, y[idx]), xa)
        move = ~fooled if stop_on_success else torch.ones_like(fooled)
        with torch.no_grad():
            x_adv[idx[move]] = threat.project(threat.step(xa[move], grad=grad[move]), x=x[idx[move]])
    with torch.no_grad():
        success = model(x_adv).argmax(1) != y if not stop_on_success else first_flip >= 0
    delta = (x_adv - x).flatten(1)
    return AttackResult(x_adv.detach(), success, first_flip, delta.norm(dim=1), delta.abs().amax(dim=1))


def margin_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf", eps: float,
               step_size: float, steps: int, random_start: bool = False, stop_on_success: bool = True,
               seed: int = 0) -> AttackResult:
    """PGD on the logit margin (:func:`loss_pgd` with ``loss="margin"``): the attack that defensive
    distillation's saturated softmax does not stop."""
    return loss_pgd(model, x, y, loss="margin", norm=norm, eps=eps, step_size=step_size, steps=steps,
                    random_start=random_start, stop_on_success=stop_on_success, seed=seed)

"""FGSM (Goodfellow et al., 2015): one L-inf step of size ``eps`` along the sign of the loss gradient.

Untargeted, the step ascends the cross-entropy of the true label ``y``
(``x + eps * sign(grad_x CE(x, y))``); targeted, it descends the cross-entropy of the ``target``
class (``x - eps * sign(grad_x CE(x, target))``), as on the lecture's slide (LEC §FGSM). The
result is clipped to [0, 1], so a component at the edge of the range may move by less than
``eps``; nothing else is projected (one step of size ``eps`` cannot leave the ball).

Choices, and how they match the references:

* The loss is the *summed* cross-entropy over the batch, as in foolbox's gradient attacks, so a
  sample's gradient does not depend on the batch size. ``sign(0) = 0``: a component with a zero
  gradient does not move (``torch.sign``, as foolbox's ``ep.sign``). The untargeted result equals
  foolbox 3.3.4's ``FGSM`` (``LinfFastGradientAttack``); foolbox's FGSM refuses targeted
  criteria, and the targeted result equals its one-step ``LinfPGD`` with step ``eps`` and no
  random start (tests/test_lec_whitebox.py checks both).
* The result is an :class:`~advbook.attacks.core.AttackResult`. Untargeted, ``success`` means the
  prediction on ``x_adv`` differs from ``y``. **Targeted, ``success`` means the prediction on
  ``x_adv`` equals ``target``** (a misclassification into another class is not a success).
  ``steps`` is 0 if the clean input already meets that criterion, 1 if ``x_adv`` does and the
  clean input did not, and -1 otherwise (so a sample the step moves *back* to its label keeps
  ``steps == 0`` with ``success`` False, as :func:`~advbook.attacks.core.pgd` records the first
  flip of its path).

The evaluation suite's ``fgsm`` (:mod:`advbook.evaluation.evaluate`) is the same untargeted step
reduced to robust flags; this module is the teaching version with the targeted variant.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from advbook.attacks.core import AttackResult, _check_inputs, _result

__all__ = ["fgsm"]


def _check_target(target: torch.Tensor | None, *, n: int, num_classes: int | None = None) -> torch.Tensor:
    """``target`` as class indices of shape ``(n,)``, or a ValueError saying what is wrong."""
    if target is None:
        raise ValueError("a targeted attack needs target (a tensor of class indices of shape (N,))")
    if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point or target.dim() != 1 or len(target) != n:
        raise ValueError(f"target must be an integer tensor of class indices of shape ({n},), got "
                         f"{getattr(target, 'dtype', type(target).__name__)} of shape {tuple(getattr(target, 'shape', ()))}")
    if num_classes is not None and len(target) and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target classes must lie in [0, {num_classes}), got values in "
                         f"[{target.min().item()}, {target.max().item()}]")
    return target


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, targeted: bool = False,
         target: torch.Tensor | None = None) -> AttackResult:
    """One FGSM step of L-inf size ``eps`` (``eps = 0`` returns ``x``: the start of an accuracy-vs-eps
    curve). Untargeted: away from ``y``; ``targeted=True``: towards ``target`` (class indices), and
    ``success`` then means "classified as ``target``"."""
    _check_inputs(x, y)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if target is not None and not targeted:
        raise ValueError("target is only used with targeted=True")
    if targeted:
        target = _check_target(target, n=len(x)).to(x.device)
    x_grad = x.detach().clone().requires_grad_(True)
    logits = model(x_grad)
    if targeted:
        _check_target(target, n=len(x), num_classes=logits.shape[1])
    cls = target if targeted else y
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, cls, reduction="sum"), x_grad)
    direction = -grad.sign() if targeted else grad.sign()
    with torch.no_grad():
        x_adv = (x + eps * direction).clamp(0, 1)
        hit_clean = logits.argmax(1) == target if targeted else logits.argmax(1) != y
        pred = model(x_adv).argmax(1)
        success = pred == target if targeted else pred != y
    steps = torch.where(hit_clean, 0, torch.where(success, 1, -1)).long()
    return _result(x, x_adv=x_adv, success=success, steps=steps)

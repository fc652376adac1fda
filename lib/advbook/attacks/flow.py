"""Spatially transformed adversarial examples (stAdv; Xiao et al., ICLR 2018): move pixels, don't add noise.

A *flow field* ``flow`` of shape (N, 2, H, W) gives every output pixel p = (i, j) (row i, column j)
a displacement in pixels: ``flow[:, 0]`` along the width (Δu, x) and ``flow[:, 1]`` along the height
(Δv, y). The adversarial image takes, at p, the input sampled at (i + Δv, j + Δu) by bilinear
interpolation of the four pixels around that point (the paper's Eq. 1). A flow of (+1, 0) everywhere
therefore shows every pixel's right-hand neighbour: the picture moves one pixel to the left.

Choices the paper leaves open, and what we do:

* **Sampling** is ``torch.nn.functional.grid_sample(mode="bilinear", align_corners=False)``: pixel
  j's centre sits at the normalised coordinate (2j + 1)/W - 1, torch's default and what the
  ReColorAdv/mister_ed stAdv code runs under current torch. For power-of-two sizes (8, 32) these
  coordinates are exact in floating point, so the zero flow is the identity bit for bit and an
  integer flow an exact shift; for other sizes they agree to rounding (~1e-7).
* **Outside the image** (``padding_mode``): ``"zeros"`` (default) is the paper's Eq. 1, a sum over
  the input pixels only, so a point sampled beyond the border fades to black; ``"border"`` repeats
  the edge pixels and ``"reflection"`` mirrors them (grid_sample's other two modes).
* **L_flow** (Eq. 4) is Σ_p Σ_{q ∈ N(p)} sqrt(‖Δu(p) − Δu(q)‖² + ‖Δv(p) − Δv(q)‖² + ε) over the
  4-neighbourhood N(p) (left, right, up, down), in *pixel* units. At the image border the missing
  neighbour is p itself (replicate padding): the border is not penalised, and each such term
  contributes sqrt(ε). This is mister_ed's ``FullSpatial.stAdv_norm`` (in its normalised units) and
  the boundary rule of the SYMMETRIC padding in rakutentech/stAdv (which, unlike the paper's
  wording, takes the four *diagonal* neighbours). ε = 1e-8 (rakutentech/stAdv) keeps the gradient
  finite where neighbouring flows are equal; a constant flow costs exactly 4·H·W·sqrt(ε).
* **L_adv** (Eq. 3, untargeted) is the Carlini–Wagner margin max(Z_y − max_{i≠y} Z_i, −κ) on the
  logits, κ = ``kappa`` (0 by default): it stops pushing once a sample is misclassified by κ.
* **Optimiser**: the paper minimises L_adv + τ·L_flow with L-BFGS; we offer ``"lbfgs"``
  (``torch.optim.LBFGS``, one iteration per step with a strong-Wolfe line search of up to 24
  evaluations, ``lr`` its initial step, 1 is the usual value) and ``"adam"`` (default; ``lr`` in pixels
  per step; torch's Adam update). L_flow has a kink of width ~sqrt(ε) at equal neighbours, so from the
  zero flow L-BFGS needs a small ``tau`` or many steps before it moves; Adam's normalised steps do not. Adam is
  elementwise, so each image's flow follows its own problem; L-BFGS solves the batch's *sum* as one
  problem (shared curvature pairs and line search), so a sample's result depends on its batch.
  The flow starts at zero, the clean image (rakutentech/stAdv's demo starts from a random flow);
  τ = 0.05 is the value the paper reports. (ReColorAdv's combined attacks use the other classic
  form: an L-inf bound on the flow, 0.05 in normalised units, instead of the penalty.)
* **What is returned**: every iterate is checked; each sample keeps the misclassified iterate with
  the smallest L_flow (the CW habit: the objective's trade-off point is not always the least visible
  success); a sample never misclassified keeps the last iterate. ``steps`` is the first iterate
  index (0 = the clean input) at which the prediction differed from ``y``, -1 if none did.

Gradients are taken with ``torch.autograd.grad`` with respect to the flow only (the model's
parameters get no ``.grad``); the model must be in eval mode and its mode is not changed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F

from advbook.attacks.core import AttackResult, _check_inputs, _result, margin

__all__ = ["PADDING_MODES", "OPTIMIZERS", "FlowResult", "apply_flow", "flow_loss", "flow_attack"]

PADDING_MODES = ("zeros", "border", "reflection")


class _Adam:
    """``torch.optim.Adam``'s update with its defaults (betas 0.9, 0.999; eps 1e-8), written out because
    that optimiser's first step imports ``torch._dynamo`` (~1.5 s, longer than a small attack)."""

    def __init__(self, p: torch.Tensor, lr: float):
        self.p, self.lr, self.t = p, lr, 0
        self.m, self.v = torch.zeros_like(p), torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> None:
        with torch.enable_grad():
            closure()
        g, b1, b2 = self.p.grad, 0.9, 0.999
        self.t += 1
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = self.v.sqrt() / math.sqrt(1 - b2 ** self.t) + 1e-8
        self.p.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.t))


OPTIMIZERS: dict[str, Callable] = {
    "adam": _Adam,
    "lbfgs": lambda p, lr: torch.optim.LBFGS([p], lr=lr, max_iter=1, max_eval=25, line_search_fn="strong_wolfe"),
}


@dataclasses.dataclass
class FlowResult(AttackResult):
    """An :class:`AttackResult` plus each sample's returned ``flow`` (N, 2, H, W) and its ``smoothness``
    (L_flow, (N,)). ``core.run_batched`` concatenates with ``AttackResult.cat`` and would drop these two:
    batch by hand and join the parts with ``FlowResult.cat``."""
    flow: torch.Tensor
    smoothness: torch.Tensor

    @staticmethod
    def cat(parts: list["FlowResult"]) -> "FlowResult":
        return FlowResult(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(FlowResult)))


def _check_flow(x: torch.Tensor, flow: torch.Tensor) -> None:
    expected = (x.shape[0], 2, *x.shape[2:])
    if x.dim() != 4 or tuple(flow.shape) != expected:
        raise ValueError(f"expected x of shape (N, C, H, W) and flow of shape (N, 2, H, W), "
                         f"got {tuple(x.shape)} and {tuple(flow.shape)}")


def _check_padding(padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}; valid: {', '.join(PADDING_MODES)}")


def apply_flow(x: torch.Tensor, flow: torch.Tensor, *, padding_mode: str = "zeros") -> torch.Tensor:
    """``x`` (N, C, H, W) resampled bilinearly at each pixel's position plus its ``flow`` (pixels)."""
    _check_flow(x, flow)
    _check_padding(padding_mode)
    h, w = x.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                                torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    pixels = torch.stack([cols, rows], dim=-1)                          # (H, W, 2): (x, y) of each pixel
    # pixel position p -> grid_sample's normalised coordinate (align_corners=False): (2 p + 1) / size - 1,
    # computed as p * (2 / size) + (1 / size - 1): exact in floating point for power-of-two sizes
    scale = torch.tensor([2 / w, 2 / h], device=x.device, dtype=x.dtype)
    offset = torch.tensor([1 / w - 1, 1 / h - 1], device=x.device, dtype=x.dtype)
    grid = torch.addcmul(offset, flow.permute(0, 2, 3, 1) + pixels, scale)
    # bilinear weights sum to 1 up to rounding: clamp so the result is a valid image for the next attack
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False).clamp(0, 1)


def flow_loss(flow: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample L_flow of ``flow`` (N, 2, H, W): the 4-neighbour smoothness sum (see module docstring)."""
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected flow of shape (N, 2, H, W), got {tuple(flow.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    h, w = flow.shape[-2:]
    total = flow.new_zeros(len(flow))
    for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
        neighbour = padded[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        total = total + ((flow - neighbour).pow(2).sum(1) + eps).sqrt().sum((1, 2))
    return total


def flow_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, tau: float = 0.05, steps: int = 100,
                lr: float = 0.01, optimizer: str = "adam", kappa: float = 0.0, padding_mode: str = "zeros",
                eps: float = 1e-8) -> FlowResult:
    """Untargeted stAdv: minimise L_adv + ``tau`` · L_flow over the flow for ``steps`` optimiser steps."""
    _check_inputs(x, y)
    if x.dim() != 4:
        raise ValueError(f"expected x of shape (N, C, H, W), got {tuple(x.shape)}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    _check_padding(padding_mode)
    if steps < 0 or tau < 0 or not lr > 0 or kappa < 0:
        raise ValueError(f"need steps >= 0, tau >= 0, lr > 0, kappa >= 0; got steps={steps}, tau={tau}, "
                         f"lr={lr}, kappa={kappa}")
    n = len(x)
    flow = torch.zeros(n, 2, *x.shape[2:], device=x.device, dtype=x.dtype, requires_grad=True)
    opt = OPTIMIZERS[optimizer](flow, lr)

    def objective():
        smooth = flow_loss(flow, eps=eps)
        adv = margin(model(apply_flow(x, flow, padding_mode=padding_mode)), y).clamp_min(-kappa)
        return (adv + tau * smooth).sum()

    def closure():
        loss = objective()
        (grad,) = torch.autograd.grad(loss, flow)
        flow.grad = grad.contiguous()  # it comes back in the grid's (N, H, W, 2) layout; L-BFGS flattens it
        return loss.detach()

    best_flow = torch.zeros_like(flow, requires_grad=False)
    best_smooth = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
    first_flip = torch.full((n,), -1, dtype=torch.long, device=x.device)
    for t in range(steps + 1):
        with torch.no_grad():
            current = flow.detach()
            fooled = model(apply_flow(x, current, padding_mode=padding_mode)).argmax(1) != y
            smooth = flow_loss(current, eps=eps)
            first_flip[fooled & (first_flip < 0)] = t
            better = fooled & (smooth < best_smooth)
            never = first_flip < 0
            keep = better | never  # a sample never fooled follows the iterates to the last one
            best_flow[keep] = current[keep]
            best_smooth[better] = smooth[better]
        if t == steps:
            break
        opt.step(closure)
    with torch.no_grad():
        x_adv = apply_flow(x, best_flow, padding_mode=padding_mode)
        smooth = flow_loss(best_flow, eps=eps)
    base = _result(x, x_adv=x_adv, success=first_flip >= 0, steps=first_flip)
    return FlowResult(**{f.name: getattr(base, f.name) for f in dataclasses.fields(AttackResult)},
                      flow=best_flow, smoothness=smooth)

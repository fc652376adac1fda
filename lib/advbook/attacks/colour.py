"""A functional colour attack: ReColorAdv (Laidlaw & Feizi, NeurIPS 2019) in RGB, without its smoothness term.

A *functional* attack changes an image through one function applied to every pixel, so two pixels
of the same colour get the same new colour ("make every red a little lighter"), unlike an additive
perturbation, which may treat them differently.

The colour function here is ReColorAdv's ``FullSpatial`` transformation in its default RGB colour
space: a grid of K × K × K control points spans the RGB cube [0, 1]³ (point (a, b, c) sits at the
colour (a, b, c) / (K − 1)); each control point carries a shift ``params[:, :, a, b, c]`` (3 values,
one per channel), and a pixel of colour (r, g, b) moves by the trilinear interpolation of the shifts
of the 8 control points around it. ``params`` has shape (N, 3, K, K, K); zero is the identity
(bit for bit). ``resolution`` K = 8 is the default of ReColorAdv's ``FullSpatial``.

Choices, and what we do:

* **Budget**: every shift lies in [−eps, eps] (ReColorAdv's L-inf bound on the parameters). A
  pixel's shift is a convex combination of 8 such shifts, so every channel of every pixel moves by at
  most eps: the colour attack is a special case of the L-inf ``eps`` threat model, the functional
  constraint (same colour in, same colour out) is what it adds.
* **Gamut**: each control point's new colour, grid + shift, is kept in [0, 1] (ReColorAdv's
  ``clip_params``); interpolating colours inside the cube stays inside it, so the image needs no
  clipping of its own (we clamp anyway against rounding, by at most ~1e-7).
* **Interpolation** is ``grid_sample`` on the (N, 3, K, K, K) volume with ``align_corners=True``
  (the corners of the volume are the control points at colour values 0 and 1), identical to
  ReColorAdv's hand-written trilinear gather.
* **Colour space and optimisation**: ReColorAdv's reference setting (``recoloradv.utils``) works in
  CIELUV on a 16 × 32 × 32 grid with a bound of 0.06 per channel and runs 100 Adam steps (lr 0.001) on
  the CW margin plus 0.05 × the grid's smoothness (differences between neighbouring control points).
  We stay in RGB (its default colour space, so the budget reads in pixel units) and keep the CW
  margin Z_y − max_{i≠y} Z_i without the smoothness term, minimised by L-inf PGD on the shifts: sign
  steps of ``step_size`` (default 2.5 · eps / steps, the rule of Madry et al.), each followed by the
  projection on the budget and the gamut, from the identity. Without the smoothness term nearby
  colours may move in different directions; the L-inf bound still limits how far.
* Each sample stops at its first misclassified iterate (as :func:`advbook.attacks.core.pgd` with
  ``stop_on_success``); ``steps`` is that iterate's index (0 = clean input), -1 if none.

Only the shifts get gradients (``torch.autograd.grad``); the model must be in eval mode and its mode
is not changed.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from advbook.attacks.core import AttackResult, _check_inputs, _result, margin

__all__ = ["ColourResult", "colour_grid", "apply_colour", "colour_attack"]


@dataclasses.dataclass
class ColourResult(AttackResult):
    """An :class:`AttackResult` plus each sample's colour-function shifts ``params`` (N, 3, K, K, K).
    ``core.run_batched`` would drop ``params`` (it joins with ``AttackResult.cat``): join with ``ColourResult.cat``."""
    params: torch.Tensor

    @staticmethod
    def cat(parts: list["ColourResult"]) -> "ColourResult":
        return ColourResult(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(ColourResult)))


def colour_grid(resolution: int, *, like: torch.Tensor) -> torch.Tensor:
    """The control points' own colours, shape (1, 3, K, K, K): channel c of point (a, b, c') is its
    index along axis c divided by K − 1 (device and dtype of ``like``)."""
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    axis = torch.linspace(0, 1, resolution, device=like.device, dtype=like.dtype)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))[None]


def _check_params(x: torch.Tensor, params: torch.Tensor) -> None:
    k = params.shape[-1] if params.dim() == 5 else None
    if x.dim() != 4 or x.shape[1] != 3 or params.dim() != 5 or tuple(params.shape) != (len(x), 3, k, k, k) or k < 2:
        raise ValueError(f"expected x of shape (N, 3, H, W) and params of shape (N, 3, K, K, K) with K >= 2, "
                         f"got {tuple(x.shape)} and {tuple(params.shape)}")


def apply_colour(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Every pixel of ``x`` (N, 3, H, W) moved by the trilinear interpolation of ``params`` at its colour."""
    _check_params(x, params)
    # grid_sample reads the last grid coordinate along the volume's first spatial axis: (b, g, r)
    grid = (2 * x - 1).permute(0, 2, 3, 1).flip(-1)[:, None]           # (N, 1, H, W, 3)
    shift = F.grid_sample(params, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, :, 0]
    return (x + shift).clamp(0, 1)


def _project(params: torch.Tensor, *, eps: float, grid: torch.Tensor) -> torch.Tensor:
    """The budget [−eps, eps], then the gamut: grid + params in [0, 1]."""
    return torch.max(torch.min(params.clamp(-eps, eps), 1 - grid), -grid)


def colour_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
                  step_size: float | None = None, resolution: int = 8) -> ColourResult:
    """L-inf PGD on the colour function's shifts (budget ``eps`` per channel), CW margin, stop on success."""
    _check_inputs(x, y)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (N, 3, H, W), got {tuple(x.shape)}")
    if not eps > 0 or steps < 0 or (step_size is not None and not step_size > 0):
        raise ValueError(f"need eps > 0, steps >= 0 and step_size > 0 (or None); got eps={eps}, steps={steps}, "
                         f"step_size={step_size}")
    grid = colour_grid(resolution, like=x)
    size = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    n = len(x)
    params = torch.zeros(n, 3, resolution, resolution, resolution, device=x.device, dtype=x.dtype)
    first_flip = torch.full((n,), -1, dtype=torch.long, device=x.device)
    for t in range(steps + 1):
        idx = (first_flip < 0).nonzero().flatten()
        if len(idx) == 0:
            break
        p = params[idx].requires_grad_(True)
        logits = model(apply_colour(x[idx], p))
        fooled = logits.argmax(1) != y[idx]
        first_flip[idx[fooled]] = t
        if t == steps:
            break
        (grad,) = torch.autograd.grad(margin(logits, y[idx]).sum(), p)
        with torch.no_grad():
            move = idx[~fooled]
            params[move] = _project(params[move] - size * grad[~fooled].sign(), eps=eps, grid=grid)
    with torch.no_grad():
        x_adv = apply_colour(x, params)
    base = _result(x, x_adv=x_adv, success=first_flip >= 0, steps=first_flip)
    return ColourResult(**{f.name: getattr(base, f.name) for f in dataclasses.fields(AttackResult)}, params=params)

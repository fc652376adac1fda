"""Universal adversarial perturbations (Moosavi-Dezfooli et al., 2017): one ``v`` for many images.

The paper's Algorithm 1 (LEC §universal perturbation): start from ``v = 0``; pass over the images
in a random order; for each image ``x_i`` that ``v`` does not fool yet (the prediction on
``x_i + v`` is still the clean prediction), find the minimal extra perturbation ``dv_i`` that
sends ``x_i + v`` across the decision boundary, set ``v <- P(v + dv_i)``, the projection on the
L-inf or L2 ball of radius ``eps`` around 0; after each pass measure the fooling rate on the
images, and stop once it reaches ``1 - delta`` or after ``max_passes`` passes.

Choices, and the reference code they follow (LTS4/universal ``universal_pert.py``; ART 1.20.1's
``UniversalPerturbation``):

* The minimal extra perturbation is the project's :func:`advbook.attacks.core.deepfool` (L2,
  ``overshoot`` 0.02, at most ``deepfool_steps`` iterations) started at ``clip(x_i + v)`` and
  pushed away from the clean prediction, as in the paper; ``dv_i = x_df - clip(x_i + v)``. As in
  the LTS4 code (which adds ``dr`` only when DeepFool converged), ``v`` changes only when DeepFool
  succeeded.
* Images live in [0, 1]: every perturbed image is ``clip(x + v, 0, 1)`` (the paper worked on
  mean-subtracted ImageNet images and clipped nothing), in the fooling rate and in the updates.
* The projection is on the *ball* (the paper's ``P_{p, xi}``: L-inf clamps each component to
  ``[-eps, eps]``; L2 rescales ``v`` only if ``||v||_2 > eps``). One version of the LTS4 code
  rescales to the L2 *sphere* instead; ART projects on the ball. It is written here rather than
  taken from :mod:`advbook.attacks.threats`: a threat model projects an adversarial *image* on the
  ball around its clean image and clips it to [0, 1], while ``v`` belongs to no image and its
  components must keep their signs.
* The fooling rate (:func:`fooling_rate`, the paper's definition) is the share of images whose
  predicted class on ``clip(x + v)`` differs from the one on ``x``; labels play no part.
* The image order of every pass comes from ``torch.randperm`` with a CPU ``torch.Generator``
  seeded by ``seed`` (LTS4 shuffles with numpy's global state, ART with Python's ``random``): the
  same seed gives the bit-identical ``v`` on the same device.
* The loop is sequential over images, as the algorithm is (each update changes ``v`` for the next
  image); the fooling rate of each pass is computed in batches.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from advbook.attacks.core import deepfool

__all__ = ["universal_perturbation", "fooling_rate", "project_ball", "UniversalResult"]

_NORMS = ("linf", "l2")


@dataclasses.dataclass
class UniversalResult:
    v: torch.Tensor             # (1, *image shape): the perturbation, add it to any image and clip
    fooling_rate: float         # on the images it was computed from, after the last pass
    history: list[float]        # the fooling rate after each pass
    converged: bool             # True when the fooling rate reached 1 - delta


def project_ball(v: torch.Tensor, *, norm: str, eps: float) -> torch.Tensor:
    """The nearest point of the ``norm``-ball of radius ``eps`` around 0 (per sample for a batch)."""
    if norm == "linf":
        return v.clamp(-eps, eps)
    if norm == "l2":
        size = v.flatten(1).norm(dim=1).clamp_min(1e-12)
        return v * (eps / size).clamp(max=1.0).view(-1, *([1] * (v.dim() - 1)))
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(_NORMS)}")


def _check_images(x: torch.Tensor) -> None:
    if x.dim() < 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty batch of images of shape (N, ...), got {tuple(x.shape)}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"inputs must lie in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]")


@torch.no_grad()
def _predict(model, x: torch.Tensor, *, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def fooling_rate(model: torch.nn.Module, x: torch.Tensor, v: torch.Tensor, *, batch_size: int = 500) -> float:
    """The share of images in ``x`` whose predicted class changes when ``v`` is added (and the sum
    clipped to [0, 1]). ``v`` has the shape of one image, with or without a leading 1."""
    _check_images(x)
    if v.shape[-(x.dim() - 1):] != x.shape[1:] or v.numel() != x[0].numel():
        raise ValueError(f"v must have the shape of one image {tuple(x.shape[1:])}, got {tuple(v.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    v = v.reshape(1, *x.shape[1:]).to(x)
    clean = _predict(model, x, batch_size=batch_size)
    perturbed = _predict(model, (x + v).clamp(0, 1), batch_size=batch_size)
    return (clean != perturbed).float().mean().item()


def universal_perturbation(model: torch.nn.Module, x: torch.Tensor, *, eps: float, norm: str = "linf",
                           delta: float = 0.2, max_passes: int = 10, overshoot: float = 0.02,
                           deepfool_steps: int = 50, seed: int = 0, batch_size: int = 500) -> UniversalResult:
    """A universal perturbation of ``norm`` at most ``eps`` for the images ``x`` (in [0, 1]): passes
    of DeepFool updates in a seeded random order until the fooling rate is at least ``1 - delta``
    (the paper's default ``delta = 0.2``: 80 %) or ``max_passes`` passes were made."""
    _check_images(x)
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(_NORMS)}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not (isinstance(delta, (int, float)) and 0 <= delta <= 1):
        raise ValueError(f"delta must be in [0, 1], got {delta!r}")
    if not (isinstance(max_passes, int) and max_passes >= 1):
        raise ValueError(f"max_passes must be an integer >= 1, got {max_passes!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = x.detach()
    clean = _predict(model, x, batch_size=batch_size)
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros_like(x[:1])
    history: list[float] = []
    rate = 0.0
    for _ in range(max_passes):
        for i in torch.randperm(len(x), generator=g).tolist():
            xv = (x[i:i + 1] + v).clamp(0, 1)
            label = clean[i:i + 1]
            with torch.no_grad():
                if model(xv).argmax(1).item() != label.item():
                    continue                              # already fooled by v
            res = deepfool(model, xv, label, steps=deepfool_steps, overshoot=overshoot)
            if res.success.item():
                v = project_ball(v + (res.x_adv - xv), norm=norm, eps=eps)
        rate = fooling_rate(model, x, v, batch_size=batch_size)
        history.append(rate)
        if rate >= 1 - delta:
            break
    return UniversalResult(v=v, fooling_rate=rate, history=history, converged=rate >= 1 - delta)

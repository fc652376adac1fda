"""Attention maps on a classifier's last feature map: AGKD-BML's class-irrelevant attention, Grad-CAM
and the class-averaged CAM (the three maps of the AGK chapter's Table 3).

Every map is computed at the resolution of :meth:`~advbook.models.zoo.Classifier.feature_map` (4x4 for
the CIFAR ResNets, 8x8 for the WideResNets), one (H, W) map per image, min-max normalised per image to
[0, 1] by :func:`minmax`: AGKD-BML distils maps at that resolution (``main.py`` l.140-145 of
hongw579/AGKD-BML compares them without resizing), and a display upsamples them itself.

* :func:`channel_attention` - the class-irrelevant map AGKD-BML distils: the channel sum of the map.
* :func:`grad_cam` - Grad-CAM (Selvaraju et al. 2017) for one given class per image: the original
  class or the false (predicted) one of an adversarial example.
* :func:`class_activation_maps` / :func:`cam_average` - CAM (Zhou et al. 2016) for every class, and
  its mean over the classes (the supplement's "CAM-avg", its reference [12]).

:func:`grad_cam_from_map` and :func:`cam_average_from_map` compute the same from a feature map that
a forward pass already gave, running only the tail after it: a training step distils them from its
one pass (AGK-T3, :mod:`advbook.training.agk`).

Neither Grad-CAM nor CAM-avg has released code for the paper (the supplement, Table 3, describes
them in one sentence each); what each computes is stated in its docstring.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from advbook.models.zoo import Classifier

__all__ = ["cam_average", "cam_average_from_map", "channel_attention", "class_activation_maps", "grad_cam",
           "grad_cam_from_map", "minmax"]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``maps`` (B, H, W) shifted and scaled to [0, 1]: ``(a - min) / (max - min)``.

    As ``attention_map`` in ``utils.py`` l.77-79 of the reference (subtract the per-sample minimum,
    divide by the per-sample maximum of the result). A constant map has no spatial information and
    the reference divides 0 by 0 there (NaN, which would poison a distillation loss); here it maps to
    all zeros, by dividing by 1 instead of 0, so its gradient stays finite as well.
    """
    flat = maps.flatten(1)
    low = flat.amin(1, keepdim=True)
    spread = flat.amax(1, keepdim=True) - low
    return ((flat - low) / torch.where(spread > 0, spread, torch.ones_like(spread))).view_as(maps)


def _check_fmap(fmap: torch.Tensor) -> None:
    if not isinstance(fmap, torch.Tensor) or fmap.dim() != 4:
        shape = tuple(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__
        raise ValueError(f"fmap must be a (B, C, H, W) tensor, got {shape}")


def channel_attention(fmap: torch.Tensor) -> torch.Tensor:
    """AGKD-BML's class-irrelevant attention of a feature map ``fmap`` (B, C, H, W): (B, H, W).

    The reference's ``attention_map`` (``utils.py`` l.74-81): the plain sum over the channels - no
    power and no absolute value, the map being post-ReLU there (``custom_models/model.py`` l.89) as it
    is in every zoo body - then :func:`minmax` per image (a constant map gives zeros). Differentiable;
    the caller detaches the teacher's map, as ``main.py`` l.141 does.
    """
    _check_fmap(fmap)
    return minmax(fmap.sum(1))


def _check_model(model, x: torch.Tensor, *, caller: str) -> None:
    if not isinstance(model, Classifier):
        raise ValueError(f"{caller} needs an advbook Classifier (feature_map and head), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{caller}: x must be a (B, 3, H, W) image batch, got {shape}")


def grad_cam(model: Classifier, x: torch.Tensor, classes: torch.Tensor, *,
             create_graph: bool = False) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017, eq. 1-2) of ``classes[i]`` on image ``x[i]``: (B, H, W) in [0, 1].

    Channel weights ``w_k`` = the spatial mean of d logit_c / d A_k over the last feature map ``A``
    (:meth:`Classifier.feature_map`), map = ReLU(sum_k w_k A_k), then :func:`minmax` per image (a map
    with no positive evidence, all zeros after the ReLU, stays zeros). The gradient is taken of the
    logits' sum over the batch with respect to ``A`` alone: the tail after ``A`` (pooling, Flatten,
    projection, head) acts on each image separately, so each image gets exactly its own gradient,
    in train mode too. The model runs in whatever mode the caller left it.

    ``create_graph=False``: a detached map for display or analysis; ``A`` is detached from the body
    before the gradient is taken, so no graph into the body is kept. ``create_graph=True``: the
    map keeps its graph for a loss on it (the AGK-T3 ablation distils it in training): the backward
    pass that yields ``w_k`` is built with ``create_graph``, so a loss on the map reaches the body's
    parameters through ``A_k`` and the head's (and projection's) through ``w_k`` - a double backward,
    one extra backward pass per training step.
    """
    _check_model(model, x, caller="grad_cam")
    _check_classes(model, classes, len(x))
    with torch.enable_grad():
        return grad_cam_from_map(model, model.feature_map(x), classes, create_graph=create_graph)


def _check_classes(model: Classifier, classes, n: int) -> None:
    num_classes = model.head.out_features
    if not isinstance(classes, torch.Tensor) or classes.dim() != 1 or classes.dtype.is_floating_point \
            or classes.dtype == torch.bool:
        raise ValueError("classes must be a 1-D integer tensor, one class per image")
    if len(classes) != n:
        raise ValueError(f"classes must hold one class per image: got {len(classes)} for {n} images")
    if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(f"classes must lie in [0, {num_classes}), got {classes.min().item()}..{classes.max().item()}")


def grad_cam_from_map(model: Classifier, fmap: torch.Tensor, classes: torch.Tensor, *,
                      create_graph: bool = False) -> torch.Tensor:
    """:func:`grad_cam` of a feature map ``fmap`` that ``model.feature_map`` already gave: only the
    tail after the map (pooling, Flatten, projection, head) runs again, not the body. A training
    step that has the map of its one forward pass distils Grad-CAM without a second pass through the
    body (AGK-T3, :mod:`advbook.training.agk`); with ``create_graph=True`` the map keeps the graph
    into whatever produced ``fmap``."""
    _check_fmap(fmap)
    _check_classes(model, classes, len(fmap))
    with torch.enable_grad():
        if not create_graph or not fmap.requires_grad:
            fmap = fmap.detach().requires_grad_(True)
        logits = model.head(model.features_from_map(fmap))
        score = logits.gather(1, classes.to(device=logits.device, dtype=torch.long)[:, None]).sum()
        (grads,) = torch.autograd.grad(score, fmap, create_graph=create_graph)
        cam = F.relu((grads.mean((2, 3))[:, :, None, None] * fmap).sum(1))
        out = minmax(cam)
    return out if create_graph else out.detach()


def _readout(model: Classifier) -> torch.Tensor:
    """The linear read-out (K, C) from the feature map's channels to the logits: the head's weight,
    times the weights of the Linear layers that end the body (the projection of
    ``build_model(feature_dim=...)``), biases dropped as CAM drops the head's bias."""
    weight = model.head.weight
    for layer in reversed(model.body):
        if not isinstance(layer, nn.Linear):
            break
        weight = weight @ layer.weight
    return weight


def _maps_and_readout(model: Classifier, x: torch.Tensor, *, caller: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_model(model, x, caller=caller)
    return _checked_readout(model, model.feature_map(x), caller=caller)


def _checked_readout(model: Classifier, fmap: torch.Tensor, *, caller: str) -> tuple[torch.Tensor, torch.Tensor]:
    weight = _readout(model)
    if weight.shape[1] != fmap.shape[1]:
        raise ValueError(f"{caller}: the head reads {weight.shape[1]} features but the feature map has "
                         f"{fmap.shape[1]} channels")
    return fmap, weight


def class_activation_maps(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al. 2016, eq. 2) of every class: ``M_c(h, w) = sum_k W_ck A_k(h, w)``, (B, K, H, W),
    raw (not normalised, no ReLU).

    ``W`` is the linear read-out from the map's channels to the logits (:func:`_readout`: the head,
    through the projection if the body has one). CAM assumes global AVERAGE pooling before the head,
    and then the mean of ``M_c`` over positions is logit_c less its bias. The small CNNs and VGG pool
    by MAXIMUM; for them this is still the head applied to the map at each position, what the logits
    would be if each position were pooled alone - the identity with the logits does not hold there.
    Differentiable as it stands (a forward formula: no gradient is taken to build it).
    """
    fmap, weight = _maps_and_readout(model, x, caller="class_activation_maps")
    return torch.einsum("kc,bchw->bkhw", weight, fmap)


def cam_average(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """CAM averaged over all classes, :func:`minmax`-normalised per image: (B, H, W) in [0, 1].

    ``sum_k mean_c(W_ck) A_k`` - by linearity the mean of :func:`class_activation_maps` over the
    classes, computed with the mean weight so that it costs one channel sum, not K. No ReLU: the mean
    CAM is shifted to [0, 1] by the min-max as a whole, as ``channel_attention`` is. Differentiable
    w.r.t. the parameters as it stands (the AGK-T3 ablation distils it).
    """
    _check_model(model, x, caller="cam_average")
    return cam_average_from_map(model, model.feature_map(x))


def cam_average_from_map(model: Classifier, fmap: torch.Tensor) -> torch.Tensor:
    """:func:`cam_average` of a feature map ``fmap`` that ``model.feature_map`` already gave (no pass
    through the body; differentiable w.r.t. ``fmap`` and the read-out)."""
    _check_fmap(fmap)
    fmap, weight = _checked_readout(model, fmap, caller="cam_average")
    return minmax(torch.einsum("c,bchw->bhw", weight.mean(0), fmap))

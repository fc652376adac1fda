"""DCT frequency tools: orthonormal 2-D DCT-II, band masks, flipping frequency, band requirement.

Band geometry (our choice; HOL §3 only says low frequencies sit top-left in the DCT and high
ones bottom-right): coefficient ``(u, v)`` of an ``H x W`` image lies in band ``max(u, v)``, so
bands are the L-shaped rings around the top-left corner, ``0 .. k_max - 1`` with
``k_max = max(H, W)`` (32 for CIFAR-10). ``low_pass(x, k)`` keeps the bands ``< k`` and
``high_pass(x, k)`` the bands ``>= k``; ``low_pass(x, k_max)`` and ``high_pass(x, 0)`` return ``x``.
Reconstructions are not clipped to [0, 1] (a high-pass image is centred on 0); the model
normalises whatever it is given.

Both per-sample measures scan the bands from the top down with one batched forward pass per band
over all samples still unresolved (never one sample and one band at a time), stopping each sample
at its answer; ``band_predictions`` classifies all ``k_max + 1`` filtered copies at once when every
band is needed (HOL Fig. 4).
"""
from __future__ import annotations

import functools

import torch

from advbook.models.predict import predict

__all__ = ["partial_highpass", "dct_matrix", "dct2", "idct2", "band_index", "band_masks", "low_pass", "high_pass",
           "filtered_stack", "band_predictions", "flipping_frequency", "band_requirement", "band_accuracy"]


@functools.lru_cache(maxsize=16)
def _dct_matrix_cpu(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2.0 / n) ** 0.5
    c[0] /= 2 ** 0.5
    return c


def dct_matrix(n: int, *, like: torch.Tensor) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C`` (``C @ C.T = I``), on the device and dtype of ``like``."""
    return _dct_matrix_cpu(n).to(device=like.device, dtype=like.dtype)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dimensions (scipy's ``dctn(norm="ortho")``)."""
    ch, cw = dct_matrix(x.shape[-2], like=x), dct_matrix(x.shape[-1], like=x)
    return ch @ x @ cw.T


def idct2(f: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2`."""
    ch, cw = dct_matrix(f.shape[-2], like=f), dct_matrix(f.shape[-1], like=f)
    return ch.T @ f @ cw


def band_index(h: int, w: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(h, w)`` tensor of band numbers, ``max(u, v)``."""
    u = torch.arange(h, device=device)[:, None]
    v = torch.arange(w, device=device)[None, :]
    return torch.maximum(u, v)


def band_masks(h: int, w: int, *, high: bool, like: torch.Tensor) -> torch.Tensor:
    """``(k_max + 1, h, w)`` masks: row ``k`` keeps the bands ``< k`` (low) or ``>= k`` (high)."""
    bands = band_index(h, w, device=like.device)
    ks = torch.arange(max(h, w) + 1, device=like.device)[:, None, None]
    keep = bands[None] >= ks if high else bands[None] < ks
    return keep.to(like.dtype)


def _check_k(k: int, x: torch.Tensor) -> int:
    k_max = max(x.shape[-2:])
    if not 0 <= k <= k_max:
        raise ValueError(f"k must be in [0, {k_max}] for {x.shape[-2]}x{x.shape[-1]} images, got {k}")
    return k


def low_pass(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` with the DCT bands ``>= k`` removed."""
    mask = band_masks(*x.shape[-2:], high=False, like=x)[_check_k(k, x)]
    return idct2(dct2(x) * mask)


def high_pass(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` with the DCT bands ``< k`` removed."""
    mask = band_masks(*x.shape[-2:], high=True, like=x)[_check_k(k, x)]
    return idct2(dct2(x) * mask)


def filtered_stack(x: torch.Tensor, *, high: bool) -> torch.Tensor:
    """``(k_max + 1, N, C, H, W)``: every low-pass (or high-pass) version of the batch ``x``."""
    masks = band_masks(*x.shape[-2:], high=high, like=x)
    return idct2(dct2(x)[None] * masks[:, None, None])


def band_predictions(model, x: torch.Tensor, *, high: bool, batch_size: int) -> torch.Tensor:
    """``(k_max + 1, N)`` predictions for every filtered version of ``x``, ``batch_size`` images a pass."""
    n_bands = max(x.shape[-2:]) + 1
    per_chunk = max(1, batch_size // n_bands)  # samples whose n_bands copies fill one batch
    preds = []
    for i in range(0, len(x), per_chunk):
        stack = filtered_stack(x[i:i + per_chunk], high=high)
        logits = predict(model, stack.flatten(0, 1), batch_size=batch_size)
        preds.append(logits.argmax(1).view(n_bands, -1))
    return torch.cat(preds, dim=1)


def _first_from_top(model, x: torch.Tensor, *, high: bool, hit, offset: int, batch_size: int) -> torch.Tensor:
    """Scan the bands from the top down, one batched pass per band over the samples not yet
    resolved; a sample is resolved at the first ``k`` where ``hit(pred_k, pred_full)``, and gets
    ``k + offset`` (0 if it never is)."""
    device = x.device
    full = predict(model, x, batch_size=batch_size).argmax(1)
    spec = dct2(x)
    masks = band_masks(*x.shape[-2:], high=high, like=x)
    out = torch.zeros(len(x), dtype=torch.long)
    active = torch.ones(len(x), dtype=torch.bool)
    top = masks.shape[0] - 1 if high else masks.shape[0] - 2  # low-pass at k_max is the image itself
    for k in range(top, -1, -1):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        filtered = idct2(spec[idx.to(device)] * masks[k])
        done = hit(predict(model, filtered, batch_size=batch_size).argmax(1), full[idx])
        out[idx[done]] = k + offset
        active[idx[done]] = False
    return out


def flipping_frequency(model, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """HOL §3: remove high bands from ``k_max`` down until the prediction changes.

    Returns, per sample, ``F = 1 + max{k < k_max : pred(low_pass(x, k)) != pred(x)}`` (0 if
    the prediction never changes): the highest band the prediction depends on. High ``F``
    means reliance on high frequencies. One batched forward pass per band over the samples
    whose prediction has not changed yet, so most samples cost only a few passes.
    """
    return _first_from_top(model, x, high=False, hit=torch.ne, offset=1, batch_size=batch_size)


def band_requirement(model, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """HOL §6, Table 1: add bands from ``k_max`` down until the prediction matches the original.

    Returns, per sample, ``R = max{k : pred(high_pass(x, k)) == pred(x)}`` (``high_pass(x, 0)``
    is ``x``, so ``R >= 0``): the high bands ``R .. k_max - 1`` alone already give the original
    prediction. High ``R`` means the prediction needs only high frequencies.
    """
    return _first_from_top(model, x, high=True, hit=torch.eq, offset=0, batch_size=batch_size)


def band_accuracy(preds: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> torch.Tensor:
    """``(k_max + 1, num_classes)`` accuracy per filter level and class, from ``band_predictions``."""
    correct = (preds == labels[None]).float()
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).float()
    out = torch.zeros(preds.shape[0], num_classes)
    out.index_add_(1, labels, correct)
    return out / counts


def partial_highpass(preds: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image, from :func:`band_predictions` (``preds[k]`` = predictions on the input keeping
    bands ``k`` to ``k_max - 1``): the accuracy averaged over the partial high-pass inputs
    ``k = 1 .. k_max - 1`` (HOL Fig. 4's curves without the full and the empty image), and the
    prediction on the emptiest of them (band ``k_max - 1`` alone), where a model falls back on a
    default answer."""
    k_max = preds.shape[0] - 1
    if k_max < 2:
        raise ValueError(f"need at least 3 band levels, got {preds.shape[0]}")
    correct = (preds == labels.view(1, -1).to(preds.device)).float()
    return {"partial_highpass_accuracy": correct[1:k_max].mean(0).cpu(), "emptiest_prediction": preds[k_max - 1].cpu()}

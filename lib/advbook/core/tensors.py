"""Tensor helpers shared by every layer: uint8 images to [0, 1] floats, checksums of tensors."""
from __future__ import annotations

import hashlib

import torch

__all__ = ["to_float", "tensor_checksum"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] to float32 in [0, 1]."""
    return images.float().div_(255.0)


def tensor_checksum(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' bytes, in order: the identity of generated data."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()

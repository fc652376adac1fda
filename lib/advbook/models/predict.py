"""Batched inference on the model's own device."""
from __future__ import annotations

import torch

from advbook.core.tensors import to_float

__all__ = ["predict"]


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Logits for float inputs in [0, 1] (or uint8 images), batch by batch, on the model's device."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        xb = to_float(xb) if xb.dtype == torch.uint8 else xb
        out.append(model(xb.to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)

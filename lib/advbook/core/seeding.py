"""Seeds and devices: the two settings every run fixes first."""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "pick_device", "DeviceUnavailable"]


class DeviceUnavailable(ValueError):
    """The requested device is not visible on this machine."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device=cuda but no CUDA device is visible; use device=auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)

"""The datasets by name: the one place a new dataset is registered."""
from __future__ import annotations

from advbook.data.cifar import Dataset, load_cifar10, synthetic
from advbook.data.more import load_cifar100, load_svhn, load_tinyimagenet

__all__ = ["DATASETS", "load_dataset"]

DATASETS = {"cifar10": load_cifar10, "synthetic": synthetic, "svhn": load_svhn, "cifar100": load_cifar100,
            "tinyimagenet": load_tinyimagenet}


def load_dataset(name: str) -> Dataset:
    """Load a dataset by name; an unknown name fails with the valid choices."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]()

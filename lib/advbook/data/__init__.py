"""Layer 1: datasets as uint8 tensors. ``load_dataset(name)`` is the entry point."""
from advbook.core.tensors import tensor_checksum, to_float
from advbook.data.cifar import (CIFAR10_CLASSES, Dataset, DatasetUnavailable, Split, balanced_subset, default_source,
                                load_cifar10, synthetic)
from advbook.data.registry import DATASETS, load_dataset

__all__ = ["Dataset", "Split", "DatasetUnavailable", "DATASETS", "load_dataset", "load_cifar10", "synthetic",
           "balanced_subset", "to_float", "tensor_checksum", "default_source", "CIFAR10_CLASSES"]

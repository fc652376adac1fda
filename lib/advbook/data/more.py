"""SVHN, CIFAR-100 and Tiny ImageNet (VIR Tables 3–4), as uint8 tensors like :mod:`advbook.data`.

Each comes from one setting, ``$ADVBOOK_DATA_<NAME>`` (``SVHN``, ``CIFAR100``, ``TINYIMAGENET``):

* SVHN: a folder with ``train_32x32.mat`` and ``test_32x32.mat`` (the official files);
* CIFAR-100: a folder holding ``cifar-100-python/`` (or that folder itself);
* Tiny ImageNet: the official ``tiny-imagenet-200/`` tree (``train/<wnid>/images/*``,
  ``val/images/*`` with ``val/val_annotations.txt``; the validation set serves as test set).

Unset, SVHN and CIFAR-100 are downloaded by torchvision into the cache (needs internet); Tiny
ImageNet has no torchvision loader and must be given locally. Local copies are read directly,
without torchvision's checksum test, so a partial copy fails with a clear message rather than a
download attempt. Anything missing raises :class:`advbook.data.DatasetUnavailable`, which the
notebooks turn into a "not run: dataset not available" entry.
"""
from __future__ import annotations

import io
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import torch

from advbook.core import cache
from advbook.data.cifar import DOWNLOAD_ERRORS, Dataset, DatasetUnavailable, cached_splits, from_state

__all__ = ["load_svhn", "load_cifar100", "load_tinyimagenet", "ENV"]

ENV = {"svhn": "ADVBOOK_DATA_SVHN", "cifar100": "ADVBOOK_DATA_CIFAR100", "tinyimagenet": "ADVBOOK_DATA_TINYIMAGENET"}
_STATS = {  # per-channel mean and std of the training sets, for the normalisation inside the model
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}


def _unavailable(name: str, why: str) -> DatasetUnavailable:
    return DatasetUnavailable(f"{name} is not available ({why}); set {ENV[name]} to a local copy "
                              "(see advbook.more_data for the layouts)"
                              + ("" if name == "tinyimagenet" else " or connect to the internet"))


def _download(name: str, fetch) -> Path:
    root = cache.cache_dir(f"data/torchvision-{name}")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        fetch(str(root))
    except DOWNLOAD_ERRORS as exc:  # no network, refused, truncated download (a bug is not caught)
        raise _unavailable(name, f"the download failed: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    finally:
        socket.setdefaulttimeout(old)
    return root


def _source(name: str, source) -> Path | None:
    source = source if source is not None else os.environ.get(ENV[name]) or None
    if source is None:
        return None
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise _unavailable(name, f"{ENV[name]}={source} does not exist")
    return path


def _dataset(name: str, path: Path | None, classes, splits_state: dict) -> Dataset:
    mean, std = _STATS[name]
    return from_state(splits_state, name=name, path=path, classes=classes, mean=mean, std=std)


def _stem(name: str, path: Path | None) -> str:
    stamp = (str(path), path.stat().st_mtime_ns) if path is not None else "download"
    return f"{name}-{cache.stable_hash({'stamp': stamp, 'v': 1})}"


def load_svhn(*, source: str | os.PathLike | None = None) -> Dataset:
    """SVHN (digits; label 10 of the .mat files is the digit 0)."""
    from scipy.io import loadmat

    path = _source("svhn", source)
    if path is None:
        from torchvision.datasets import SVHN

        path = _download("svhn", lambda root: [SVHN(root, split=s, download=True) for s in ("train", "test")])

    def build():
        out = {}
        for split in ("train", "test"):
            f = path / f"{split}_32x32.mat"
            if not f.exists():
                raise _unavailable("svhn", f"{f} is missing")
            mat = loadmat(str(f))
            images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
            labels = torch.from_numpy(mat["y"].astype(np.int64).ravel() % 10)
            out[split] = (images, labels)
        return out

    return _dataset("svhn", path, [str(d) for d in range(10)], cached_splits(_stem("svhn", path), build))


def load_cifar100(*, source: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-100 with its 100 fine labels."""
    path = _source("cifar100", source)
    if path is None:
        from torchvision.datasets import CIFAR100

        path = _download("cifar100", lambda root: [CIFAR100(root, train=t, download=True) for t in (True, False)])
    folder = path if path.name == "cifar-100-python" else path / "cifar-100-python"
    if not folder.is_dir():
        raise _unavailable("cifar100", f"{folder} is missing")

    def read(fname):
        f = folder / fname
        if not f.exists():
            raise _unavailable("cifar100", f"{f} is missing")
        with open(f, "rb") as fh:
            return pickle.load(fh, encoding="latin1")

    def build():
        out = {}
        for split in ("train", "test"):
            d = read(split)
            images = torch.from_numpy(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            out[split] = (images, torch.tensor(d["fine_labels"], dtype=torch.int64))
        return out

    state = cached_splits(_stem("cifar100", folder), build)
    return _dataset("cifar100", folder, read("meta")["fine_label_names"], state)


def load_tinyimagenet(*, source: str | os.PathLike | None = None) -> Dataset:
    """Tiny ImageNet (200 classes, 64x64); the official validation set is the test set."""
    from PIL import Image

    path = _source("tinyimagenet", source)
    if path is None:
        raise _unavailable("tinyimagenet", f"{ENV['tinyimagenet']} is not set")
    if (path / "tiny-imagenet-200").is_dir():
        path = path / "tiny-imagenet-200"
    if not (path / "train").is_dir() or not (path / "val" / "val_annotations.txt").exists():
        raise _unavailable("tinyimagenet", f"{path} lacks train/ or val/val_annotations.txt")
    wnids = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())

    def decode(files):
        return torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(f.read_bytes())).convert("RGB"))
                                          for f in files])).permute(0, 3, 1, 2).contiguous()

    def build():
        train = [(f, i) for i, w in enumerate(wnids) for f in sorted((path / "train" / w / "images").glob("*"))]
        rows = [line.split("\t")[:2] for line in (path / "val" / "val_annotations.txt").read_text().splitlines() if line]
        test = [(path / "val" / "images" / fname, wnids.index(w)) for fname, w in sorted(rows)]
        return {split: (decode([f for f, _ in items]), torch.tensor([c for _, c in items], dtype=torch.int64))
                for split, items in (("train", train), ("test", test))}

    return _dataset("tinyimagenet", path, wnids, cached_splits(_stem("tinyimagenet", path), build))

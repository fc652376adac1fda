"""Datasets as uint8 tensors: CIFAR-10 (downloaded or local), balanced subsets, a synthetic set.

CIFAR-10 is decoded once into a cached tensor file; afterwards loading it takes well under
a second. Where it comes from is one setting, ``$ADVBOOK_DATA`` (or ``source=``):

* unset: the offline copy ``../shared/data/cifar10-jpeg.tar.gz`` beside the repository if it
  exists (this project's machines and CI), else torchvision downloads the real CIFAR-10 into the
  cache (needs internet);
* a folder holding torchvision's ``cifar-10-batches-py`` (the real data, offline);
* an ImageFolder tree ``train/<class>/*`` and ``test/<class>/*``, or a ``.tar.gz`` of one,
  such as the JPEG-75 re-encoding shipped beside this repo (labelled ``cifar10-jpeg75``).

Images stay uint8 in NCHW until :func:`to_float` maps them to [0, 1]; normalisation
happens inside the model, never here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import os
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from advbook.core import cache
from advbook.core.paths import shared_dir
from advbook.core.tensors import tensor_checksum, to_float

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "Split", "Dataset", "DatasetUnavailable",
    "load_cifar10", "check_source", "LAYOUTS", "DOWNLOAD_ERRORS", "load_dataset", "balanced_subset", "synthetic", "to_float", "tensor_checksum", "DATASETS",
    "cached_splits", "from_state",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# sha256 of the offline JPEG re-encoding (shared/data/SHA256SUMS): identifies it as lossy.
JPEG75_SHA256 = "6b23b0d22b53b35fa1abfcfcf69c7098488e2a8f5e3e0af8e02bd7f8a19abc7b"
_DECODER_VERSION = 1  # bump when decoding changes, so cached tensors are rebuilt

HOW_TO_PROVIDE = (
    "CIFAR-10 is not available: it is not in the cache ({cache}) and could not be "
    "downloaded ({why}). Connect to the internet, or set ADVBOOK_DATA to a local copy: "
    "a folder with torchvision's cifar-10-batches-py, an ImageFolder tree with train/<class>/ "
    "and test/<class>/, or a .tar.gz of such a tree "
    "(e.g. ADVBOOK_DATA=../shared/data/cifar10-jpeg.tar.gz)."
)


LAYOUTS = ("a folder holding torchvision's cifar-10-batches-py, an ImageFolder tree with train/<class>/ and "
           "test/<class>/, or a .tar.gz of such a tree")
# What a failed download raises when the data is really absent: no network or refused (OSError, URLError),
# an interrupted transfer (IncompleteRead), torchvision's integrity check (RuntimeError), a truncated
# archive (EOFError, ReadError, zlib.error). Anything else is a bug and is not reported as missing data.
DOWNLOAD_ERRORS = (OSError, RuntimeError, http.client.HTTPException, EOFError, tarfile.ReadError, zlib.error)


class DatasetUnavailable(RuntimeError):
    """The dataset is neither cached nor reachable; the message says how to provide it."""


def _bad_setting(source, problem: str) -> DatasetUnavailable:
    return DatasetUnavailable(f"ADVBOOK_DATA={source} {problem}; accepted: {LAYOUTS}, or unset it to download")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


@dataclasses.dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str        # identity, e.g. "cifar10" or "cifar10-jpeg75"; recorded in provenance
    source: str      # where it was read from
    checksum: str    # sha256 of the decoded tensors: same bytes, same checksum
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    test: Split

    def identity(self) -> dict:
        return {"name": self.name, "source": self.source, "sha256": self.checksum,
                "n_train": len(self.train), "n_test": len(self.test)}


def _decode_imagefolder_entries(entries) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """entries: iterable of (relative path 'split/class/file', bytes-reader). Returns split tensors."""
    from PIL import Image

    found: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    for rel, read in entries:
        parts = Path(rel).parts
        if len(parts) < 3 or parts[-3] not in found:
            continue
        split, cls, fname = parts[-3], parts[-2], parts[-1]
        if cls not in CIFAR10_CLASSES:
            raise ValueError(f"unknown class folder {cls!r} in {rel}; expected one of {CIFAR10_CLASSES}")
        img = np.asarray(Image.open(io.BytesIO(read())).convert("RGB"))
        found[split].append((cls, fname, img))
    out = {}
    for split, rows in found.items():
        if not rows:
            raise ValueError(f"no images under {split}/ in the ImageFolder copy")
        rows.sort(key=lambda r: (CIFAR10_CLASSES.index(r[0]), r[1]))
        images = torch.from_numpy(np.stack([r[2] for r in rows])).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor([CIFAR10_CLASSES.index(r[0]) for r in rows], dtype=torch.int64)
        out[split] = (images, labels)
    return out


def _read_tarball(path: Path):
    try:
        with tarfile.open(path, "r:*") as tf:
            members = [m for m in tf.getmembers() if m.isfile()]
            return _decode_imagefolder_entries((m.name, tf.extractfile(m).read) for m in members)
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as exc:  # truncated, corrupt, unreadable image
        raise _bad_setting(path, f"is truncated or corrupt ({_one_line(exc)})") from exc


def _read_tree(path: Path):
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return _decode_imagefolder_entries((str(p.relative_to(path)), p.read_bytes) for p in files)
    except OSError as exc:  # an unreadable file or image
        raise _bad_setting(path, f"holds an unreadable file ({_one_line(exc)})") from exc


def _split_of(name: str) -> str | None:
    """``train`` or ``test`` for an image member ``.../<split>/<class>/<file>``, else None."""
    parts = Path(name).parts
    return parts[-3] if len(parts) >= 3 and parts[-3] in ("train", "test") else None


def _list_tarball(source, path: Path) -> None:
    """Open the tarball and read its listing until an image of both train/ and test/ is seen."""
    seen = set()
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if member.isfile() and _split_of(member.name):
                    seen.add(_split_of(member.name))
                    if len(seen) == 2:
                        return
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as exc:
        raise _bad_setting(source, f"cannot be read as a tar archive ({_one_line(exc)})") from exc
    missing = sorted({"train", "test"} - seen)
    raise _bad_setting(source, f"holds no images under {' or '.join(f'{s}/<class>/' for s in missing)}")


def check_source(source: str | os.PathLike | None = None) -> Path | None:
    """Check a CIFAR-10 data setting (default: :func:`default_source`) cheaply, before any work: it
    exists and has one of the accepted layouts, a tree has files under train/ and test/, a
    cifar-10-batches-py folder has its six batches, a tarball opens and lists images of both
    splits (its listing is read up to the first image of each; nothing is decoded). Returns the
    local path, or None where the data is downloaded. Raises a one-line
    :class:`DatasetUnavailable` naming ADVBOOK_DATA and the accepted layouts."""
    if source is None:
        source = default_source()
    kind, path = _layout(source)
    if kind == "tarball":
        _list_tarball(source, path)
    elif kind == "tree":
        for split in ("train", "test"):
            if next((f for f in (path / split).rglob("*") if f.is_file()), None) is None:
                raise _bad_setting(source, f"has no files under {split}/")
    elif kind == "torchvision":
        folder = path / "cifar-10-batches-py"
        missing = [n for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if not (folder / n).is_file()]
        if missing:
            raise _bad_setting(source, f"lacks {', '.join(missing)} in {folder}")
    return path


def _read_torchvision(root: Path, *, download: bool):
    from torchvision.datasets import CIFAR10

    out = {}
    for split, train in (("train", True), ("test", False)):
        ds = CIFAR10(root=str(root), train=train, download=download)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out[split] = (images, torch.tensor(ds.targets, dtype=torch.int64))
    return out


def _layout(source: str | os.PathLike | None) -> tuple[str, Path | None]:
    """(kind, path) of a data setting: download, tarball, torchvision or tree; the path must exist."""
    if source in (None, ""):
        return "download", None
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise _bad_setting(source, "does not exist")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise _bad_setting(source, "is a file but not a .tar.gz/.tgz/.tar archive")
        return "tarball", path
    if (path / "cifar-10-batches-py").is_dir() or path.name == "cifar-10-batches-py":
        return "torchvision", path.parent if path.name == "cifar-10-batches-py" else path
    if (path / "train").is_dir() and (path / "test").is_dir():
        return "tree", path
    raise _bad_setting(source, "is neither a cifar-10-batches-py folder nor an ImageFolder tree with train/ and "
                               "test/ sub-folders")


def _resolve_source(source: str | os.PathLike | None) -> tuple[str, str, Path | None]:
    """Return (kind, identity name, path) for a data setting."""
    kind, path = _layout(source)
    if kind == "tarball":
        name = "cifar10-jpeg75" if cache.sha256_file(path) == JPEG75_SHA256 else f"cifar10-imagefolder-{path.name}"
    else:
        name = f"cifar10-imagefolder-{path.name}" if kind == "tree" else "cifar10"
    return kind, name, path


def default_source() -> str | None:
    """``$ADVBOOK_DATA``, else the shared offline copy beside the repository, else None (download)."""
    if os.environ.get("ADVBOOK_DATA"):
        return os.environ["ADVBOOK_DATA"]
    beside = shared_dir() / "data" / "cifar10-jpeg.tar.gz"
    return str(beside) if beside.exists() else None


def cached_splits(stem: str, build) -> dict:
    """The decoded splits cached under ``data/<stem>.pt``; ``build()`` returns
    ``{"train": (images, labels), "test": (images, labels)}`` when the cache has none."""
    cached = cache.cache_dir("data") / f"{stem}.pt"
    if cached.exists():  # used only when it matches its .sha256 (a missing one: not verified, decode again)
        try:
            return cache.load_checkpoint(cached)
        except cache.CorruptCheckpoint as exc:
            warnings.warn(f"cached data {cached.name} is unusable ({' '.join(str(exc).split())}); decoding it again",
                          cache.RebuildWarning, stacklevel=2)
            cached.unlink(missing_ok=True)
    state = {f"{s}_{k}": t for s, (i, l) in build().items() for k, t in (("images", i), ("labels", l))}
    cache.save_checkpoint(cached, state)
    return state


def from_state(state: dict, *, name: str, path: Path | None, classes, mean, std) -> Dataset:
    """The :class:`Dataset` of splits returned by :func:`cached_splits`, with its checksum; ``path``
    is the local copy it came from (None: a torchvision download)."""
    train = Split(state["train_images"], state["train_labels"])
    test = Split(state["test_images"], state["test_labels"])
    return Dataset(name=name, source=str(path) if path else "torchvision download",
                   checksum=tensor_checksum(train.images, train.labels, test.images, test.labels),
                   classes=tuple(classes), mean=mean, std=std, train=train, test=test)


def load_cifar10(*, source: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 as uint8 tensors, decoded once and cached; ``source`` defaults to :func:`default_source`."""
    if source is None:
        source = default_source()
    kind, name, path = _resolve_source(source)
    stamp = (path.stat().st_size, path.stat().st_mtime_ns) if path is not None else None
    key = cache.stable_hash({"kind": kind, "name": name, "path": str(path), "stamp": stamp, "v": _DECODER_VERSION})
    def build():
        if kind == "download":
            root = cache.cache_dir("data/torchvision")
            try:
                return _read_torchvision(root, download=True)
            except DOWNLOAD_ERRORS as exc:  # no network, refused, truncated download (a bug is not caught)
                raise DatasetUnavailable(HOW_TO_PROVIDE.format(cache=root, why=_one_line(exc))) from exc
        check_source(path)  # the layout, before decoding anything
        if kind == "torchvision":
            return _read_torchvision(path, download=False)
        return _read_tarball(path) if kind == "tarball" else _read_tree(path)

    return from_state(cached_splits(f"{name}-{key}", build), name=name, path=path, classes=CIFAR10_CLASSES,
                      mean=CIFAR10_MEAN, std=CIFAR10_STD)


def synthetic(*, n_train: int = 200, n_test: int = 100, num_classes: int = 10, size: int = 8,
              noise: float = 0.15, seed: int = 0) -> Dataset:
    """A tiny learnable dataset for unit tests: one smooth colour pattern per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 3, size, size, generator=g)
    prototypes = torch.nn.functional.avg_pool2d(prototypes, 3, stride=1, padding=1, count_include_pad=False)

    def make(n: int) -> Split:
        labels = torch.arange(n) % num_classes
        x = prototypes[labels] + noise * torch.randn(n, 3, size, size, generator=g)
        return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    train, test = make(n_train), make(n_test)
    return Dataset(name=f"synthetic-{num_classes}c-{size}px-n{noise:g}-s{seed}", source="generated",
                   checksum=tensor_checksum(train.images, train.labels, test.images, test.labels),
                   classes=tuple(f"class{i}" for i in range(num_classes)),
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), train=train, test=test)


def balanced_subset(labels: torch.Tensor, *, n_per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``n_per_class`` samples drawn at random from every class."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if n_per_class > len(idx):
            raise ValueError(f"class {c} has {len(idx)} samples, fewer than n_per_class={n_per_class}")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:n_per_class]])
    return torch.sort(torch.cat(picks)).values

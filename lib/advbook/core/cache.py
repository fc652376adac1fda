"""The on-disk cache: where it lives, stable keys, atomic writes, safe checkpoints.

Everything expensive (decoded datasets, trained weights) lives under one folder,
``$ADVBOOK_CACHE`` or ``~/.cache/advbook``. Entries are keyed by a hash of everything
that determines their content, so two notebooks asking for the same thing share it.
Every write goes to a temporary file first and is renamed into place, so a run killed
midway never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = [
    "cache_dir", "stable_hash", "atomic_path", "write_json", "read_json",
    "sha256_file", "save_checkpoint", "load_checkpoint", "CorruptCheckpoint", "clear",
]


class CorruptCheckpoint(RuntimeError):
    """A cached file exists but cannot be read back, or its checksum does not match."""


def cache_dir(sub: str | None = None) -> Path:
    """The cache root (``$ADVBOOK_CACHE``, default ``~/.cache/advbook``), or a sub-folder of it."""
    root = Path(os.environ.get("ADVBOOK_CACHE") or Path.home() / ".cache" / "advbook").expanduser()
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, *, length: int = 16) -> str:
    """A short hex digest of a JSON-able object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, state: dict) -> str:
    """Save ``state`` atomically with ``torch.save``; return the file's sha256.

    The checksum is also written to ``<path>.sha256`` so a later load can detect a
    truncated or altered file.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    digest = sha256_file(path)
    with atomic_path(path.with_name(path.name + ".sha256")) as tmp:
        tmp.write_text(digest + "\n")
    return digest


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises :class:`CorruptCheckpoint` if the checksum does not match or the file cannot
    be unpickled; callers delete it and rebuild.
    """
    path = Path(path)
    sums = path.with_name(path.name + ".sha256")
    if sums.exists() and sums.read_text().strip() != sha256_file(path):
        raise CorruptCheckpoint(f"checksum mismatch for {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # any unpickling failure means the file is unusable
        raise CorruptCheckpoint(f"cannot read {path}: {exc}") from exc


def clear(sub: str | None = None) -> Path:
    """Delete the whole cache, or one sub-folder of it (``data``, ``models``, ``evals``)."""
    path = cache_dir(sub)
    shutil.rmtree(path)
    return path

"""The on-disk cache: where it lives, stable keys, atomic writes, safe checkpoints.

Everything expensive (decoded datasets, trained weights) lives under one folder,
``$ADVBOOK_CACHE`` or ``~/.cache/advbook``. Entries are keyed by a hash of everything
that determines their content, so two notebooks asking for the same thing share it.
Every write goes to a temporary file first and is renamed into place, so a run killed
midway never leaves a half-written file behind; the temporary files such a run leaves name
its process and are swept once it is gone (:func:`sweep_orphans`, run by the first
:func:`cache_dir` call of every process and by ``advbook cache info``).

Checkpoints are checksummed (``<file>.sha256``) and loaded with ``weights_only=True``; a file
that does not match its checksum, or has none (not verified), is refused and rebuilt. The
folder gets a ``.advbook-cache`` marker when advbook creates it, and :func:`clear` removes only
the sub-folders the cache writes (``data``, ``models``, ``evals``) of a marked folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = [
    "SUBFOLDERS", "MARKER", "NotACache", "cache_root", "cache_dir", "stable_hash", "atomic_path", "sweep_orphans",
    "sweep_cache", "write_json", "read_json", "sha256_file", "write_bytes", "save_checkpoint", "load_checkpoint",
    "CorruptCheckpoint", "RebuildWarning", "clear",
]


class CorruptCheckpoint(RuntimeError):
    """A cached file exists but cannot be read back, or its checksum does not match."""


class RebuildWarning(UserWarning):
    """A cached entry was unusable (corrupt, unverified, incompatible) and is rebuilt."""


SUBFOLDERS = ("data", "models", "evals")  # all the cache ever writes lives under these
MARKER = ".advbook-cache"  # written into the cache folder when advbook creates it
_SWEPT: set[Path] = set()


class NotACache(RuntimeError):
    """The cache folder was not created by advbook (no marker), so it is never cleared."""


def cache_root() -> Path:
    """The cache folder, ``$ADVBOOK_CACHE`` or ``~/.cache/advbook`` (not created here)."""
    return Path(os.environ.get("ADVBOOK_CACHE") or Path.home() / ".cache" / "advbook").expanduser()


def _claim(root: Path) -> None:
    """Create ``root`` with its marker; a folder that already holds other files is used but not marked."""
    if (root / MARKER).exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    if all(p.name == MARKER for p in root.iterdir()):
        (root / MARKER).write_text("advbook cache: `advbook cache clear` removes only "
                                   f"{', '.join(s + '/' for s in SUBFOLDERS)} here\n")


def cache_dir(sub: str | None = None) -> Path:
    """The cache root (``$ADVBOOK_CACHE``, default ``~/.cache/advbook``), or a sub-folder of it
    under one of :data:`SUBFOLDERS`. A new (or empty) root gets the :data:`MARKER` file."""
    if sub is not None and Path(sub).parts[:1] not in [(s,) for s in SUBFOLDERS]:
        raise ValueError(f"cache sub-folder {sub!r} must lie under one of {', '.join(SUBFOLDERS)}")
    root = cache_root()
    _claim(root)
    if root not in _SWEPT:  # once per process and folder: what killed runs left behind
        _SWEPT.add(root)
        sweep_cache()
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, *, length: int = 16) -> str:
    """A short hex digest of a JSON-able object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is ``.<name>.<pid>.<random>.tmp``: a process killed midway leaves it
    behind, and :func:`sweep_orphans` removes it once that process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    umask = os.umask(0)  # mkstemp makes 0600 files; the result gets the mode any other new file would
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$")  # atomic_path's, naming its process
_UNNAMED_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")       # older temp files, no process id
_PARTIAL = re.compile(r"^\..+\.partial\.ipynb$")                 # papermill's unfinished executions


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_orphan(path: Path, *, now: float, stale_after: float) -> bool:
    match = _TEMP.match(path.name)
    if not (match or _UNNAMED_TEMP.match(path.name) or _PARTIAL.match(path.name)):
        return False
    try:
        stale = now - path.stat().st_mtime > stale_after
    except FileNotFoundError:  # its writer renamed or removed it meanwhile
        return False
    return stale or (match is not None and not _alive(int(match["pid"])))


def sweep_orphans(folder: str | os.PathLike, *, stale_after: float = 3600.0) -> list[Path]:
    """Remove the temporary files that killed runs left under ``folder``; return them.

    Removed: :func:`atomic_path` temp files whose process no longer runs (on this machine), and
    any such temp file or papermill ``.<notebook>.partial.ipynb`` untouched for ``stale_after``
    seconds (those name no process). Files of live writers and all other files are kept.
    """
    now, removed = time.time(), []
    for path in sorted(Path(folder).rglob(".*")):
        if path.is_file() and _is_orphan(path, now=now, stale_after=stale_after):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def sweep_cache() -> list[Path]:
    """:func:`sweep_orphans` over the cache's sub-folders (a killed decode can leave 100+ MiB)."""
    root = cache_root()
    return [p for sub in SUBFOLDERS if (root / sub).is_dir() for p in sweep_orphans(root / sub)]


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


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def save_checkpoint(path: str | os.PathLike, state: dict) -> str:
    """Save ``state`` atomically with ``torch.save``; return the file's sha256.

    The bytes are made in memory (``torch.save`` to a buffer records no file name), so equal
    states give equal files and equal checksums wherever they are saved. The checksum is also
    written to ``<path>.sha256`` so that a later load can detect a truncated or altered file.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    write_bytes(path, data)
    write_bytes(path.with_name(path.name + ".sha256"), (digest + "\n").encode())
    return digest


def _sha256_stream(f) -> str:
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", sha256: str | None = None) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    The file must match its ``<path>.sha256`` (and ``sha256`` when given). A file without that
    checksum file is *not verified* and is refused like a corrupt one: a truncated or bit-flipped
    checkpoint may still unpickle, and nothing else can tell it from the real one. Raises
    :class:`CorruptCheckpoint`; callers delete the file and rebuild it.
    """
    path = Path(path)
    sums = path.with_name(path.name + ".sha256")
    if not sums.exists():
        raise CorruptCheckpoint(f"{path} has no checksum file {sums.name}: not verified")
    expected = {sums.read_text().strip()} | ({sha256} if sha256 is not None else set())
    with open(path, "rb") as f:  # hash and load the same open file, even if it is replaced meanwhile
        actual = _sha256_stream(f)
        if expected != {actual}:
            raise CorruptCheckpoint(f"checksum mismatch for {path}")
        f.seek(0)
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except Exception as exc:  # any unpickling failure means the file is unusable
            raise CorruptCheckpoint(f"cannot read {path}: {exc}") from exc


def clear(sub: str | None = None) -> list[Path]:
    """Delete what the cache created: its sub-folders (``data``, ``models``, ``evals``) or one of
    them, never anything else in the folder. Returns the folders removed.

    Raises :class:`NotACache` when the folder lacks the marker advbook writes when creating it.
    """
    if sub is not None and sub not in SUBFOLDERS:
        raise ValueError(f"cache part {sub!r} must be one of {', '.join(SUBFOLDERS)}")
    root = cache_root()
    if not (root / MARKER).is_file():
        raise NotACache(f"{root} has no {MARKER} marker, so advbook did not create it: not clearing it "
                        "(delete what you want by hand)")
    removed = []
    for name in SUBFOLDERS if sub is None else (sub,):
        if (root / name).is_dir():
            shutil.rmtree(root / name)
            removed.append(root / name)
    return removed

"""The book's data files, one per kind, each with a folder of per-chapter parts beside it.

``profiles.toml``, ``claims.toml`` and ``paper_results.toml`` hold the first chapters' entries; a
chapter added later puts its own in ``<kind>.d/<chapter>.toml`` (``profiles.d/lec.toml``), so that
chapters are written and reviewed apart. :func:`load` reads the file and its parts in name order:
tables merge, and a name defined twice fails with the name and both files; arrays of tables (the
``[[claim]]`` entries) are concatenated.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

__all__ = ["load", "parts"]

HERE = Path(__file__).parent


def parts(kind: str, *, folder: Path = HERE) -> list[Path]:
    """The files of ``kind``: ``<kind>.toml`` first, then ``<kind>.d/*.toml`` by name."""
    return [folder / f"{kind}.toml", *sorted((folder / f"{kind}.d").glob("*.toml"))]


def load(kind: str, *, folder: Path = HERE) -> dict:
    """``kind``'s file and its parts, merged (see the module docstring)."""
    out: dict = {}
    origin: dict[str, Path] = {}
    for path in parts(kind, folder=folder):
        with open(path, "rb") as f:
            table = tomllib.load(f)
        for key, value in table.items():
            if isinstance(value, list) and isinstance(out.get(key, []), list):
                out.setdefault(key, []).extend(value)
            elif key in out:
                raise ValueError(f"{key!r} is defined twice: in {origin[key].name} and {path.relative_to(folder)}")
            else:
                out[key] = value
            origin.setdefault(key, path)
    return out

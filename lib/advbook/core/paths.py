"""Where the repository and its neighbours are."""
from __future__ import annotations

from pathlib import Path

__all__ = ["repo_root", "shared_dir"]


def repo_root() -> Path:
    """The repository root (the folder holding ``_toc.yml``), or the working directory."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "_toc.yml").exists():
            return parent
    return Path.cwd()


def shared_dir() -> Path:
    """``../shared`` beside the repository (the project's offline data and papers)."""
    return repo_root().parent / "shared"

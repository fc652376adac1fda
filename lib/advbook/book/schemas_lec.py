"""The parameters of the LEC chapter's pages (the lecture on attacks and defenses).

Each page's values per profile are in ``profiles.d/lec.toml``, its claims in ``claims.d/lec.toml``.
"""
from __future__ import annotations

from advbook.book.param import COMMON, TRAIN, Param

__all__ = ["SCHEMAS"]

SCHEMAS: dict[str, dict[str, Param]] = {}

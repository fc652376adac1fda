"""The result of a black-box attack: an :class:`~advbook.attacks.core.AttackResult` plus, per sample, the
number of queries it spent (one query = one image through the model)."""
from __future__ import annotations

import dataclasses

import torch

from advbook.attacks.core import AttackResult

__all__ = ["QueryResult", "with_queries"]


@dataclasses.dataclass
class QueryResult(AttackResult):
    """``core.run_batched`` would drop ``queries`` (it joins with ``AttackResult.cat``): join with
    ``QueryResult.cat``."""
    queries: torch.Tensor  # int64 per sample

    @staticmethod
    def cat(parts: list["QueryResult"]) -> "QueryResult":
        return QueryResult(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(QueryResult)))


def with_queries(result: AttackResult, queries: torch.Tensor) -> QueryResult:
    """``result`` with the per-sample ``queries`` attached."""
    return QueryResult(**{f.name: getattr(result, f.name) for f in dataclasses.fields(AttackResult)}, queries=queries)

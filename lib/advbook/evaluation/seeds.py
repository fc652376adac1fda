"""Several seeds of trained defenses evaluated on the same test images."""
from __future__ import annotations

import pandas as pd
import torch

from advbook.evaluation import compare

__all__ = ["evaluate_seeds"]


def evaluate_seeds(trained: dict[int, dict], *, names: list[str], x: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor, attacks: dict, batch_size: int,
                   unit: str = "defense") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`compare.evaluate_models` for the models ``names`` of every seed of ``trained``
    (seed -> name -> TrainedModel). Returns (accuracy rows, per-sample flags, seconds), each with a
    ``seed`` column and the model name in a ``unit`` column."""
    parts = [compare.evaluate_models({n: models[n] for n in names if n in models}, x=x, y=y, index=index,
                                     attacks=attacks, batch_size=batch_size, seed=seed)
             for seed, models in trained.items()]
    return tuple(pd.concat(p, ignore_index=True).rename(columns={"model": unit}) for p in zip(*parts))

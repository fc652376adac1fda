"""Verdicts: how a page decides whether the reproduced numbers support a paper's claim.

One rule, used by every VIR page. An accuracy measured on ``n`` images has a standard error of at
most ``100 * sqrt(0.25 / n)`` points (the binomial worst case, p = 0.5). A claim "A beats the rest
under evaluations E" is checked by A's margin over the best of the rest under each evaluation; a
margin decides only when it exceeds two standard errors. With several seeds the margins are between
seed means, so the rule stays conservative.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd


__all__ = ["max_standard_error", "judge", "margin", "seeds_label"]


def max_standard_error(n: int) -> float:
    """The largest standard error, in percentage points, of an accuracy measured on ``n`` images."""
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    return 100 * math.sqrt(0.25 / n)


def judge(gaps: Sequence[float], *, noise: float) -> str:
    """Verdict on a claim from the claimed winner's margin per evaluation, in points (negative: the
    claim fails there; NaN: not measured). ``noise`` is one standard error.

    "holds": every margin is positive and beyond 2 * noise; "does not hold": every margin is
    negative and beyond it; "partly holds": every margin is beyond it, with both signs;
    otherwise "inconclusive", saying how many margins are within the noise."""
    if not len(gaps):
        raise ValueError("judge needs at least one margin")
    holds = sum(g > 0 for g in gaps)
    decisive = sum(abs(g) > 2 * noise for g in gaps)   # NaN compares False: never decisive
    if decisive < len(gaps):
        return f"inconclusive: {len(gaps) - decisive} of {len(gaps)} gaps are within two standard errors"
    if holds == len(gaps):
        return "holds"
    if holds == 0:
        return "does not hold"
    return "partly holds"


def margin(mean: pd.DataFrame, winner: str, others: Iterable[str], evaluation: str) -> float:
    """``winner``'s accuracy minus the best of ``others`` (``winner`` itself excluded) under
    ``evaluation``; ``mean`` has one row per model and one column per evaluation. NaN where the
    winner or every other model is missing."""
    rest = [m for m in others if m in mean.index and m != winner]
    if winner not in mean.index or not rest or evaluation not in mean.columns:
        return math.nan
    return float(mean.loc[winner, evaluation] - mean.loc[rest, evaluation].max())


def seeds_label(n_seeds: int) -> str:
    """"1 seed", "4 seeds"."""
    return f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"

"""The registry the training loop reads: every chapter's objectives, merged and checked.

Each chapter's module defines its objectives and an ``OBJECTIVES`` dict of its own, importing the
shared machinery from :mod:`advbook.training.framework` (and, where it reuses one, a method of
:mod:`advbook.training.objectives`); this module is the only one that imports them all. A name
defined twice is an error, so one chapter cannot silently replace another's method.
"""
from __future__ import annotations

from advbook.training import agk, agk_baselines, lecture, objectives, rrm
from advbook.training.framework import Objective, check_registry, hyper_keywords, keywords

__all__ = ["OBJECTIVES", "base_hyper", "merge"]


def merge(*registries: dict[str, Objective]) -> dict[str, Objective]:
    """One registry from several; a name in two of them fails with the name."""
    out: dict[str, Objective] = {}
    for reg in registries:
        twice = sorted(set(out) & set(reg))
        if twice:
            raise ValueError(f"objective(s) registered twice: {', '.join(twice)}")
        out.update(reg)
    check_registry(out)
    return out


OBJECTIVES: dict[str, Objective] = merge(objectives.OBJECTIVES, lecture.OBJECTIVES, rrm.OBJECTIVES,
                                         agk.OBJECTIVES, agk_baselines.OBJECTIVES)


def base_hyper(objective: str, hyper):
    """The configuration of ``objective``'s base made of ``hyper``'s fields with the same keywords
    (VIR-AT's attack settings for PGD-AT; VIR-TRADES' attack and ``trades_beta`` for TRADES)."""
    base = OBJECTIVES[OBJECTIVES[objective].base].config
    flat = hyper_keywords(hyper)
    return base(**{name: flat[k] for k, name in keywords(base).items()})

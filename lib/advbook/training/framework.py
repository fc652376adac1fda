"""The machinery every training objective shares: the step context, the registry entry, the
keyword fields of a configuration, and the check the training loop relies on.

Objectives live in :mod:`advbook.training.objectives` (HOL and VIR) and in one module per further
chapter, each defining its own ``OBJECTIVES`` dict; ``objectives.OBJECTIVES`` merges them and
checks the result with :func:`check_registry`. A chapter's module imports from here, never from
another chapter's module, so adding one touches no other.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import torch

__all__ = ["StepContext", "Objective", "in_eval_mode", "kw_field", "keywords", "hyper_keywords", "check_registry"]


@contextlib.contextmanager
def in_eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode, then give every submodule back the mode it had
    (train or eval), even if the block raises: an objective's attack must not change the mode
    the training loop (or a test) set."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@dataclasses.dataclass(frozen=True)
class StepContext:
    seed: int                               # for the objective's own randomness (attack starts)
    epoch: int                              # 0-based
    index: torch.Tensor                     # the batch's positions in the training split
    teacher: torch.nn.Module | None = None  # eval mode, same device as the batch
    # What an objective carries from one call to the next within an epoch (Free AT's persistent
    # perturbation): the loop gives every batch of an epoch the same dict, and a new one each epoch,
    # so a run resumed from an epoch's checkpoint is bit-identical to an uninterrupted one.
    state: dict = dataclasses.field(default_factory=dict)
    # What an objective carries across epochs (CAT's per-sample budgets, keyed by ``index``): one dict
    # for the whole run, whose tensors the loop saves in every epoch's checkpoint and restores on
    # resume, so a resumed run is bit-identical too. Objectives that need none leave it empty, and an
    # empty one is not saved (their checkpoints stay as they were).
    run_state: dict = dataclasses.field(default_factory=dict)


def kw_field(keyword: str, default: Any, *, init: bool = True, keyed_when_set: bool = False):
    """A configuration field whose keyword (flat name, see the module docstring) is ``keyword``;
    ``init=False``: a fixed property of the method, in the key but not a setting.
    ``keyed_when_set=True``: in the cache key only when it differs from ``default`` - for a setting
    added to an objective after models were cached, whose default is what those models ran, so their
    keys stay valid (AGKD's ``agk_attention``)."""
    metadata = {"keyword": keyword} | ({"keyed_when_set": True} if keyed_when_set else {})
    return dataclasses.field(default=default, init=init, metadata=metadata)


def keywords(config: type) -> dict[str, str]:
    """The settings of a configuration class: keyword -> field name (fixed fields left out)."""
    return {f.metadata["keyword"]: f.name for f in dataclasses.fields(config) if f.init}


def hyper_keywords(hyper) -> dict[str, Any]:
    """Every field of a configuration (fixed ones too) by its keyword: its part of the cache key. A
    ``keyed_when_set`` field at its default is left out (see :func:`kw_field`)."""
    return {f.metadata["keyword"]: getattr(hyper, f.name) for f in dataclasses.fields(hyper)
            if not (f.metadata.get("keyed_when_set") and getattr(hyper, f.name) == f.default)}


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: Callable
    config: type                   # its frozen configuration class: TrainConfig.hyper is one
    needs_teacher: bool = False
    base: str | None = None        # objective run during the burn-in (epochs < hyper.reweight_from)
    match_features: bool = False   # the student's features get the teacher's dimension (RRM's cosine)
    init_from_teacher: bool = False  # the student starts from the teacher's weights (AGKD-BML's --nat_init)

    @property
    def keywords(self) -> tuple[str, ...]:
        """The keywords of its settings, in field order."""
        return tuple(keywords(self.config))


def check_registry(objectives: dict[str, Objective]) -> None:
    """What the loop relies on: an objective that starts from its teacher needs one, every
    configuration is a frozen dataclass whose fields all have a keyword, a base is registered and has
    no base itself, and a reweighting configuration has
    ``reweight_from`` and every setting of its base's (so a burn-in never falls back on a default
    of the base)."""
    for name, o in objectives.items():
        if o.init_from_teacher and not o.needs_teacher:
            raise ValueError(f"objective {name!r}: init_from_teacher needs needs_teacher (the teacher it starts from)")
        params = getattr(o.config, "__dataclass_params__", None)
        if params is None or not params.frozen or any("keyword" not in f.metadata
                                                      for f in dataclasses.fields(o.config)):
            raise ValueError(f"objective {name!r}: its config must be a frozen dataclass of keyword fields (kw_field)")
        if o.base is None:
            continue
        if o.base not in objectives or objectives[o.base].base is not None:
            raise ValueError(f"objective {name!r}: base {o.base!r} must be a registered objective without a base")
        missing = ({"reweight_from"} | set(keywords(objectives[o.base].config))) - set(hyper_keywords(o.config()))
        if missing:
            raise ValueError(f"objective {name!r}: {o.config.__name__} lacks {', '.join(sorted(missing))}, "
                             f"needed for the burn-in with its base {o.base!r}")

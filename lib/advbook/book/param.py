"""A parameter of a page: its type, range or choices and help, and how a value is read and checked.

Kept apart from :mod:`advbook.book.schemas` so that each chapter's schema module
(``schemas_<chapter>.py``) can define its parameters with :class:`Param` and the shared groups
(:data:`COMMON`, :data:`TRAIN`, :data:`ATTACK`) without importing the registry of all of them.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

__all__ = ["Param", "ParameterError", "parse_value", "COMMON", "TRAIN", "ATTACK"]


def _registry(ref: str) -> tuple[str, ...]:
    module, attr = ref.split(":")
    return tuple(getattr(importlib.import_module(module), attr))


class ParameterError(ValueError):
    """A parameter name, type or value is not valid; the message lists what is."""


@dataclasses.dataclass(frozen=True)
class Param:
    kind: type                      # int, float, str, bool or list (of str choices, or of ``item``)
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | str | None = None   # a tuple, or "module:REGISTRY" looked up when needed
    item: type | None = None        # for a list of numbers: int or float, each within [low, high]
    exclude: tuple[str, ...] = ()   # registry entries that are not valid here
    extra: tuple[str, ...] = ()     # values valid besides the registry's

    def valid_choices(self) -> tuple[str, ...] | None:
        """The allowed values (a registry reference is resolved here, not at import time)."""
        if self.choices is None or isinstance(self.choices, tuple):
            return self.choices
        return self.extra + tuple(c for c in _registry(self.choices) if c not in self.exclude)

    def valid(self) -> str:
        """What is valid, in words (the end of every error message about this parameter)."""
        if self.kind is bool:
            return "true or false"
        if self.choices is not None:
            listed = ", ".join(self.valid_choices())
            return f"comma-separated items of: {listed}" if self.kind is list else f"one of: {listed}"
        kind = self.item if self.kind is list else self.kind
        what = "integer" if kind is int else "number"
        span = f" in [{_num(self.low)}, {_num(self.high)}]" if self.low is not None else ""
        return f"comma-separated {what}s{span}" if self.kind is list else f"{'an' if kind is int else 'a'} {what}{span}"

    def check(self, name: str, value: Any) -> Any:
        """``value`` (or its command-line text) as this parameter's type if it is valid on its own;
        else a one-line :class:`ParameterError` naming ``name`` and what is valid."""
        if self.kind is list:
            return self._check_list(name, value)
        if isinstance(value, str) and self.kind is not str:
            value = self._parse(name, value, self.kind)
        return self._check_one(name, value, self.kind)

    def _parse(self, name: str, text: str, kind: type) -> Any:
        try:
            return parse_value(text, kind, name=name)
        except ParameterError as exc:
            raise ParameterError(f"{exc}; valid: {self.valid()}") from None

    def _check_one(self, name: str, value: Any, kind: type) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ParameterError(f"{name}={value!r} must be of type {kind.__name__}; valid: {self.valid()}")
        if kind is float and not math.isfinite(value):
            raise ParameterError(f"{name}={value!r} is not a finite number; valid: {self.valid()}")
        choices = self.valid_choices()
        if choices is not None and value not in choices:
            raise ParameterError(f"{name}={value!r} is not one of: {', '.join(choices)}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ParameterError(f"{name}={value!r} is out of range [{_num(self.low)}, {_num(self.high)}]")
        return value

    def _check_list(self, name: str, value: Any) -> list:
        given = value
        if isinstance(value, str):
            value = parse_value(value, list, name=name)
        else:
            value = list(value) if isinstance(value, (list, tuple)) else [value]
        if not value:
            raise ParameterError(f"{name}={given!r} lists nothing; valid: {self.valid()}")
        if self.item is None:
            choices = self.valid_choices()
            if any(not isinstance(v, str) or v not in choices for v in value):
                raise ParameterError(f"{name}={value!r}: each item must be one of {', '.join(choices)}")
        else:
            value = [self._check_one(name, self._parse(name, v, self.item) if isinstance(v, str) else v, self.item)
                     for v in value]
        if len(set(value)) < len(value):
            raise ParameterError(f"{name}={value!r} must name each item once")
        return value


def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def parse_value(text: str, kind: type, *, name: str = "value") -> Any:
    """Parse a command-line value: ints, finite floats (also fractions like ``8/255``), bools
    (true/false, yes/no, 1/0), comma-separated lists. An unreadable text raises a one-line
    :class:`ParameterError` that starts with ``name=text``."""
    shown, text = text, text.strip()
    if kind is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ParameterError(f"{name}={shown!r} cannot be read as true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ParameterError(f"{name}={shown!r} cannot be read as an integer") from None
    if kind is float:
        try:
            num, den = text.split("/") if "/" in text else (text, "1")
            value = float(num) / float(den)
        except ZeroDivisionError:
            raise ParameterError(f"{name}={shown!r} divides by zero") from None
        except ValueError:  # not a number, or more than one "/"
            raise ParameterError(f"{name}={shown!r} cannot be read as a number") from None
        if not math.isfinite(value):
            raise ParameterError(f"{name}={shown!r} is not a finite number")
        return value
    if kind is list:
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


COMMON = {
    "dataset": Param(str, "dataset name", choices="advbook.data.registry:DATASETS"),
    "model": Param(str, "architecture", choices="advbook.models.zoo:MODELS"),
    "seed": Param(int, "seed for weights, subsets and attacks", 0, 2**31 - 1),
    "device": Param(str, "where to compute", choices=("auto", "cpu", "cuda")),
}
ATTACK = {  # how the sample-level attacks run (HOL §4, §7–8)
    "step_size": Param(float, "PGD step size", 1e-6, 100.0),
    "pgd_steps": Param(int, "PGD iterations at most", 1, 10000),
    "deepfool_steps": Param(int, "DeepFool iterations at most", 1, 10000),
    "overshoot": Param(float, "DeepFool overshoot", 0.0, 1.0),
    "attack_batch_size": Param(int, "images per attack batch", 1, 10000),
}
TRAIN = {
    "train_per_class": Param(int, "training images per class", 1, 5000),
    "epochs": Param(int, "training epochs", 1, 1000),
    "batch_size": Param(int, "training batch size", 1, 4096),
    "lr": Param(float, "peak learning rate", 1e-6, 10.0),
    "weight_decay": Param(float, "weight decay", 0.0, 1.0),
}

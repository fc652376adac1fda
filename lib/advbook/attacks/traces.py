"""What an iterative attack does between its start and its end: per-iteration traces of PGD and DeepFool.

:func:`~advbook.attacks.core.pgd` and :func:`~advbook.attacks.core.deepfool` return where each sample
ended and when it first flipped; the teaching figures of the LEC chapter (LEC-F4, LEC-F5) also need
the path. Both functions here run the *same* computation and only watch it:

* :func:`pgd_trace` is L-inf PGD on the cross-entropy exactly as ``core.pgd(..., stop_on_success=False)``
  (every sample runs all ``steps``; random start from the same seeded generator), written with
  :func:`~advbook.attacks.core.sign_ascent`, whose ``observe`` hook sees every iterate's logits. It
  returns the per-sample loss and correctness at iterates 0 (the start) to ``steps`` (the end); the
  last iterate is bit-identical to ``core.pgd``'s ``x_adv`` (tests/test_pages_lec_whitebox.py). With a
  fixed step size, the first ``t`` steps of a ``K``-step run *are* a ``t``-step run, so one trace gives
  the accuracy after every number of steps up to ``K``.
* :func:`deepfool_trace` runs ``core.deepfool`` itself on a model wrapped to record each forward call
  (inputs and logits), and reads the iterates back: deepfool's first call scores the clean batch, and
  each later call scores the samples still correctly classified, in index order. The reading is
  checked against deepfool's own result (the last iterate of each sample must be its ``x_adv``) and
  raises if deepfool's calls ever stop following that pattern.

Device and dtype come from ``x``; the model must be in eval mode (as for every attack here).
"""
from __future__ import annotations

import dataclasses

import pandas as pd
import torch
import torch.nn.functional as F

from advbook.attacks.core import AttackResult, _check_inputs, deepfool, linf_start, margin, sign_ascent

__all__ = ["PGDTrace", "pgd_trace", "deepfool_trace"]


@dataclasses.dataclass
class PGDTrace:
    loss: torch.Tensor       # (steps + 1, N): cross-entropy of the true label at iterates 0..steps
    correct: torch.Tensor    # (steps + 1, N) bool: the iterate is classified as the true label
    x_adv: torch.Tensor      # (N, ...): the last iterate, core.pgd's x_adv


def pgd_trace(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
              steps: int, random_start: bool = True, seed: int = 0) -> PGDTrace:
    """L-inf PGD on the summed cross-entropy from a random start (seeded like ``core.pgd``) or from
    ``x``, all ``steps`` steps for every sample, with the per-sample loss and correctness of every
    iterate (row 0: the start point)."""
    _check_inputs(x, y)
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not eps > 0 or not step_size > 0:
        raise ValueError(f"eps and step_size must be > 0, got {eps!r} and {step_size!r}")
    y = y.to(x.device)
    generator = torch.Generator(device=x.device).manual_seed(seed) if random_start else None
    start = linf_start(x, eps=eps, generator=generator) if random_start else x.clone()
    losses, correct = [], []

    def observe(logits: torch.Tensor) -> None:
        losses.append(F.cross_entropy(logits.detach(), y, reduction="none"))
        correct.append(logits.detach().argmax(1) == y)

    x_adv = sign_ascent(model, x, x_start=start, eps=eps, step_size=step_size, steps=steps, observe=observe,
                        objective=lambda logits: F.cross_entropy(logits, y, reduction="sum"))
    with torch.no_grad():
        observe(model(x_adv))
    return PGDTrace(torch.stack(losses), torch.stack(correct), x_adv)


class _Recorder(torch.nn.Module):
    """The model, with a copy of every forward call's input and logits kept (no graph)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.calls.append((x.detach().clone(), out.detach().clone()))
        return out


def deepfool_trace(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 50,
                   overshoot: float = 0.02, candidates: int | None = None) -> tuple[AttackResult, pd.DataFrame]:
    """``core.deepfool`` with the same settings, and its path: one row per sample (``sample``, the
    position in ``x``) and iterate (``iteration``, 0 = the clean input) with the L2 norm of the
    perturbation so far (``l2``), the logit margin ``z_y - max_{j != y} z_j`` there (``margin``,
    negative once the sample is misclassified) and the predicted class (``pred``). A sample's
    rows end at its first misclassified iterate, or after ``steps`` iterations."""
    recorder = _Recorder(model)
    result = deepfool(recorder, x, y, steps=steps, overshoot=overshoot, candidates=candidates)
    y = y.to(x.device)
    active = torch.arange(len(x), device=x.device)
    rows = []
    for t, (inputs, logits) in enumerate(recorder.calls[1:]):
        if len(inputs) != len(active):
            raise RuntimeError(f"deepfool scored {len(inputs)} samples at iteration {t}, {len(active)} were still "
                               "correct: its calls no longer follow the pattern deepfool_trace reads")
        m = margin(logits, y[active])
        l2 = (inputs - x[active]).flatten(1).norm(dim=1)
        pred = logits.argmax(1)
        rows.append(pd.DataFrame({"sample": active.cpu().numpy(), "iteration": t, "l2": l2.cpu().numpy(),
                                  "margin": m.cpu().numpy(), "pred": pred.cpu().numpy()}))
        fooled = pred != y[active]
        if fooled.any() and not torch.equal(inputs[fooled], result.x_adv[active[fooled]]):
            raise RuntimeError("deepfool_trace read an iterate that is not deepfool's result")
        active = active[~fooled]
    path = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["sample", "iteration", "l2", "margin", "pred"])
    return result, path.sort_values(["sample", "iteration"], ignore_index=True)

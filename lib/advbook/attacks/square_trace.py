"""Square attack's progress against its query budget: pyautoattack's SquareAttack, run at growing budgets.

Square (Andriushchenko et al., ECCV 2020) is a query-based random local search: each iteration
proposes a change of ±2·eps on a random square window of the current best point, projected on the
L-inf ball and [0, 1], and keeps it if the margin loss drops. The book evaluates it through
``pyautoattack``; this module reuses that implementation (no Square of our own) to draw how the best
margin and the success rate evolve with the number of queries.

How it is run (the settings of :func:`advbook.evaluation.evaluate._square`): L-inf, one restart,
``p_init`` 0.8, the margin loss, ``resc_schedule=False`` (the window schedule then depends on the
iteration only, not on the budget). As ``SquareAttack.perturb`` does, the global RNG is seeded with
``seed`` and only the samples the model classifies as ``y`` are attacked; we call its
``attack_single_run`` so that the best point found so far comes back even when it does not fool the
model (``perturb`` returns only successes), and we run it inside ``torch.random.fork_rng`` so the
caller's global RNG state is left as it was.

With a fixed seed a run with budget q is the first q iterations of any longer run (same draws, same
decisions), so the trace at budgets q_1 < q_2 < ... is one attack observed at those points. The cost
is the sum of the budgets; the largest run alone gives each sample's query count to success.

* ``budgets``: pyautoattack's ``n_queries``, the number of iterations; a run makes one query per
  iteration per sample still unbroken, plus one for the initial vertical-stripe point.
* ``margin`` (len(budgets), N): the margin Z_y − max_{j≠y} Z_j of the best point at each budget
  (negative = broken; for a sample misclassified from the start, its clean margin).
* ``success`` (len(budgets), N): the best point is misclassified (its argmax is not ``y``).
* ``queries`` (N,): from the largest run, the model evaluations until success (the initial point
  counts 1), or all it spent if it never succeeded; 0 for a sample misclassified from the start.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from advbook.attacks.core import _check_inputs, margin

__all__ = ["SquareTrace", "square_trace"]


@dataclasses.dataclass
class SquareTrace:
    budgets: list[int]
    margin: torch.Tensor    # (len(budgets), N)
    success: torch.Tensor   # (len(budgets), N) bool
    queries: torch.Tensor   # (N,) int64, from the largest budget
    x_adv: torch.Tensor     # the largest budget's best points


def _run(model, x, y, *, eps: float, n_queries: int, seed: int, p_init: float):
    from pyautoattack.square import SquareAttack

    attack = SquareAttack(model, p_init=p_init, n_queries=n_queries, eps=eps, norm="Linf", n_restarts=1,
                          seed=seed, verbose=False, device=x.device, resc_schedule=False)
    attack.init_hyperparam(x)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.manual_seed(seed)
        if devices:
            torch.cuda.random.manual_seed(seed)
        used, best = attack.attack_single_run(x, y)
    return used.long(), best


@torch.no_grad()
def square_trace(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, budgets: Sequence[int],
                 seed: int = 0, p_init: float = 0.8) -> SquareTrace:
    """Best margin and success of pyautoattack's L-inf Square at each of ``budgets`` (see the module docstring)."""
    _check_inputs(x, y)
    budgets = [int(b) for b in budgets]
    if not budgets or any(b < 1 for b in budgets) or budgets != sorted(set(budgets)):
        raise ValueError(f"budgets must be increasing integers >= 1, got {budgets}")
    if not 0 < eps <= 1 or not 0 < p_init <= 1:
        raise ValueError(f"need 0 < eps <= 1 and 0 < p_init <= 1; got eps={eps}, p_init={p_init}")
    logits = model(x)
    attacked = (logits.argmax(1) == y).nonzero().flatten()
    margins, fooled = [], []
    queries, x_adv = torch.zeros(len(x), dtype=torch.long, device=x.device), x.clone()
    for b in budgets:
        m, f = margin(logits, y), logits.argmax(1) != y
        if len(attacked):
            used, best = _run(model, x[attacked], y[attacked], eps=eps, n_queries=b, seed=seed, p_init=p_init)
            out = model(best)
            m[attacked], f[attacked] = margin(out, y[attacked]), out.argmax(1) != y[attacked]
            if b == budgets[-1]:
                queries[attacked], x_adv[attacked] = used, best
        margins.append(m)
        fooled.append(f)
    return SquareTrace(budgets=budgets, margin=torch.stack(margins), success=torch.stack(fooled), queries=queries,
                       x_adv=x_adv)

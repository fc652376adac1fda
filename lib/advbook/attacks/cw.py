"""C&W-L2: the Carlini & Wagner (2017) L2 attack, a minimum-norm attack by optimisation.

**Not the evaluation suite's ``cw``.** :mod:`advbook.evaluation.evaluate` has an evaluation named
``cw``: L-inf PGD on the CW *margin loss* inside a fixed ``eps``-ball (as GAIRAT and MAIL evaluate).
This module is the original attack, called C&W-L2 (``cw_l2``) everywhere in the book: no ``eps``,
it searches for the *smallest* L2 perturbation that changes the decision.

Per sample it solves ``min_w ||x' - x||_2^2 + c * f(x')`` with the change of variables
``x' = (tanh(w) + 1) / 2`` (LEC §C&W: ``x'`` lies in [0, 1] for every real ``w``, so Adam needs no
box constraint), and

* untargeted, with true label ``y``: ``f(x') = max(Z_y - max_{j != y} Z_j, -kappa)``;
* targeted, with class ``t``:        ``f(x') = max(max_{j != t} Z_j - Z_t, -kappa)``,

``Z`` the logits. ``f <= 0`` exactly when the decision is the wanted one with a logit margin of at
least ``kappa`` (the confidence): a larger ``kappa`` buys a more confident example at a larger
distance (the trade-off of LEC-F6). The implementation minimises ``max(... + kappa, 0)``, as the
reference code does: the same function shifted by ``kappa``, the same minimiser.

The constant ``c`` is found per sample by the paper's search: start at ``initial_const``; after a
stage of ``steps`` Adam iterations (learning rate ``lr``, from ``w`` at the clean image, the Adam
state reset), a sample that reached ``f <= 0`` lowers its upper bound to ``c``, one that did not
raises its lower bound; the next ``c`` is the bisection of the bounds, or ``10 c`` while no upper
bound exists; ``binary_steps`` stages in all. Every iterate with ``f <= 0`` is a candidate, and
each sample keeps the one closest to ``x`` in L2 over all stages.

Details taken from the reference code (carlini/nn_robust_attacks ``l2_attack.py``, and foolbox
3.3.4's ``L2CarliniWagnerAttack``, which follows it), with their defaults, the paper's:
``binary_steps=9``, ``steps=10000``, ``lr=1e-2``, ``initial_const=1e-3``, ``kappa=0``,
``abort_early=True``.

* The clean image is mapped to ``w0 = atanh((2x - 1) * 0.999999)``: the factor keeps pixels at 0
  or 1 finite in tanh space (moving them by at most 5e-7). The distance term is measured to the
  image ``w0`` maps back to (as both references do); the reported ``l2`` is to ``x`` itself.
* An iterate counts as a candidate when the logits, with ``kappa`` added to the true class
  (subtracted from the target), still give a wrong (the target) class: the references' test.
* ``binary_steps >= 10`` makes the last stage repeat with ``c`` = the upper bound (both references).
* Adam is the textbook one (beta1 0.9, beta2 0.999, eps 1e-8, bias corrected), elementwise, so a
  batch update is each sample's own update.
* Early abort: every ``ceil(steps / 10)`` iterations a stage compares the loss with its value at
  the previous check and stops if it fell by less than 0.01 %. **Deviation:** the references test
  the loss summed over the batch, so one sample's progress keeps the others running and results
  depend on how samples are batched; here each sample's own loss is tested and a stalled sample
  stops alone (its work skipped for the rest of the stage). With ``abort_early=False`` the two are
  the same algorithm, and the tests compare with foolbox that way, and with abort on as well.

Returned :class:`~advbook.attacks.core.AttackResult`: ``x_adv`` is the closest candidate, or the
clean ``x`` where none was found (``success`` False, ``l2 = 0``); ``success`` untargeted means
"classified differently from ``y``", targeted "classified as ``target``"; ``steps`` counts the
Adam updates the sample had received (over all stages) when its returned example was found
(0: the clean image already qualified; -1: none found).
"""
from __future__ import annotations

import math

import torch

from advbook.attacks.core import AttackResult, _check_inputs, _result
from advbook.attacks.fgsm import _check_target

__all__ = ["cw_l2", "to_tanh_space", "from_tanh_space", "SQUEEZE"]

SQUEEZE = 0.999999  # the references' factor that keeps atanh finite at pixels of exactly 0 or 1
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    """``w = atanh(2x - 1)``: the C&W variable of an image in (0, 1) (0 and 1 map to -inf and +inf)."""
    return torch.atanh(2 * x - 1)


def from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    """``x = (tanh(w) + 1) / 2``: always in [0, 1]; the inverse of :func:`to_tanh_space`."""
    return (torch.tanh(w) + 1) / 2


def _objective(logits: torch.Tensor, cls: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    """Per sample, ``Z_y - max_{j != y} Z_j`` (untargeted) or ``max_{j != t} Z_j - Z_t`` (targeted):
    negative exactly when the attack's goal is met. The best other class is picked by argmax (as the
    references), so the gradient flows through one logit even when two tie."""
    other = logits.scatter(1, cls[:, None], float("-inf")).argmax(1)
    own = logits.gather(1, cls[:, None]).squeeze(1)
    best_other = logits.gather(1, other[:, None]).squeeze(1)
    return best_other - own if targeted else own - best_other


def _qualifies(logits: torch.Tensor, cls: torch.Tensor, *, targeted: bool, kappa: float) -> torch.Tensor:
    """The references' candidate test: the decision on logits shifted by ``kappa`` against the goal."""
    shifted = logits.detach().scatter_add(1, cls[:, None], torch.full_like(cls[:, None], -kappa if targeted else kappa,
                                                                           dtype=logits.dtype))
    pred = shifted.argmax(1)
    return pred == cls if targeted else pred != cls


def _check_settings(*, initial_const, binary_steps, steps, lr, kappa) -> None:
    if not (isinstance(initial_const, (int, float)) and math.isfinite(initial_const) and initial_const > 0):
        raise ValueError(f"initial_const must be a finite number > 0, got {initial_const!r}")
    if not (isinstance(binary_steps, int) and binary_steps >= 1):
        raise ValueError(f"binary_steps must be an integer >= 1, got {binary_steps!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")


def cw_l2(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, targeted: bool = False,
          target: torch.Tensor | None = None, initial_const: float = 1e-3, binary_steps: int = 9,
          steps: int = 10_000, lr: float = 1e-2, kappa: float = 0.0, abort_early: bool = True) -> AttackResult:
    """C&W-L2 (Carlini & Wagner, 2017): the smallest L2 perturbation found by Adam in tanh space,
    with a per-sample binary search over the constant ``c``. See the module docstring for every
    setting; the defaults are the paper's (10,000 steps per stage: pass fewer for a quick look)."""
    _check_inputs(x, y)
    _check_settings(initial_const=initial_const, binary_steps=binary_steps, steps=steps, lr=lr, kappa=kappa)
    if target is not None and not targeted:
        raise ValueError("target is only used with targeted=True")
    n, device = len(x), x.device
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1] if n else 0
    cls = (_check_target(target, n=n, num_classes=num_classes) if targeted else y).to(device)

    x = x.detach()
    w0 = to_tanh_space((x - 0.5) * SQUEEZE + 0.5)
    anchor = from_tanh_space(w0)          # the image the distance term is measured to
    const = torch.full((n,), float(initial_const), dtype=torch.float64, device=device)
    lower = torch.zeros(n, dtype=torch.float64, device=device)
    upper = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    best_x = x.clone()
    best_l2 = torch.full((n,), math.inf, dtype=x.dtype, device=device)
    best_at = torch.full((n,), -1, dtype=torch.long, device=device)
    updates = torch.zeros(n, dtype=torch.long, device=device)   # Adam updates received so far, per sample
    period = math.ceil(steps / 10)

    for stage in range(binary_steps):
        if stage == binary_steps - 1 and binary_steps >= 10:
            const = upper.clamp(max=1e10)
        c = const.to(x.dtype)
        delta = torch.zeros_like(x)
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        found = torch.zeros(n, dtype=torch.bool, device=device)
        previous = torch.full((n,), math.inf, dtype=x.dtype, device=device)
        active = torch.ones(n, dtype=torch.bool, device=device)
        for step in range(steps):
            idx = active.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            d = delta[idx].requires_grad_(True)
            x_new = from_tanh_space(w0[idx] + d)
            logits = model(x_new)
            distance = (x_new - anchor[idx]).flatten(1).pow(2).sum(1)
            loss = distance + c[idx] * (_objective(logits, cls[idx], targeted=targeted) + kappa).clamp(min=0)
            (grad,) = torch.autograd.grad(loss.sum(), d)
            with torch.no_grad():
                keep = torch.ones(len(idx), dtype=torch.bool, device=device)
                if abort_early and step % period == 0:
                    keep = loss <= 0.9999 * previous[idx]
                    previous[idx[keep]] = loss[keep]
                    active[idx[~keep]] = False
                hit = _qualifies(logits, cls[idx], targeted=targeted, kappa=kappa) & keep
                found[idx[hit]] = True
                l2 = (x_new - x[idx]).flatten(1).norm(dim=1)
                better = hit & (l2 < best_l2[idx])
                rows = idx[better]
                best_x[rows] = x_new[better]
                best_l2[rows] = l2[better]
                best_at[rows] = updates[rows]
                # one Adam step for the samples still running
                go, g = idx[keep], grad[keep]
                t = step + 1
                m[go] = _BETA1 * m[go] + (1 - _BETA1) * g
                v[go] = _BETA2 * v[go] + (1 - _BETA2) * g * g
                m_hat, v_hat = m[go] / (1 - _BETA1 ** t), v[go] / (1 - _BETA2 ** t)
                delta[go] = delta[go] - lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)
                updates[go] += 1
        upper = torch.where(found, const, upper)
        lower = torch.where(found, lower, const)
        const = torch.where(upper.isinf(), const * 10, (lower + upper) / 2)

    success = best_at >= 0
    return _result(x, x_adv=best_x, success=success, steps=best_at)

"""JSMA (Papernot et al., 2016): a targeted L0 attack that changes a few input features at a time.

With ``Z`` the logits and ``t`` the target class, the *forward derivatives* of each input feature
``i`` are ``alpha_i = dZ_t / dx_i`` and ``beta_i = sum_{j != t} dZ_j / dx_i``. The single-feature
*adversarial saliency map* (LEC §JSMA, :func:`saliency_map`) is

    ``S_i = alpha_i * |beta_i|`` if ``alpha_i > 0`` and ``beta_i < 0``, else 0:

a feature is worth raising when that raises the target's logit and lowers the others. The attack
itself uses the paper's *pairwise* map (its Algorithm 3, which the paper found necessary because
single features rarely meet both conditions): at every iteration it picks the pair ``p != q`` of
features still in the search domain that maximises

    ``(alpha_p + alpha_q) * |beta_p + beta_q|``  subject to  ``alpha_p + alpha_q > 0``, ``beta_p + beta_q < 0``,

adds ``theta`` to both (clipped to [0, 1]) and removes both from the search domain; it stops when
the model predicts ``t``, when no pair meets the conditions or fewer than two features are left,
or after ``floor(gamma * n_features / 2)`` pairs (``gamma``: the largest fraction of features
changed). A negative ``theta`` decreases features instead (both conditions and the domain mirrored).

Choices, with the reference code they follow (cleverhans v3 ``jsma_symbolic``):

* **Features are input components**: each channel of each pixel is one feature (3072 for a 32x32
  RGB image), as in cleverhans and ART. The paper's MNIST images had one channel, so there
  pixel and component coincide; on colour images a "pixel" of the figure is any of its channels.
* **Logits, not probabilities**: the Jacobian is taken of ``Z`` (the lecture's description; "JSMA-Z"
  in Carlini & Wagner's terms). The paper and cleverhans differentiate the softmax output.
* The search domain starts as the features that can still move (below 1 when increasing, above 0
  when decreasing), and a chosen feature leaves it whatever its new value (cleverhans).
* Ties are broken as cleverhans' argmax over the flattened ``n x n`` score matrix: the first pair
  in row-major order. A sample with no admissible pair stops there (cleverhans would then modify
  feature 0, which its argmax returns over an all-zero score matrix).
* Defaults: ``theta = 1`` (a chosen feature jumps to the top of the range) and ``gamma = 0.145``,
  the settings of the paper's MNIST experiments (a maximum distortion of 14.5 % of the features).
* Speed: the pairwise map has ``n^2`` entries (9.4 million for 3072 features). The best pair is
  found exactly without scoring all of them: for admissible pairs ``(a + b)^2 / 4 >= a * b``
  with ``a = alpha_p + alpha_q``, ``b = -(beta_p + beta_q)``, so the best score ``L`` among the
  features with the largest ``u = alpha - beta`` bounds which features can take part in a better
  pair (``u_p >= 2 sqrt(L) - max u``); only those are scored. The result is the same pair
  (the tests compare with a brute-force map).

How this differs from ART's ``SaliencyMapMethod`` (1.20.1), which the tests check precisely: ART
picks the two features with the largest *target* derivative ``alpha`` alone (``beta`` is not
used), keeps a feature in its search space until it reaches the bound (so with ``theta < 1`` a
feature can be chosen again), and stops once more than ``gamma`` of the features were changed.
When ``beta = -alpha`` (logits whose derivatives sum to zero over classes, e.g. a linear model
with zero-sum class weights) the two rules choose the same pairs; on a CNN they generally do not.

Returns :class:`JSMAOutput`: the :class:`~advbook.attacks.core.AttackResult` (``success``: the
model predicts ``target``; ``steps``: the number of pairs changed when it first did, 0 if the
clean input already was classified as ``target``, -1 if never) and ``changed``, the boolean mask,
shaped like ``x``, of the features the attack modified (its L0 norm is ``changed.flatten(1).sum(1)``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from advbook.attacks.core import AttackResult, _check_inputs, _result
from advbook.attacks.fgsm import _check_target

__all__ = ["jsma", "saliency_map", "JSMAOutput", "forward_derivatives"]

_SHORTLIST = 128   # features scored exhaustively to get the lower bound L of the pruned search


class JSMAOutput(NamedTuple):
    result: AttackResult
    changed: torch.Tensor   # bool, shaped like x: the features the attack modified


def forward_derivatives(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, beta)``, both shaped like ``x``: the input gradients of the target's logit and of the
    sum of the other logits (two backward passes, not the full Jacobian)."""
    xg = x.detach().clone().requires_grad_(True)
    logits = model(xg)
    own = logits.gather(1, target[:, None]).sum()
    others = logits.sum() - own
    (alpha,) = torch.autograd.grad(own, xg, retain_graph=True)
    (beta,) = torch.autograd.grad(others, xg)
    return alpha, beta


def saliency_map(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The single-feature adversarial saliency map of each input for its ``target`` class (shaped like
    ``x``): ``alpha * |beta|`` where ``alpha > 0`` and ``beta < 0``, else 0 (for the JSMA figure)."""
    _check_inputs(x, target)
    with torch.no_grad():
        _check_target(target, n=len(x), num_classes=model(x[:1]).shape[1] if len(x) else None)
    alpha, beta = forward_derivatives(model, x, target)
    return torch.where((alpha > 0) & (beta < 0), alpha * beta.abs(), torch.zeros_like(alpha))


def _pair_scores(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(s_p + s_q) * (t_p + t_q)`` where both sums are positive and ``p != q``, else 0 (an m x m matrix)."""
    a = s[:, None] + s[None, :]
    b = t[:, None] + t[None, :]
    ok = (a > 0) & (b > 0)
    ok.fill_diagonal_(False)
    return torch.where(ok, a * b, torch.zeros((), dtype=a.dtype, device=a.device))


def _best_pair(s: torch.Tensor, t: torch.Tensor, domain: torch.Tensor) -> tuple[int, int] | None:
    """The admissible pair of features in ``domain`` with the largest score, or None.

    ``s = theta_sign * alpha`` and ``t = -theta_sign * beta`` (1-D), so that both increasing and
    decreasing attacks maximise ``(s_p + s_q) * (t_p + t_q)`` over positive sums. Exact; only the
    features that can belong to a pair at least as good as the shortlist's best are scored.
    """
    idx = domain.nonzero().squeeze(1)      # ascending: keeps the row-major tie order of the full map
    if len(idx) < 2:
        return None
    s, t = s[idx], t[idx]
    u = s + t
    cand = torch.arange(len(idx), device=idx.device)
    if len(idx) > _SHORTLIST:
        short = u.topk(_SHORTLIST).indices.sort().values
        low = _pair_scores(s[short], t[short]).max()
        if low > 0:
            bound = 2 * low.sqrt() - u.max()
            tol = 1e-4 * (2 * low.sqrt() + u.abs().max())       # float slack: a superset is still exact
            cand = (u >= bound - tol).nonzero().squeeze(1)
    scores = _pair_scores(s[cand], t[cand])
    best = scores.flatten().argmax()
    if scores.flatten()[best] <= 0:
        return None
    m = len(cand)
    return int(idx[cand[best // m]]), int(idx[cand[best % m]])


def jsma(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, theta: float = 1.0,
         gamma: float = 0.145) -> JSMAOutput:
    """JSMA towards ``target`` (class indices, shape ``(N,)``): pairs of features chosen by the
    pairwise saliency map, each changed by ``theta``, at most a fraction ``gamma`` of them."""
    _check_inputs(x, target)
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and 0 < abs(theta) <= 1):
        raise ValueError(f"theta must be a number with 0 < |theta| <= 1, got {theta!r}")
    if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    n = len(x)
    with torch.no_grad():
        target = _check_target(target, n=n, num_classes=model(x[:1]).shape[1] if n else None).to(x.device)
    sign = 1.0 if theta > 0 else -1.0
    x = x.detach()
    shape = x.shape
    flat = x.flatten(1).clone()
    n_features = flat.shape[1]
    max_pairs = math.floor(n_features * gamma / 2)
    domain = flat < 1 if theta > 0 else flat > 0
    changed = torch.zeros_like(flat, dtype=torch.bool)
    first_hit = torch.full((n,), -1, dtype=torch.long, device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    for it in range(max_pairs + 1):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        xa = flat[idx].view(-1, *shape[1:])
        with torch.no_grad():
            hit = model(xa).argmax(1) == target[idx]
        first_hit[idx[hit]] = it
        active[idx[hit]] = False
        if it == max_pairs or hit.all():
            break
        run = idx[~hit]
        alpha, beta = forward_derivatives(model, xa[~hit], target[run])
        s, t = sign * alpha.flatten(1), -sign * beta.flatten(1)
        for row, i in enumerate(run.tolist()):
            pair = _best_pair(s[row], t[row], domain[i])
            if pair is None:
                active[i] = False
                continue
            p, q = pair
            for f in (p, q):
                flat[i, f] = (flat[i, f] + theta).clamp(0, 1)
                domain[i, f] = False
                changed[i, f] = True
    x_adv = flat.view(shape)
    return JSMAOutput(_result(x, x_adv=x_adv, success=first_hit >= 0, steps=first_hit), changed.view(shape))

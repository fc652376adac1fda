"""The lecture's attacks beyond L_p balls and beyond white-box access, measured image by image
(LEC-F9 and LEC-F10; lecture §12.3, slides 13–15).

The attacks themselves live in :mod:`advbook.attacks` (``flow``, ``colour``, ``zoo``, ``boundary``,
``square_trace``); this module runs them on a page's test images and returns tidy tables, one row per
image (and attack, budget or direction), which the page saves and the claims engine decides from.

* :func:`nonlp_samples`: the stAdv flow attack and the functional colour attack against the true
  labels; per image whether each left the prediction correct, and how much the image changed (L∞
  and L2 in pixel units, the flow's smoothness loss L_flow and its largest displacement in pixels).
* :func:`zoo_trace` and :func:`zoo_cosines`: the zeroth-order gradient estimate of the lecture's
  loss at growing query budgets and its cosine to the autograd gradient. The budgets are *nested*:
  one run at the largest budget, observed after each smaller one. With a fixed seed this is exactly
  what :func:`advbook.attacks.zoo.zoo_gradient` returns at each budget (the coordinate estimator's
  coordinates are a prefix of one random permutation, the Gaussian estimator's directions are drawn
  one after another), so a curve of B budgets costs its largest budget, not their sum.
* :func:`boundary_samples`: OPT-attack's hard-label search g(θ) along random directions, each
  direction's distance and queries, the attack that keeps the best direction, and the same search
  along the (white-box) gradient direction as the reference a random direction is measured against.
* :func:`square_samples`: Square's robust-accuracy trace against the query budget, for each model.

The loss the black-box estimates differentiate is the lecture's ZOO loss without its floor:
Z_y − max_{i≠y} Z_i on the logits (log-probabilities give the same differences), at the model's
own prediction y.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from advbook.attacks import boundary, colour, flow, square_trace, zoo
from advbook.attacks.core import margin
from advbook.data import balanced_subset, to_float

__all__ = ["test_images", "settings", "nonlp_samples", "nonlp_summary", "zoo_trace", "zoo_cosines",
           "boundary_samples", "square_samples", "blackbox_summary"]


def _np(t: torch.Tensor):
    return t.detach().cpu().numpy()


def _check_eval(model: torch.nn.Module) -> None:
    if model.training:
        raise ValueError("the model must be in eval mode (call model.eval()): the attacks query a fixed function")


def test_images(dataset, *, n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` test images: ``n // classes`` of every class (:func:`advbook.data.balanced_subset`, so for one
    seed a smaller ``n`` gives a subset of a larger one); below one per class, ``n`` of the one-per-class
    subset drawn at random with ``seed``. Returns their sorted indices, the images in [0, 1] on
    ``device`` and their labels on ``device``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    index = balanced_subset(dataset.test.labels, n_per_class=max(1, n // len(dataset.classes)), seed=seed)
    if n < len(index):
        keep = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:n]
        index = index[keep.sort().values]
    return index, to_float(dataset.test.images[index]).to(device), dataset.test.labels[index].to(device)


def settings(params: dict) -> dict[str, dict]:
    """The attacks' keyword settings from a page's parameters (``flow_*``, ``colour_*``, ``zoo_*``,
    ``hard_*``, ``square_*``)."""
    return {"flow": dict(tau=params["flow_tau"], steps=params["flow_steps"], lr=params["flow_lr"],
                         optimizer=params["flow_optimizer"]),
            "colour": dict(eps=params["colour_eps"], steps=params["colour_steps"],
                           resolution=params["colour_resolution"]),
            "zoo": dict(budgets=params["zoo_budgets"], h=params["zoo_h"], estimators=params["zoo_estimators"]),
            "hard": dict(directions=params["hard_directions"], step=params["hard_step"], tol=params["hard_tol"],
                         max_distance=params["hard_max_distance"]),
            "square": dict(eps=params["square_eps"], budgets=params["square_budgets"])}


# ---------------------------------------------------------------- LEC-F9: flow and colour

def nonlp_samples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, index: torch.Tensor, seed: int,
                  flow_settings: dict, colour_settings: dict, batch_size: int = 250):
    """Both non-L_p attacks on every image against its label ``y``: a per-image table, and the two
    attack results (:class:`~advbook.attacks.flow.FlowResult`, :class:`~advbook.attacks.colour.ColourResult`).

    Columns: ``natural``, ``flow``, ``colour`` (the prediction is correct on the clean image / after
    each attack: the flags the claims pair), ``flow_fooled`` and ``colour_fooled`` (a correct
    prediction that the attack changed), ``flow_loss`` (L_flow of the returned flow), ``flow_shift_max``
    and ``flow_shift_mean`` (length of the displacement, pixels), ``*_linf`` and ``*_l2`` (the pixel
    change, values in [0, 1]), ``*_steps`` (first misclassified iterate, -1 if none) and the predictions.
    The flow attack with Adam treats every image on its own, so ``batch_size`` changes nothing but
    memory (with L-BFGS a batch is one problem: see :func:`advbook.attacks.flow.flow_attack`)."""
    _check_eval(model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    flows = flow.FlowResult.cat([flow.flow_attack(model, xb, yb, **flow_settings) for xb, yb in parts])
    colours = colour.ColourResult.cat([colour.colour_attack(model, xb, yb, **colour_settings) for xb, yb in parts])
    with torch.no_grad():
        clean, after_flow, after_colour = (model(v).argmax(1) for v in (x, flows.x_adv, colours.x_adv))
    shift = flows.flow.norm(dim=1).flatten(1)            # each pixel's displacement, in pixels
    natural, robust_flow, robust_colour = clean == y, after_flow == y, after_colour == y
    return pd.DataFrame({
        "seed": seed, "index": _np(index), "label": _np(y), "clean_pred": _np(clean),
        "natural": _np(natural), "flow": _np(robust_flow), "colour": _np(robust_colour),
        "flow_fooled": _np(natural & ~robust_flow), "colour_fooled": _np(natural & ~robust_colour),
        "flow_pred": _np(after_flow), "flow_steps": _np(flows.steps), "flow_loss": _np(flows.smoothness),
        "flow_shift_max": _np(shift.amax(1)), "flow_shift_mean": _np(shift.mean(1)),
        "flow_linf": _np(flows.linf), "flow_l2": _np(flows.l2),
        "colour_pred": _np(after_colour), "colour_steps": _np(colours.steps),
        "colour_linf": _np(colours.linf), "colour_l2": _np(colours.l2)}), flows, colours


def nonlp_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per attack (flow, colour) of :func:`nonlp_samples`' table: the images classified
    correctly, how many the attack fooled and its success rate among them (%), accuracy before and
    after (%), and over the fooled images the median L∞ (in 1/255) and L2 pixel change, the mean
    L_flow and the median largest displacement (pixels; flow only)."""
    rows = []
    for attack in ("flow", "colour"):
        fooled = samples[samples[f"{attack}_fooled"]]
        correct = int(samples["natural"].sum())
        rows.append({"attack": attack, "images": len(samples), "clean_correct": correct, "fooled": len(fooled),
                     "success_pct": 100 * len(fooled) / correct if correct else math.nan,
                     "accuracy_clean_pct": 100 * samples["natural"].mean(),
                     "accuracy_attacked_pct": 100 * samples[attack].mean(),
                     "linf_median_255": 255 * fooled[f"{attack}_linf"].median(),
                     "l2_median": fooled[f"{attack}_l2"].median(),
                     "flow_loss_mean": fooled["flow_loss"].mean() if attack == "flow" else math.nan,
                     "shift_max_median_px": fooled["flow_shift_max"].median() if attack == "flow" else math.nan})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- LEC-F10 (1): zeroth-order estimates

# How each estimator of :mod:`advbook.attacks.zoo` weighs the sum of its k terms (its docstring): the
# coordinate estimate is the sum of the drawn partial derivatives, the Gaussian one their mean.
_WEIGHT: dict[str, Callable[[int], float]] = {"coordinate": lambda k: 1.0, "gaussian": lambda k: 1.0 / k}


def _check_budgets(budgets: Sequence[int]) -> list[int]:
    budgets = [int(q) for q in budgets]
    if not budgets or budgets != sorted(set(budgets)) or any(q < 2 or q % 2 for q in budgets):
        raise ValueError(f"budgets must be increasing even numbers >= 2 (two queries per coordinate or "
                         f"direction), got {budgets}")
    return budgets


@torch.no_grad()
def zoo_trace(loss_fn: Callable, x: torch.Tensor, *, h: float, budgets: Sequence[int], generator: torch.Generator,
              estimator: str = "coordinate", max_batch: int = 2048) -> torch.Tensor:
    """:func:`advbook.attacks.zoo.zoo_gradient`'s estimate at every one of ``budgets`` (queries per
    sample, increasing), from one run at the largest: shape (len(budgets), *x.shape). Equal to calling
    ``zoo_gradient`` once per budget with a fresh generator of the same seed (to rounding), at the
    cost of the largest budget alone. ``loss_fn`` follows ``zoo_gradient``'s convention."""
    budgets = _check_budgets(budgets)
    if estimator not in zoo.ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(zoo.ESTIMATORS)}")
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h}")
    ks = [q // 2 for q in budgets]
    directions, _ = zoo.ESTIMATORS[estimator](x, ks[-1], generator)
    n, tail = len(x), [1] * (x.dim() - 1)
    step = max(1, max_batch // (2 * max(n, 1)))
    total, out, start = torch.zeros_like(x), [], 0
    for k in ks:
        while start < k:
            stop = min(k, start + step)
            v = directions(start, stop)                                   # (c, n, ...)
            probes = torch.cat([x[None] + h * v, x[None] - h * v]).flatten(0, 1)
            losses = loss_fn(probes, repeat=2 * (stop - start)).view(2, stop - start, n)
            diff = (losses[0] - losses[1]) / (2 * h)                      # (c, n)
            total += (diff.view(*diff.shape, *tail) * v).sum(0)
            start = stop
        out.append(total * _WEIGHT[estimator](k))
    return torch.stack(out)


def zoo_cosines(model: torch.nn.Module, x: torch.Tensor, *, index: torch.Tensor, seed: int, budgets: Sequence[int],
                h: float, estimators: Sequence[str], max_batch: int = 2048) -> pd.DataFrame:
    """Cosine similarity between the zeroth-order estimate of the margin's gradient at the model's own
    prediction and its autograd gradient, for each estimator and budget: one row per (estimator,
    budget, image) with ``queries``, ``cosine``, ``full`` (the budget is 2 d, every coordinate) and the
    true gradient's L2 norm. Each estimator draws from its own generator seeded with ``seed``."""
    _check_eval(model)
    budgets = _check_budgets(budgets)
    unknown = [e for e in estimators if e not in zoo.ESTIMATORS]
    if unknown or not estimators:
        raise ValueError(f"unknown estimator(s) {unknown or estimators}; valid: {', '.join(zoo.ESTIMATORS)}")
    d = x[0].numel()
    if "coordinate" in estimators and budgets[-1] > 2 * d:
        raise ValueError(f"the coordinate estimator has {d} coordinates per sample (queries <= {2 * d}), "
                         f"got budgets up to {budgets[-1]}")
    with torch.no_grad():
        pred = model(x).argmax(1)

    def loss_fn(batch, *, repeat):
        return margin(model(batch), pred.repeat(repeat))

    true = zoo.true_gradient(loss_fn, x).flatten(1)
    frames = []
    for estimator in estimators:
        g = torch.Generator(device=x.device).manual_seed(seed)
        trace = zoo_trace(loss_fn, x, h=h, budgets=budgets, generator=g, estimator=estimator, max_batch=max_batch)
        cos = F.cosine_similarity(trace.flatten(2), true[None], dim=2).cpu()          # (budgets, n)
        frames.append(pd.DataFrame({"seed": seed, "estimator": estimator,
                                    "queries": [q for q in budgets for _ in range(len(x))],
                                    "index": index.cpu().numpy().tolist() * len(budgets),
                                    "cosine": cos.flatten().numpy(),
                                    "grad_norm": true.norm(dim=1).cpu().numpy().tolist() * len(budgets)}))
    out = pd.concat(frames, ignore_index=True)
    out["full"] = out["queries"] == 2 * d
    return out


# ---------------------------------------------------------------- LEC-F10 (2): hard-label boundary search

def boundary_samples(model: torch.nn.Module, x: torch.Tensor, *, index: torch.Tensor, seed: int, directions: int,
                     step: float, tol: float, max_distance: float, max_batch: int = 4096):
    """OPT-attack's hard-label search against the model's own predictions: per image and per random
    direction (drawn as :func:`advbook.attacks.boundary.hard_label_attack` draws them, so its attack is
    the best row per image), and along the white-box gradient direction −∇(Z_y − max_{i≠y} Z_i).

    Returns ``(per_image, per_direction)``. ``per_direction``: ``direction``, ``distance`` (g(θ), inf if
    the label never changed up to ``max_distance``) and ``queries``. ``per_image``: ``success_random``,
    ``dist_random`` (the smallest g(θ)), ``queries_random`` (over all directions), ``first_direction``
    (the first direction that found a boundary, -1 if none), ``l2_random`` (the pixel L2 distance of
    the attack's point, after the clip to [0, 1]), ``adv_fooled`` (that point's label differs, read
    back from the model), ``success_gradient``, ``dist_gradient``, ``queries_gradient``, and ``ratio``
    = dist_random / dist_gradient where both searches found a boundary (NaN elsewhere)."""
    _check_eval(model)
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    search = dict(tol=tol, step=step, max_distance=max_distance)
    n, tail = len(x), [1] * (x.dim() - 1)
    with torch.no_grad():
        pred = model(x).argmax(1)
    xr = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(margin(model(xr), pred).sum(), xr)
    moving = grad.flatten(1).norm(dim=1) > 0
    along = boundary.Boundary(distance=torch.full((n,), math.inf, device=x.device, dtype=x.dtype),
                              queries=torch.zeros(n, dtype=torch.long, device=x.device))
    if moving.any():                        # a zero gradient gives no direction: that image has no reference
        found = boundary.boundary_distance(model, x[moving], pred[moving], direction=-grad[moving], **search)
        along.distance[moving], along.queries[moving] = found.distance, found.queries
    g = torch.Generator(device=x.device).manual_seed(seed)
    best = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
    best_unit, first = torch.zeros_like(x), torch.full((n,), -1, dtype=torch.long, device=x.device)
    queries, dist_rows, used_rows = torch.zeros(n, dtype=torch.long, device=x.device), [], []
    per_call = max(1, max_batch // max(n, 1))
    for start in range(0, directions, per_call):
        c = min(per_call, directions - start)
        theta = torch.stack([torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) for _ in range(c)])
        found = boundary.boundary_distance(model, x.repeat(c, *tail), pred.repeat(c), direction=theta.flatten(0, 1),
                                           **search)
        dist, used = found.distance.view(c, n), found.queries.view(c, n)
        dist_rows.append(dist)
        used_rows.append(used)
        queries += used.sum(0)
        for j in range(c):                  # in direction order: a tie keeps the earlier direction
            better = dist[j] < best
            best[better] = dist[j][better]
            unit = theta[j] / theta[j].flatten(1).norm(dim=1).view(-1, *tail)
            best_unit[better] = unit[better]
            first[(first < 0) & torch.isfinite(dist[j])] = start + j
    success = torch.isfinite(best)
    x_adv = (x + torch.where(success, best, torch.zeros_like(best)).view(-1, *tail) * best_unit).clamp(0, 1)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != pred
    both = success & torch.isfinite(along.distance)
    ratio = torch.where(both, best / along.distance, torch.full_like(best, math.nan))
    per_image = pd.DataFrame({
        "seed": seed, "index": _np(index), "pred": _np(pred), "success_random": _np(success),
        "dist_random": _np(best), "queries_random": _np(queries), "first_direction": _np(first),
        "l2_random": _np((x_adv - x).flatten(1).norm(dim=1)), "adv_fooled": _np(fooled & success),
        "success_gradient": _np(torch.isfinite(along.distance)), "dist_gradient": _np(along.distance),
        "queries_gradient": _np(along.queries), "ratio": _np(ratio)})
    dist_all, used_all = torch.cat(dist_rows), torch.cat(used_rows)        # (directions, n)
    per_direction = pd.DataFrame({"seed": seed, "index": _np(index).tolist() * directions,
                                  "direction": [j for j in range(directions) for _ in range(n)],
                                  "distance": _np(dist_all.flatten()), "queries": _np(used_all.flatten())})
    return per_image, per_direction


# ---------------------------------------------------------------- LEC-F10 (3): Square's trace

def square_samples(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, *, index: torch.Tensor,
                   seed: int, eps: float, budgets: Sequence[int]):
    """Square (L∞ ``eps``) against the labels ``y`` at every budget of ``budgets``, for each named model
    (:func:`advbook.attacks.square_trace.square_trace`). Returns ``(per_image, trace)``: per model and
    image, ``natural`` and ``square`` (correct on the clean image / after Square at the largest budget)
    and ``queries`` (to success, or all it spent); ``trace``: per model, budget and image, ``robust``
    and the best point's ``margin``."""
    per_image, trace = [], []
    for name, model in models.items():
        _check_eval(model)
        with torch.no_grad():
            pred = model(x).argmax(1)
        tr = square_trace.square_trace(model, x, y, eps=eps, budgets=budgets, seed=seed)
        per_image.append(pd.DataFrame({"seed": seed, "model": name, "index": index.cpu().numpy(),
                                       "label": y.cpu().numpy(), "natural": (pred == y).cpu().numpy(),
                                       "square": (~tr.success[-1]).cpu().numpy(), "queries": tr.queries.cpu().numpy()}))
        trace.append(pd.DataFrame({"seed": seed, "model": name,
                                   "budget": [b for b in tr.budgets for _ in range(len(x))],
                                   "index": index.cpu().numpy().tolist() * len(tr.budgets),
                                   "robust": (~tr.success).flatten().cpu().numpy(),
                                   "margin": tr.margin.flatten().cpu().numpy()}))
    return pd.concat(per_image, ignore_index=True), pd.concat(trace, ignore_index=True)


def blackbox_summary(zoo_rows: pd.DataFrame, hard: pd.DataFrame, square: pd.DataFrame,
                     trace: pd.DataFrame) -> pd.DataFrame:
    """LEC-F10's numbers in one long table (``panel``, ``series``, ``x``, ``statistic``, ``value``,
    ``n``): the median cosine per estimator and budget; the median boundary distance and queries
    along random directions and along the gradient; the accuracy (%) per model, clean and at each
    Square budget."""
    rows = [{"panel": "zoo", "series": e, "x": q, "statistic": "median cosine", "value": g["cosine"].median(),
             "n": len(g)} for (e, q), g in zoo_rows.groupby(["estimator", "queries"], sort=False)]
    for side in ("random", "gradient"):
        found = hard[hard[f"success_{side}"]]
        rows += [{"panel": "boundary", "series": side, "x": math.nan, "statistic": "median distance (L2)",
                  "value": found[f"dist_{side}"].median(), "n": len(found)},
                 {"panel": "boundary", "series": side, "x": math.nan, "statistic": "found (%)",
                  "value": 100 * hard[f"success_{side}"].mean(), "n": len(hard)},
                 {"panel": "boundary", "series": side, "x": math.nan, "statistic": "median queries",
                  "value": hard[f"queries_{side}"].median(), "n": len(hard)}]
    rows += [{"panel": "square", "series": m, "x": 0, "statistic": "accuracy (%)", "value": 100 * g["natural"].mean(),
              "n": len(g)} for m, g in square.groupby("model", sort=False)]
    rows += [{"panel": "square", "series": m, "x": b, "statistic": "accuracy (%)", "value": 100 * g["robust"].mean(),
              "n": len(g)} for (m, b), g in trace.groupby(["model", "budget"], sort=False)]
    return pd.DataFrame(rows)

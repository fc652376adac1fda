"""The lecture's white-box attacks measured image by image (LEC-F3 to LEC-F8; lecture §12.3, slides 7–12).

The attacks live in :mod:`advbook.attacks` (``fgsm``, ``core.pgd``/``core.deepfool``, ``cw``, ``jsma``,
``universal``; the per-iteration views in ``traces``). This module runs them on the page's test images
and returns tidy tables, one row per image (and model, budget or iteration), which the page saves and
the claims engine decides from. Conventions shared by every table:

* ``index`` is the CIFAR-10 test index, ``seed`` the page's seed, ``model`` the model's name.
* A *robust flag* (a boolean column named after an evaluation) is True where the attack failed. For
  an untargeted attack against the true label that means "still classified correctly", and, as in
  :func:`advbook.evaluation.evaluate.evaluate`, an image the model already gets wrong is never
  robust. For targeted FGSM it means "not classified as the target"; for a perturbation added to
  many images (the universal one and its random control) it means "the prediction did not change".
* ``clean`` is ``"correct"`` or ``"wrong"`` (the clean prediction against the label), a text column
  so that claims can select images by it (boolean columns are read as flags).

Which images: :func:`page_images` draws ``n_eval`` class-balanced test images (the *evaluation*
images: FGSM, and the held-out images of the universal perturbation) and, disjoint from them,
``n_build`` more (the images the universal perturbation is computed from). The smaller sets (PGD,
DeepFool, C&W-L2, JSMA) are balanced subsets of the evaluation images: for one seed a balanced
subset of ``m`` images is contained in the one of ``n >= m`` (:func:`advbook.data.balanced_subset`
draws one permutation per class), so every attack sees the first images of the same list. Each image
gets one *target* class, drawn uniformly among the wrong classes with the seed, used by every
targeted attack of the page (targeted FGSM, JSMA).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from advbook.attacks.core import margin
from advbook.attacks.cw import cw_l2
from advbook.attacks.fgsm import fgsm
from advbook.attacks.jsma import jsma, saliency_map
from advbook.attacks.traces import deepfool_trace, pgd_trace
from advbook.attacks.universal import fooling_rate, universal_perturbation
from advbook.data import balanced_subset, to_float

__all__ = ["PageImages", "page_images", "settings", "fgsm_samples", "pgd_samples", "AffineClassifier", "affine_toy",
           "toy_regions", "toy_deepfool", "deepfool_samples", "cw_samples", "jsma_samples", "universal_samples", "sign_noise",
           "SUBSETS"]

# The page's image sets that are balanced subsets of the evaluation images, by their parameter.
SUBSETS = ("n_pgd", "n_deepfool", "n_cw", "n_jsma")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def _check_eval(models: dict[str, torch.nn.Module]) -> None:
    for name, model in models.items():
        if model.training:
            raise ValueError(f"model {name!r} must be in eval mode (call .eval()): the attacks query a fixed function")


def _clean(ok: torch.Tensor) -> np.ndarray:
    return np.where(_np(ok), "correct", "wrong")


@dataclasses.dataclass
class PageImages:
    """The page's test images (see the module docstring), on one device."""
    index: torch.Tensor         # (n_eval,) sorted CIFAR-10 test indices of the evaluation images
    x: torch.Tensor             # (n_eval, 3, H, W) in [0, 1]
    y: torch.Tensor             # (n_eval,) labels
    target: torch.Tensor        # (n_eval,) one wrong class per image, drawn with the seed
    build_index: torch.Tensor   # (n_build,) the universal perturbation's images, disjoint from index
    x_build: torch.Tensor
    y_build: torch.Tensor
    test_labels: torch.Tensor   # all test labels (CPU), to draw the nested subsets
    classes: tuple[str, ...]
    seed: int

    def pick(self, n: int) -> torch.Tensor:
        """Positions in the evaluation images of the balanced subset of ``n`` images (``n // classes``
        per class), in test-index order."""
        sub = balanced_subset(self.test_labels, n_per_class=n // len(self.classes), seed=self.seed)
        pos = torch.searchsorted(self.index.cpu(), sub)
        if not torch.equal(self.index.cpu()[pos.clamp(max=len(self.index) - 1)], sub):
            raise ValueError(f"a subset of {n} images must lie within the {len(self.index)} evaluation images")
        return pos.to(self.x.device)


def page_images(dataset, *, params: dict, device) -> PageImages:
    """The evaluation images (``params["n_eval"]``), the disjoint build images of the universal
    perturbation (``n_build``) and one target per image; checks, before any work, that each of
    :data:`SUBSETS` fits in the evaluation images and that both sets fit in the test split."""
    classes = len(dataset.classes)
    n_eval, n_build, seed = params["n_eval"], params["n_build"], params["seed"]
    for name in SUBSETS:
        if not classes <= params[name] <= n_eval:
            raise ValueError(f"{name}={params[name]} must be in [{classes}, n_eval={n_eval}]: its images are a "
                             f"balanced subset of the evaluation images, at least one per class")
    per_class = int(torch.bincount(dataset.test.labels).min())
    if n_eval // classes + n_build // classes > per_class:
        raise ValueError(f"n_eval={n_eval} and n_build={n_build} must together take at most {per_class} test images "
                         f"per class of {dataset.name} ({n_eval // classes} + {n_build // classes} asked)")
    if n_eval < classes or n_build < classes:
        raise ValueError(f"n_eval={n_eval} and n_build={n_build} must each be at least {classes} (one image per class)")
    index = balanced_subset(dataset.test.labels, n_per_class=n_eval // classes, seed=seed)
    both = balanced_subset(dataset.test.labels, n_per_class=n_eval // classes + n_build // classes, seed=seed)
    build = both[~torch.isin(both, index)]
    y = dataset.test.labels[index]
    g = torch.Generator().manual_seed(seed)
    target = (y + torch.randint(1, classes, (len(y),), generator=g)) % classes
    return PageImages(index=index, x=to_float(dataset.test.images[index]).to(device), y=y.to(device),
                      target=target.to(device), build_index=build,
                      x_build=to_float(dataset.test.images[build]).to(device),
                      y_build=dataset.test.labels[build].to(device), test_labels=dataset.test.labels,
                      classes=tuple(dataset.classes), seed=seed)


def settings(params: dict) -> dict[str, dict]:
    """Each attack's keyword settings from the page's parameters (see ``schemas_lec``): ``fgsm``,
    ``pgd``, ``deepfool``, ``cw``, ``jsma`` and ``universal``, for the functions below."""
    p = params
    return {"fgsm": dict(eps=p["eps"], grid=p["fgsm_eps"], n_examples=p["n_examples"]),
            "pgd": dict(n=p["n_pgd"], eps=p["eps"], step_size=p["pgd_step_size"], steps=p["pgd_steps"],
                        starts=p["pgd_starts"], n_trace=p["n_trace"]),
            "deepfool": dict(n=p["n_deepfool"], steps=p["deepfool_steps"], overshoot=p["overshoot"]),
            "cw": dict(n=p["n_cw"], kappas=p["cw_kappas"], binary_steps=p["cw_binary_steps"], steps=p["cw_steps"],
                       lr=p["cw_lr"], initial_const=p["cw_initial_const"]),
            "jsma": dict(n=p["n_jsma"], theta=p["jsma_theta"], gamma=p["jsma_gamma"]),
            "universal": dict(eps=p["uap_eps"], norm=p["uap_norm"], passes=p["uap_passes"], delta=p["uap_delta"],
                              deepfool_steps=p["uap_deepfool_steps"])}


# ---------------------------------------------------------------- LEC-F3: FGSM

def _grid(grid, eps: float) -> list[float]:
    out = sorted(set(float(e) for e in grid) | {float(eps)})
    return [e for i, e in enumerate(out) if i == 0 or not math.isclose(e, out[i - 1], rel_tol=1e-9)]


def fgsm_samples(models: dict[str, torch.nn.Module], images: PageImages, *, eps: float, grid,
                 example_model: str = "standard", n_examples: int = 2):
    """Untargeted and targeted FGSM (towards ``images.target``) on every evaluation image, for each
    model at each budget of ``grid`` and at the page's ``eps``.

    Returns ``(summary, samples, curve, examples)``: ``summary`` one row per model and budget (0: the
    clean images) with the accuracy over all images and both success rates over the images the model
    classifies correctly; ``samples`` the per-image flags at ``eps`` (``natural``, ``fgsm``,
    ``fgsm_targeted``: see the module docstring) and predictions; ``curve`` the same flags at every
    budget; ``examples`` the images LEC-F3 draws for ``example_model`` at ``eps``, chosen by a rule
    fixed before the run: the first (in test-index order) that the model classifies correctly and
    that both attacks fool, then those only the untargeted one fools, then the rest, taking images of
    classes not shown yet first."""
    _check_eval(models)
    if example_model not in models:
        raise ValueError(f"example_model {example_model!r} is not among the models: {', '.join(models)}")
    x, y, t = images.x, images.y, images.target
    budgets = _grid(grid, eps)
    curve, rows, examples = [], [], {}
    for name, model in models.items():
        pred = _predict(model, x)
        ok = pred == y
        rows.append({"model": name, "eps": 0.0, "eps_255": 0.0, "accuracy": 100 * ok.float().mean().item(),
                     "untargeted_success": 0.0, "targeted_success": 100 * (pred[ok] == t[ok]).float().mean().item(),
                     "n": len(y), "n_correct": int(ok.sum())})
        for e in budgets:
            up = fgsm(model, x, y, eps=e)
            down = fgsm(model, x, y, eps=e, targeted=True, target=t)
            pu, pt = _predict(model, up.x_adv), _predict(model, down.x_adv)
            robust, reached = ok & (pu == y), pt == t
            curve.append(pd.DataFrame({
                "seed": images.seed, "index": _np(images.index), "model": name, "eps": e, "label": _np(y),
                "target": _np(t), "clean": _clean(ok), "natural": _np(ok), "fgsm": _np(robust),
                "fgsm_targeted": _np(~reached), "pred": _np(pred), "pred_fgsm": _np(pu), "pred_targeted": _np(pt)}))
            rows.append({"model": name, "eps": e, "eps_255": e * 255, "accuracy": 100 * robust.float().mean().item(),
                         "untargeted_success": 100 * (~robust[ok]).float().mean().item(),
                         "targeted_success": 100 * reached[ok].float().mean().item(),
                         "n": len(y), "n_correct": int(ok.sum())})
            if name == example_model and math.isclose(e, eps, rel_tol=1e-9):
                examples = _fgsm_examples(model, x, y, t, ok, pu != y, reached, up.x_adv, down.x_adv, n=n_examples)
    curve = pd.concat(curve, ignore_index=True)
    samples = curve[np.isclose(curve["eps"], eps, rtol=1e-9, atol=0)].drop(columns="eps").reset_index(drop=True)
    return pd.DataFrame(rows), samples, curve, examples


def _fgsm_examples(model, x, y, t, ok, fooled, reached, x_up, x_down, *, n: int) -> dict:
    both, up_only = _np(ok & fooled & reached), _np(ok & fooled & ~reached)
    ranked = [*np.flatnonzero(both), *np.flatnonzero(up_only), *np.flatnonzero(~both & ~up_only)]
    labels = _np(y)
    order: list[int] = []
    for i in ranked:                                  # one image per class first, then any
        if len(order) < n and labels[i] not in labels[order]:
            order.append(int(i))
    order += [int(i) for i in ranked if i not in order][:n - len(order)]
    pos = torch.as_tensor(order, dtype=torch.long, device=x.device)
    with torch.no_grad():
        probs = [torch.softmax(model(z[pos]), 1) for z in (x, x_up, x_down)]
    return {"position": order, "x": x[pos], "x_fgsm": x_up[pos], "x_targeted": x_down[pos], "label": y[pos],
            "target": t[pos], "probs": probs}


# ---------------------------------------------------------------- LEC-F4: PGD

def pgd_samples(models: dict[str, torch.nn.Module], images: PageImages, fgsm_flags: pd.DataFrame, *, n: int,
                eps: float, step_size: float, steps: int, starts: int, n_trace: int):
    """L-inf PGD (random start, ``steps`` steps of ``step_size``, all of them run) on the first ``n``
    evaluation images (:meth:`PageImages.pick`), for each model, traced step by step
    (:func:`advbook.attacks.traces.pgd_trace`, seed = the page's seed); and, on ``n_trace`` of those
    images, the cross-entropy along ``starts`` runs from different random starts (seeds ``seed``,
    ``seed + 1``, ...).

    ``fgsm_flags`` is :func:`fgsm_samples`' ``samples`` (FGSM at the same ``eps``): its ``natural``
    and ``fgsm`` flags of these images are copied beside PGD's, so that a claim compares the two
    attacks on the same images. Returns ``(summary, samples, by_step, losses)``: ``summary`` the
    accuracy after each number of steps per model, with the clean and FGSM accuracy of the same
    images; ``samples`` one row per model and image (flags ``natural``, ``fgsm``, ``pgd``: the last
    iterate; ``first_wrong``: the first iterate classified wrongly, -1 if none); ``by_step`` the flag
    of every iterate; ``losses`` one row per model, image, start and iterate. The loss images are the
    first ``n_trace`` (in test-index order) that every model classifies correctly, a rule fixed
    before the run."""
    _check_eval(models)
    pos = images.pick(n)
    x, y, index = images.x[pos], images.y[pos], images.index[pos]
    flags = fgsm_flags.set_index(["model", "index"])
    samples, by_step, summary, losses = [], [], [], []
    clean_ok = {}
    for name, model in models.items():
        tr = pgd_trace(model, x, y, eps=eps, step_size=step_size, steps=steps, seed=images.seed)
        known = flags.loc[[(name, int(i)) for i in _np(index)]]
        natural = torch.tensor(known["natural"].to_numpy(bool), device=x.device)
        robust = tr.correct & natural           # an image the model gets wrong is robust under no attack
        wrong = ~tr.correct
        first = torch.where(wrong.any(0), wrong.float().argmax(0), torch.full_like(y, -1))
        clean_ok[name] = natural
        samples.append(pd.DataFrame({
            "seed": images.seed, "index": _np(index), "model": name, "label": _np(y), "clean": _clean(natural),
            "natural": _np(natural), "fgsm": known["fgsm"].to_numpy(bool), "pgd": _np(robust[-1]),
            "first_wrong": _np(first)}))
        for it in range(steps + 1):
            by_step.append(pd.DataFrame({"seed": images.seed, "index": _np(index), "model": name, "iteration": it,
                                         "robust": _np(robust[it]), "loss": _np(tr.loss[it])}))
            summary.append({"model": name, "iteration": it, "pgd_accuracy": 100 * robust[it].float().mean().item(),
                            "natural_accuracy": 100 * natural.float().mean().item(),
                            "fgsm_accuracy": 100 * known["fgsm"].mean(), "n": len(y)})
    every = torch.stack(list(clean_ok.values())).all(0)
    chosen = every.nonzero().flatten()[:n_trace]
    for name, model in models.items():
        for start in range(starts):
            tr = pgd_trace(model, x[chosen], y[chosen], eps=eps, step_size=step_size, steps=steps,
                           seed=images.seed + start)
            for k, p in enumerate(_np(chosen)):
                losses.append(pd.DataFrame({"seed": images.seed, "index": int(index[p]), "model": name, "start": start,
                                            "iteration": np.arange(steps + 1), "loss": _np(tr.loss[:, k]),
                                            "correct": _np(tr.correct[:, k])}))
    losses = pd.concat(losses, ignore_index=True) if losses else pd.DataFrame(
        columns=["seed", "index", "model", "start", "iteration", "loss", "correct"])
    return (pd.DataFrame(summary), pd.concat(samples, ignore_index=True), pd.concat(by_step, ignore_index=True),
            losses)


# ---------------------------------------------------------------- LEC-F5: DeepFool

class AffineClassifier(torch.nn.Module):
    """Logits ``W x + b`` of a flat input: the lecture's affine classifier, for which DeepFool's step is
    exact. No training: the weights are fixed numbers."""

    def __init__(self, weight, bias):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


# Three classes in the unit square; class 0 holds the toy point, with its two boundaries at
# different distances, so that the step to the nearest one is a choice. Picked by hand to draw well.
TOY_WEIGHT = ((0.0, 0.0), (3.0, 1.0), (-1.0, 3.0))
TOY_BIAS = (0.0, -2.1, -2.4)
TOY_POINT = (0.35, 0.3)


def affine_toy() -> AffineClassifier:
    """The 2-D three-class affine classifier of LEC-F5's first panel (eval mode)."""
    return AffineClassifier(TOY_WEIGHT, TOY_BIAS).eval()


@torch.no_grad()
def toy_regions(model: AffineClassifier, *, size: int = 201) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The predicted class on a ``size`` x ``size`` grid of the unit square: ``(xx, yy, classes)``."""
    g = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    cls = model(torch.stack([xx.flatten(), yy.flatten()], 1)).argmax(1).view(size, size)
    return xx.numpy(), yy.numpy(), cls.numpy()


def toy_deepfool(model: AffineClassifier, point=TOY_POINT, *, overshoot: float = 0.0) -> pd.DataFrame:
    """DeepFool's first step from ``point`` on an affine ``model``, beside the closed form: one row per
    other class ``l`` with ``f = (w_l - w_y) x0 + (b_l - b_y)`` (negative: ``x0`` is on ``y``'s side),
    the distance ``|f| / ||w_l - w_y||`` to that boundary and its foot ``x0 - f (w_l - w_y) / ||w_l -
    w_y||^2`` (the lecture's ``r* = -f(x0) w / ||w||^2``); ``nearest`` marks the boundary DeepFool
    must step to; ``landing_*``, ``deepfool_l2`` and ``margin_after`` are what
    :func:`advbook.attacks.core.deepfool` returned (one iteration, ``overshoot`` as given)."""
    x0 = torch.as_tensor(point, dtype=torch.float32).view(1, -1)
    with torch.no_grad():
        z = model(x0)[0]
    y = int(z.argmax())
    res, path = deepfool_trace(model, x0, torch.tensor([y]), steps=1, overshoot=overshoot)
    with torch.no_grad():
        after = margin(model(res.x_adv), torch.tensor([y])).item()
    rows = []
    for cls in range(len(z)):
        if cls == y:
            continue
        w = model.weight[cls] - model.weight[y]
        f = (z[cls] - z[y]).item()
        foot = x0[0] - f * w / w.dot(w)
        rows.append({"point_x": x0[0, 0].item(), "point_y": x0[0, 1].item(), "label": y, "other": cls, "f": f,
                     "w_norm": w.norm().item(), "distance": abs(f) / w.norm().item(), "foot_x": foot[0].item(),
                     "foot_y": foot[1].item()})
    out = pd.DataFrame(rows)
    out["nearest"] = out["distance"] == out["distance"].min()
    out["landing_x"], out["landing_y"] = res.x_adv[0, 0].item(), res.x_adv[0, 1].item()
    out["deepfool_l2"], out["margin_after"], out["success"] = res.l2.item(), after, bool(res.success.item())
    return out


def deepfool_samples(models: dict[str, torch.nn.Module], images: PageImages, *, n: int, steps: int,
                     overshoot: float):
    """Multi-class L2 DeepFool (all classes, ``steps`` at most, ``overshoot``) on the first ``n``
    evaluation images, pushed away from each model's own clean prediction (the decision must change,
    as in the lecture), with its path (:func:`advbook.attacks.traces.deepfool_trace`).

    Returns ``(summary, samples, path)``: per model the success rate and the iterations and L2 norms
    it needed; per image ``success``, ``iterations`` (the first misclassified iterate) and ``l2``;
    per image and iterate the perturbation's L2 norm so far and the logit margin of the clean
    prediction (positive while it still wins)."""
    _check_eval(models)
    pos = images.pick(n)
    x, index = images.x[pos], images.index[pos]
    samples, paths, summary = [], [], []
    for name, model in models.items():
        pred = _predict(model, x)
        res, path = deepfool_trace(model, x, pred, steps=steps, overshoot=overshoot)
        frame = pd.DataFrame({"seed": images.seed, "index": _np(index), "model": name, "label": _np(images.y[pos]),
                              "pred": _np(pred), "success": _np(res.success), "iterations": _np(res.steps),
                              "l2": _np(res.l2)})
        samples.append(frame)
        path.insert(0, "model", name)
        path.insert(0, "index", _np(index)[path["sample"].to_numpy()])
        paths.append(path.drop(columns="sample"))
        ok = frame[frame["success"]]
        summary.append({"model": name, "n": len(frame), "success": 100 * frame["success"].mean(),
                        "iterations_median": ok["iterations"].median(),
                        "iterations_max": int(ok["iterations"].max()) if len(ok) else -1,
                        "l2_median": ok["l2"].median(), "l2_q25": ok["l2"].quantile(0.25),
                        "l2_q75": ok["l2"].quantile(0.75)})
    return pd.DataFrame(summary), pd.concat(samples, ignore_index=True), pd.concat(paths, ignore_index=True)


# ---------------------------------------------------------------- LEC-F6: C&W-L2

def cw_samples(model: torch.nn.Module, images: PageImages, *, n: int, kappas, binary_steps: int, steps: int,
               lr: float, initial_const: float, name: str = "standard"):
    """C&W-L2 (:func:`advbook.attacks.cw.cw_l2`, untargeted, away from the model's clean prediction) on
    the first ``n`` evaluation images at each confidence ``kappa``.

    Returns ``(summary, samples)``: per ``kappa`` the success rate and the quartiles of the L2 norm of
    the successful examples, over all successes and over the images that succeeded at *every*
    ``kappa`` (the same images for each ``kappa``: the paired trade-off); per image and ``kappa``
    ``success``, ``l2`` and the logit margin ``max_{j != pred} z_j - z_pred`` the example reached
    (at least ``kappa`` where it succeeded)."""
    _check_eval({name: model})
    pos = images.pick(n)
    x, index = images.x[pos], images.index[pos]
    pred = _predict(model, x)
    frames = []
    for kappa in kappas:
        res = cw_l2(model, x, pred, kappa=float(kappa), binary_steps=binary_steps, steps=steps, lr=lr,
                    initial_const=initial_const)
        with torch.no_grad():
            reached = -margin(model(res.x_adv), pred)
        frames.append(pd.DataFrame({"seed": images.seed, "index": _np(index), "model": name, "kappa": float(kappa),
                                    "label": _np(images.y[pos]), "pred": _np(pred), "success": _np(res.success),
                                    "l2": _np(res.l2), "margin": _np(reached), "steps": _np(res.steps)}))
    samples = pd.concat(frames, ignore_index=True)
    every = samples.groupby("index")["success"].transform("all")
    rows = []
    for kappa, g in samples.groupby("kappa", sort=True):
        ok, paired = g[g["success"]], g[every[g.index]]
        rows.append({"model": name, "kappa": kappa, "n": len(g), "success": 100 * g["success"].mean(),
                     "l2_median": ok["l2"].median(), "l2_q25": ok["l2"].quantile(0.25),
                     "l2_q75": ok["l2"].quantile(0.75), "n_paired": len(paired),
                     "l2_median_paired": paired["l2"].median()})
    return pd.DataFrame(rows), samples


# ---------------------------------------------------------------- LEC-F7: JSMA

def jsma_samples(model: torch.nn.Module, images: PageImages, *, n: int, theta: float, gamma: float,
                 name: str = "standard"):
    """JSMA (:func:`advbook.attacks.jsma.jsma`) towards each image's target on the first ``n``
    evaluation images.

    Returns ``(summary, samples, example)``: the success rate and the L0 counts of the successful
    examples; per image ``success``, ``pairs`` (iterations), ``l0_features`` (input components
    changed, the attack's L0) and ``l0_pixels`` (pixels with any channel changed); ``example``, the
    image LEC-F7 draws: the first (in test-index order) that the model classifies correctly and JSMA
    sends to its target, else the first image, with its single-feature saliency map for the target
    at the clean image (:func:`advbook.attacks.jsma.saliency_map`), the adversarial image and the
    mask of changed features."""
    _check_eval({name: model})
    pos = images.pick(n)
    x, y, t, index = images.x[pos], images.y[pos], images.target[pos], images.index[pos]
    pred = _predict(model, x)
    out = jsma(model, x, t, theta=theta, gamma=gamma)
    res, changed = out
    with torch.no_grad():
        pred_adv = _predict(model, res.x_adv)
    samples = pd.DataFrame({"seed": images.seed, "index": _np(index), "model": name, "label": _np(y),
                            "pred": _np(pred), "target": _np(t), "clean": _clean(pred == y),
                            "success": _np(res.success), "pairs": _np(res.steps), "pred_adv": _np(pred_adv),
                            "l0_features": _np(changed.flatten(1).sum(1)),
                            "l0_pixels": _np(changed.any(1).flatten(1).sum(1))})
    good = _np((pred == y) & res.success)
    k = int(np.flatnonzero(good)[0]) if good.any() else 0
    example = {"position": k, "index": int(index[k]), "x": x[k], "x_adv": res.x_adv[k], "changed": changed[k],
               "saliency": saliency_map(model, x[k:k + 1], t[k:k + 1])[0], "label": int(y[k]), "pred": int(pred[k]),
               "target": int(t[k]), "pred_adv": int(pred_adv[k])}
    ok = samples[samples["success"]]
    n_features = x[0].numel()
    summary = pd.DataFrame([{"model": name, "n": len(samples), "success": 100 * samples["success"].mean(),
                             "l0_features_median": ok["l0_features"].median(),
                             "l0_pixels_median": ok["l0_pixels"].median(),
                             "l0_features_max_allowed": 2 * math.floor(n_features * gamma / 2),
                             "n_features": n_features, "gamma": gamma, "theta": theta}])
    return summary, samples, example


# ---------------------------------------------------------------- LEC-F8: universal perturbation

def sign_noise(v: torch.Tensor, *, seed: int) -> torch.Tensor:
    """The random control of a perturbation ``v``: random signs (seeded) of one common size, scaled
    to ``v``'s L2 norm. Its L-inf norm, ``||v||_2 / sqrt(d)``, is at most ``||v||_inf``, so it lies in
    any L-inf ball that holds ``v``."""
    g = torch.Generator().manual_seed(seed)
    signs = (torch.randint(0, 2, v.shape, generator=g) * 2 - 1).to(v)
    return signs * v.norm() / math.sqrt(v.numel())


def universal_samples(model: torch.nn.Module, images: PageImages, *, eps: float, norm: str, passes: int,
                      delta: float, deepfool_steps: int, name: str = "standard"):
    """A universal perturbation (:func:`advbook.attacks.universal.universal_perturbation`, seed = the
    page's seed) computed on the build images only, then added to the build images and to the
    held-out evaluation images, beside random-sign noise of the same L2 norm (:func:`sign_noise`).

    Returns ``(summary, samples, v, history)``: the fooling rate (share of images whose prediction
    changes) per image set and perturbation; per image the flags ``uap`` and ``noise`` (True: the
    prediction did not change) and ``split`` (``build`` or ``held_out``); ``v``; the fooling rate
    on the build images after each pass."""
    _check_eval({name: model})
    res = universal_perturbation(model, images.x_build, eps=eps, norm=norm, delta=delta, max_passes=passes,
                                 deepfool_steps=deepfool_steps, seed=images.seed)
    noise = sign_noise(res.v, seed=images.seed)
    frames, rows = [], []
    for split, x, y, index in (("build", images.x_build, images.y_build, images.build_index),
                               ("held_out", images.x, images.y, images.index)):
        pred = _predict(model, x)
        kept = {k: _predict(model, (x + p).clamp(0, 1)) == pred for k, p in (("uap", res.v), ("noise", noise))}
        frames.append(pd.DataFrame({"seed": images.seed, "index": _np(index), "model": name, "split": split,
                                    "label": _np(y), "pred": _np(pred), "uap": _np(kept["uap"]),
                                    "noise": _np(kept["noise"])}))
        for kind, p in (("uap", res.v), ("noise", noise)):
            rows.append({"model": name, "split": split, "perturbation": kind, "n": len(x),
                         "fooling_rate": 100 * fooling_rate(model, x, p), "linf": p.abs().max().item(),
                         "l2": p.norm().item(), "passes": len(res.history), "converged": res.converged})
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True), res.v, res.history

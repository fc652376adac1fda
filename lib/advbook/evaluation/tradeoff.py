"""LEC-T1, the trade-off: standard and PGD-trained models over training-set sizes and budgets.

The lecture's figure (Balasubramanian, Lecture 76, slide at 39:57) is Figure 1 of Raghunathan et
al. (2019), *Adversarial Training Can Hurt Generalization* (arXiv 1906.06032): on CIFAR-10, for
L-inf PGD adversarial training at eps = 1, 2, 3, 4/255, the **standard** test error of the
adversarially trained model minus the standard test error of the standardly trained model (both on
clean test images), against the number of labelled training samples (log axis). The authors'
code for this plot, released with their ICML 2020 follow-up (arXiv 2002.10716; repository
p-lambda/robust_tradeoff, ``cifar/sample_sizes_plotter.py``), labels the axis
"Std Err(AT) - Std Err(Std) (%)"; "the reference code" below is that repository. The lecture
calls it "the difference between adversarial error and the standard error" and reads eps as the
strength of an attack; in the figure eps is the *training* budget and no attack is involved in
the y-axis. :func:`gap_table` gives both the paper's
gap (``gap``) and the lecture's literal reading (``rob_minus_std``: the AT model's robust error at
its own eps minus its standard error).

* :func:`tradeoff_models` trains, for every size ``n``, one standard model and one PGD-AT model
  per eps through the cached loop (:func:`advbook.training.train.train_model`), so a model is
  trained once and shared by every page with the same settings.
* :func:`tradeoff_flags` gives per-image correct flags: clean, and under L-inf PGD at the model's
  training eps and at every eps of a grid (for the clean-vs-robust curve), through
  :func:`advbook.evaluation.evaluate.evaluate`, whose flags are cached per model.
* :func:`gap_table` and :func:`accuracy_table` are point estimates only; intervals and verdicts
  belong to the claims engine (:func:`advbook.analysis.claims.gap_trend`).
* For the page (``notebooks/15_lec_tradeoff.ipynb``): :func:`robust_flags` attacks only what the
  page shows (every model of the largest size over an eps grid, every other AT model at its own
  eps), :func:`label_models` names models, budgets and sizes so that a claim can say "the largest
  training set" in every profile, :func:`gap_summary` puts both gaps of every (size, eps) in one
  row, :func:`accuracy_grid` gives the clean-vs-robust table and :func:`training_summary` what was
  trained.

Choices, each documented where it is made:

* **Nested, balanced subsets.** ``n // classes`` images per class from
  :func:`advbook.data.cifar.balanced_subset` with one seed for every size. That function takes
  the first ``k`` of one seeded permutation per class, so the subset of a smaller ``n`` is contained
  in that of a larger one: a larger set adds images and changes nothing else, so the images that
  happen to be drawn are not a second difference between two sizes.
* **Equal gradient steps.** ``params["epochs"]`` is the number of epochs at the largest size; a
  model on ``n`` images trains ``round(epochs * n_max / n)`` epochs, so every model takes about
  the same number of steps, standard and adversarial alike. The reference code fixes the steps per
  epoch at ``ceil(50000 / batch)`` whatever the labelled fraction
  (``cifar/code/train_trades_cifar10_semisup.py``), so its adversarially trained models take the
  same number of steps at every size; without that a small set would get a fraction of the
  optimisation, and the gap at small ``n`` would measure under-training.
* **Step size ``2.5 * eps / steps``** for training and evaluation: ``steps`` steps then cover 2.5
  eps, more than the ball's diameter 2 eps, so from the random start any point of the ball is in
  reach. The reference code trains with 10 steps of a fixed 0.007 for every eps (its default, larger
  than eps = 1/255 itself); a step proportional to eps keeps the attack equally strong relative to
  its budget.
* **One training seed per call.** The intervals of the claims engine are over test images for the
  models trained; how much the gap moves between training seeds only several seeds show (the
  reference plots the mean of 2 trials per point with a standard-error band).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from advbook.core import cache
from advbook.data.cifar import Dataset, balanced_subset
from advbook.evaluation import evaluate
from advbook.training.train import TrainConfig, TrainedModel, train_model

__all__ = ["STEP_FACTOR", "step_size", "training_subsets", "epochs_for", "tradeoff_config", "tradeoff_models",
           "tradeoff_flags", "gap_table", "accuracy_table", "FLAG_COLUMNS", "robust_flags", "eps_label",
           "label_models", "gap_summary", "accuracy_grid", "training_summary"]

STEP_FACTOR = 2.5   # PGD step = STEP_FACTOR * eps / steps (module docstring)
FLAG_COLUMNS = ("n", "train_eps", "eval_eps", "evaluation", "index", "correct")
_EPS_RTOL = 1e-6    # two budgets this close are one (a grid value and a training value written differently)


def step_size(eps: float, steps: int) -> float:
    """The PGD step for budget ``eps`` in ``steps`` steps: ``2.5 * eps / steps``."""
    if steps < 1 or not eps > 0:
        raise ValueError(f"steps must be >= 1 and eps > 0, got steps={steps}, eps={eps}")
    return STEP_FACTOR * eps / steps


def _check_sizes(sizes, num_classes: int) -> list[int]:
    sizes = sorted(int(n) for n in sizes)
    bad = [n for n in sizes if n < num_classes or n % num_classes]
    if not sizes or bad or len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be distinct positive multiples of the {num_classes} classes, got {sizes}")
    return sizes


def training_subsets(labels: torch.Tensor, *, sizes, seed: int) -> dict[int, torch.Tensor]:
    """size -> sorted indices of a class-balanced training subset of that size, nested (the subset
    of a smaller size lies inside that of a larger one, see the module docstring)."""
    num_classes = len(torch.unique(labels))
    return {n: balanced_subset(labels, n_per_class=n // num_classes, seed=seed)
            for n in _check_sizes(sizes, num_classes)}


def epochs_for(n: int, *, epochs: int, largest: int) -> int:
    """Epochs for ``n`` training images so that it takes about as many steps as ``epochs`` epochs
    on ``largest`` images (at least 1)."""
    return max(1, round(epochs * largest / n))


def tradeoff_config(params: dict, *, n: int, largest: int, eps: float) -> TrainConfig:
    """The TrainConfig of the model on ``n`` images: standard for ``eps == 0``, else PGD-AT at ``eps``
    with ``params["at_steps"]`` steps of :func:`step_size`. Reads ``epochs``, ``batch_size``,
    ``lr``, ``weight_decay`` and ``at_steps``."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0 (0: standard training), got {eps}")
    schedule = dict(epochs=epochs_for(n, epochs=params["epochs"], largest=largest),
                    batch_size=params["batch_size"], lr=params["lr"], weight_decay=params["weight_decay"])
    if eps == 0:
        return TrainConfig.build(**schedule)
    return TrainConfig.build(objective="pgd_at", at_eps=eps, at_step_size=step_size(eps, params["at_steps"]),
                             at_steps=params["at_steps"], **schedule)


def tradeoff_models(*, dataset: Dataset, sizes, eps_list, params: dict, seed: int, device,
                    on_model=None) -> dict[tuple[int, float], TrainedModel]:
    """Train (or load) one standard and one PGD-AT model per eps of ``eps_list`` on every training-set
    size of ``sizes``: ``(n, eps) -> TrainedModel``, with ``eps = 0.0`` for the standard model.

    The subsets come from ``params["seed"]`` (the same data for every training ``seed``, as in
    :func:`advbook.training.defenses.train_defenses`); ``params`` also gives ``model`` and the
    settings :func:`tradeoff_config` reads. ``on_model`` sees each model (e.g. a run's
    ``use_model`` for provenance). Sizes and budgets are checked before anything trains."""
    eps_list = [float(e) for e in eps_list]
    if not eps_list or any(not e > 0 for e in eps_list):
        raise ValueError(f"eps_list must hold budgets > 0 (the standard model is always trained), got {eps_list}")
    subsets = training_subsets(dataset.train.labels, sizes=sizes, seed=params["seed"])
    largest = max(subsets)
    configs = {(n, eps): tradeoff_config(params, n=n, largest=largest, eps=eps)
               for n in subsets for eps in [0.0, *eps_list]}
    out = {}
    for (n, eps), cfg in configs.items():
        out[(n, eps)] = train_model(model_name=params["model"], dataset=dataset, cfg=cfg, seed=seed,
                                    train_index=subsets[n], device=device)
        if on_model is not None:
            on_model(out[(n, eps)])
    return out


def _budgets(train_eps: float, grid) -> list[float]:
    """The model's own budget (if trained adversarially) first, then the grid's other values."""
    out = [train_eps] if train_eps > 0 else []
    for e in grid:
        if not any(math.isclose(e, o, rel_tol=_EPS_RTOL) for o in out):
            out.append(e)
    return out


def tradeoff_flags(models: dict[tuple[int, float], TrainedModel], *, x: torch.Tensor, y: torch.Tensor,
                   index: torch.Tensor, eval_eps_list=(), own_eps: bool = True, steps: int = 10, seed: int = 0,
                   batch_size: int = 500) -> pd.DataFrame:
    """Per-image correct flags of every model of :func:`tradeoff_models` on test images ``x`` in
    [0, 1] (labels ``y``, positions ``index`` in the test set): clean (``evaluation = "natural"``,
    ``eval_eps = 0``) and under L-inf PGD (random start, all ``steps`` steps of :func:`step_size`,
    ``seed``) at the model's training eps (with ``own_eps``) and at each eps of ``eval_eps_list``.

    A long frame with :data:`FLAG_COLUMNS` (``correct`` boolean), one row per (model, evaluation,
    image). As everywhere in :mod:`~advbook.evaluation.evaluate`, only clean-correct images are
    attacked, so a robust flag implies a clean one. Flags are cached per model key and test subset.
    The standard-error gap needs clean flags only: ``own_eps=False`` with no grid gives them on
    many images at the cost of a forward pass, and a second call with PGD on a subset the rest
    (keep the two frames apart: the subset's clean flags are in both)."""
    grid = [float(e) for e in eval_eps_list]
    if steps < 1 or any(not e > 0 for e in grid):
        raise ValueError(f"steps must be >= 1 and every eval eps > 0, got steps={steps}, eval_eps_list={grid}")
    if not len(x) == len(y) == len(index):
        raise ValueError(f"x, y and index must have one length, got {len(x)}, {len(y)} and {len(index)}")
    tag = cache.stable_hash(index.tolist())
    positions = index.cpu().numpy()
    parts = []
    for (n, train_eps), m in models.items():
        budgets = _budgets(float(train_eps) if own_eps else 0.0, grid)
        attacks = {f"pgd:{e:.10g}": dict(eps=e, step_size=step_size(e, steps), steps=steps, seed=seed) for e in budgets}
        res = evaluate.evaluate(m.model, x, y, attacks=attacks, batch_size=batch_size,
                                resume_dir=cache.cache_dir("evals") / m.key / tag)
        for name, eps in [("natural", 0.0), *zip(attacks, budgets)]:
            parts.append(pd.DataFrame({"n": n, "train_eps": float(train_eps), "eval_eps": eps,
                                       "evaluation": name.split(":")[0], "index": positions,
                                       "correct": res.robust[name].to_numpy(bool)}))
    return pd.concat(parts, ignore_index=True)[list(FLAG_COLUMNS)]


def _pair_keys(flags: pd.DataFrame) -> list[str]:
    return ["seed", "index"] if "seed" in flags else ["index"]


def _vector(flags: pd.DataFrame, *, n, train_eps: float, evaluation: str, eval_eps: float) -> pd.Series:
    """One model's flags under one evaluation, indexed by image (and seed, where there is one)."""
    close = lambda column, value: np.isclose(flags[column], value, rtol=_EPS_RTOL, atol=0)
    rows = flags[(flags["n"] == n) & close("train_eps", train_eps) & (flags["evaluation"] == evaluation)
                 & close("eval_eps", eval_eps)]
    return rows.set_index(_pair_keys(flags))["correct"].astype(bool)


def gap_table(flags: pd.DataFrame) -> pd.DataFrame:
    """Per training-set size ``n`` and training eps > 0, in % of the images all three flags exist for:
    ``std_err_standard`` (clean error of the standard model), ``std_err_at`` (clean error of the
    AT model), ``rob_err_at`` (its error under PGD at its own eps; NaN when not evaluated), ``gap``
    = std_err_at - std_err_standard (Raghunathan et al. 2019, Fig. 1) and ``rob_minus_std`` =
    rob_err_at - std_err_at (the lecture's wording). Point estimates only (no intervals)."""
    rows = []
    for n in sorted(flags["n"].unique()):
        standard = _vector(flags, n=n, train_eps=0.0, evaluation="natural", eval_eps=0.0)
        for eps in sorted(flags.loc[(flags["n"] == n) & (flags["train_eps"] > 0), "train_eps"].unique()):
            clean = _vector(flags, n=n, train_eps=eps, evaluation="natural", eval_eps=0.0)
            robust = _vector(flags, n=n, train_eps=eps, evaluation="pgd", eval_eps=eps)
            cols = {"standard": standard, "clean": clean} | ({"robust": robust} if len(robust) else {})
            both = pd.concat(cols, axis=1, join="inner")
            err = {k: 100 * (1 - both[k].mean()) if len(both) else math.nan for k in cols}
            rob = err.get("robust", math.nan)
            rows.append({"n": int(n), "eps": float(eps), "images": len(both), "std_err_standard": err["standard"],
                         "std_err_at": err["clean"], "rob_err_at": rob, "gap": err["clean"] - err["standard"],
                         "rob_minus_std": rob - err["clean"]})
    return pd.DataFrame(rows, columns=["n", "eps", "images", "std_err_standard", "std_err_at", "rob_err_at", "gap",
                                       "rob_minus_std"])


def accuracy_table(flags: pd.DataFrame) -> pd.DataFrame:
    """Accuracy in % per (n, train_eps, evaluation, eval_eps) with its number of images: the
    clean-vs-robust curve of part 1 (accuracy against eval_eps, one line per training eps)."""
    keys = ["n", "train_eps", "evaluation", "eval_eps"]
    g = flags.groupby(keys, sort=True)["correct"]
    return pd.DataFrame({"accuracy": 100 * g.mean(), "images": g.size()}).reset_index()


# ---------------------------------------------------------------------------------------------
# What the page needs besides the flags: which models to attack, names, and its two tables
# ---------------------------------------------------------------------------------------------

def robust_flags(models: dict[tuple[int, float], TrainedModel], *, x: torch.Tensor, y: torch.Tensor,
                 index: torch.Tensor, eval_eps_list, steps: int = 10, seed: int = 0,
                 batch_size: int = 500) -> pd.DataFrame:
    """The PGD flags the page shows, and no more: every model of the largest training set
    (standard and AT) clean and under PGD at every eps of ``eval_eps_list`` and at its own training
    eps (the clean-vs-robust curve), every AT model of the other sizes clean and at its own eps (the
    lecture's gap at every size), and the standard models of the other sizes clean only (so that
    :func:`gap_table` has both gaps at every size on these images). One frame as
    :func:`tradeoff_flags` writes it; no (model, evaluation, image) twice."""
    if not models:
        raise ValueError("models is empty: pass the result of tradeoff_models")
    largest = max(n for n, _ in models)
    top = {key: m for key, m in models.items() if key[0] == largest}
    rest = {key: m for key, m in models.items() if key[0] != largest}
    common = dict(x=x, y=y, index=index, steps=steps, seed=seed, batch_size=batch_size)
    parts = [tradeoff_flags(top, eval_eps_list=eval_eps_list, **common)]
    if rest:
        parts.append(tradeoff_flags(rest, **common))
    return pd.concat(parts, ignore_index=True)


def eps_label(eps: float) -> str:
    """A budget in units of 1/255, as the papers write it: ``4/255``, ``0.5/255``."""
    return f"{255 * float(eps):.3g}/255"


def _model_label(eps: float) -> str:
    return "standard" if eps == 0 else f"AT {eps_label(eps)}"


def _rank(value, ordered: list, what: str) -> str:
    """``value``'s place among the sorted ``ordered``: "smallest", "middle" or "largest" ``what``
    ("only ``what``" if alone)."""
    if len(ordered) == 1:
        return f"only {what}"
    place = "smallest" if value == ordered[0] else "largest" if value == ordered[-1] else "middle"
    return f"{place} {what}"


def label_models(flags: pd.DataFrame) -> pd.DataFrame:
    """``flags`` (from :func:`tradeoff_flags`) with three label columns: ``model`` ("standard", "AT
    4/255"), ``budget`` (the training eps among those of the frame: "standard", "smallest eps",
    "middle eps", "largest eps", or "only eps" when there is one) and ``size`` (the training-set
    size among the frame's: "smallest n", "middle n", "largest n" or "only n"). The claims name
    models by these labels, so that one claim reads "the largest training set" or "the smallest
    eps" in every profile, whatever the sizes and budgets run."""
    budgets = sorted(e for e in flags["train_eps"].unique() if e > 0)
    sizes = sorted(flags["n"].unique())
    out = flags.copy()
    out["model"] = out["train_eps"].map(_model_label)
    out["budget"] = out["train_eps"].map(lambda e: "standard" if e == 0 else _rank(e, budgets, "eps"))
    out["size"] = out["n"].map(lambda n: _rank(n, sizes, "n"))
    return out


def gap_summary(clean: pd.DataFrame, robust: pd.DataFrame) -> pd.DataFrame:
    """One row per (training-set size ``n``, training ``eps``) with both gaps, in %: from ``clean``
    (clean flags, typically on many test images) the paper's ``gap`` = ``std_err_at`` -
    ``std_err_standard`` on ``clean_images``; from ``robust`` (:func:`robust_flags`, on a subset)
    the AT model's clean error there (``std_err_at_pgd``), its PGD error at its own eps
    (``rob_err_at``) and the lecture's ``rob_minus_std`` = ``rob_err_at`` - ``std_err_at_pgd`` on
    ``pgd_images``. ``eps_255`` is eps in units of 1/255. Point estimates (see :func:`gap_table`)."""
    paper = gap_table(clean)[["n", "eps", "images", "std_err_standard", "std_err_at", "gap"]]
    lecture = gap_table(robust)[["n", "eps", "images", "std_err_at", "rob_err_at", "rob_minus_std"]]
    both = paper.rename(columns={"images": "clean_images"}).merge(
        lecture.rename(columns={"images": "pgd_images", "std_err_at": "std_err_at_pgd"}), on=["n", "eps"], how="outer")
    both.insert(2, "eps_255", 255 * both["eps"])
    return both.sort_values(["eps", "n"], ignore_index=True)


def accuracy_grid(flags: pd.DataFrame) -> pd.DataFrame:
    """The clean-vs-robust table of the largest training set: one row per model ("standard", "AT
    4/255", by training eps), a ``clean`` column and one ``PGD e/255`` column per attack budget,
    accuracy in % on the images of ``flags`` (their number in ``images``)."""
    acc = accuracy_table(flags)
    acc = acc[acc["n"] == acc["n"].max()].sort_values(["train_eps", "eval_eps"])
    acc["model"] = acc["train_eps"].map(_model_label)
    acc["column"] = [("clean" if ev == "natural" else f"PGD {eps_label(e)}")
                     for ev, e in zip(acc["evaluation"], acc["eval_eps"])]
    columns = list(dict.fromkeys(acc["column"]))
    wide = acc.pivot(index="model", columns="column", values="accuracy")
    wide = wide.loc[list(dict.fromkeys(acc["model"])), columns]
    wide.columns.name = None
    wide["images"] = acc.groupby("model")["images"].max()
    return wide


def training_summary(models: dict[tuple[int, float], TrainedModel]) -> pd.DataFrame:
    """What :func:`tradeoff_models` trained: per model its training-set size, label, epochs,
    gradient steps (one per batch, the last one partial), training seconds and whether it came from
    the cache."""
    rows = []
    for (n, eps), m in sorted(models.items()):
        cfg = m.meta["config"]
        rows.append({"n": int(n), "model": _model_label(float(eps)), "epochs": int(cfg["epochs"]),
                     "steps": int(cfg["epochs"]) * math.ceil(int(n) / int(cfg["batch_size"])),
                     "seconds": float(m.meta["train_seconds"]), "from cache": bool(m.from_cache)})
    return pd.DataFrame(rows)

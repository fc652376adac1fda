"""The AGK chapter's studies beyond AGK-T1's table (:mod:`advbook.evaluation.agk`): the training time
of Table 4 (AGK-T4), AutoAttack for two widths and two training lengths (AGK-T2), and the surrogate
models of the transfer attacks (AGK-T5).

* :func:`time_methods` times the methods of Table 4 **now, on the machine that runs the page**, all
  interleaved (:func:`advbook.training.timing.time_training`: fresh models, one warm-up minibatch,
  ``timing_repeats`` rounds of ``timing_batches`` minibatches). Timing needs no trained model, so
  each method can be timed with the attack steps Table 4 lists for it (:data:`TABLE4_STEPS`: the
  one-step methods 1, AT and SML 7, AGKD-BML 2, as in the main paper) whatever steps the page's
  models were trained with. :func:`time_table` gives seconds per epoch and the ratio to AT's.
* :func:`width_study` trains AGKD-BML for each architecture of ``P["models"]`` (narrower first) and
  each training length of ``P["epoch_points"]`` (shorter first), each from its own naturally
  trained teacher of the same architecture (trained once, with the page's ``epochs``), and
  evaluates each under AutoAttack. The supplement's two learning-rate *decay points* (100 and 150,
  training stopped 5 epochs after) have no counterpart in the book's one-cycle schedule; the
  nearest is the length of the run, over which the one cycle then stretches. The per-image flags
  carry ``role`` (narrower, wider) and ``length`` (shorter, longer), so the claims do not depend on
  the profile's architectures.
* :func:`train_surrogates` trains the two source models of AGK-T5's transfer attacks naturally, on
  the chapter's images with its schedule, keyed ``vgg`` and ``wrn`` (the supplement's VGG-16 and
  WideResNet; the profile says which architectures stand in for them).
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from advbook.data.cifar import Dataset, to_float
from advbook.evaluation import agk
from advbook.evaluation.evaluate import evaluate
from advbook.evaluation.rrm import test_images   # the book's class-balanced test images (re-exported)
from advbook.training import timing
from advbook.training.train import TrainConfig, TrainedModel, train_model

__all__ = ["TABLE4_STEPS", "SURROGATE_ROLES", "test_images", "training_images", "tsne_images", "columns_of", "time_methods", "time_table",
           "time_beside_rows", "paper_ratios", "width_study", "train_surrogates"]

TABLE4_STEPS = {"bilateral": 1, "feature_scatter": 1, "at": 7, "sml": 7, "agkd_bml": 2}   # Table 4's "# of steps"
SURROGATE_ROLES = ("vgg", "wrn")   # AGK-T5's two source models, in the order of P["surrogates"]


def training_images(P: dict, dataset: Dataset, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The chapter's training images (:func:`~advbook.evaluation.agk.train_index`) in [0, 1] and their
    labels, on ``device``: the k-NN's neighbours in AGK-T6 and AGK-F1."""
    index = agk.train_index(P, dataset)
    return to_float(dataset.train.images[index]).to(device), dataset.train.labels[index].to(device)


def tsne_images(P: dict, dataset: Dataset, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AGK-F1's test images: ``tsne_per_class`` of every class (seeded by ``seed``), as (index, x, y):
    :func:`test_images` with that many."""
    return test_images(P | {"n_eval": P["tsne_per_class"] * len(dataset.classes)}, dataset, device)


def columns_of(results: pd.DataFrame, evaluations) -> pd.DataFrame:
    """The rows of ``results`` for ``evaluations`` only (a page shows a few columns beside the paper's);
    an evaluation the results lack is refused, naming those they have."""
    missing = [e for e in evaluations if e not in set(results["evaluation"])]
    if missing:
        raise ValueError(f"no results for {', '.join(missing)}; evaluated: {', '.join(results['evaluation'].unique())}")
    return results[results["evaluation"].isin(list(evaluations))]


def _timed_config(name: str, P: dict, *, table4_steps: bool) -> TrainConfig:
    cfg = agk.method_config(name, P)
    if not table4_steps or name not in TABLE4_STEPS or "at_steps" not in cfg.key_fields():
        return cfg
    steps = TABLE4_STEPS[name]
    # the same budget; the step scaled so that the steps span what the page's steps span
    step_size = P["at_eps"] if name in agk.ONE_STEP else P["at_step_size"] * P["at_steps"] / steps
    return cfg.replace(at_steps=steps, at_step_size=step_size)


def time_methods(names, *, P: dict, dataset: Dataset, teacher: TrainedModel | None, device,
                 table4_steps: bool = True) -> pd.DataFrame:
    """One row per (method, round) of the interleaved timing (:func:`~advbook.training.timing.time_training`)
    of ``names`` on the chapter's training images, each with the attack steps of :data:`TABLE4_STEPS`
    (``table4_steps``; the step size scaled so the steps span the same distance), else the page's.
    Adds ``steps``, the training attack steps each method was timed with. Unknown names are refused
    (by :func:`~advbook.evaluation.agk.method_config`) before anything is timed."""
    configs = {n: _timed_config(n, P, table4_steps=table4_steps) for n in names}
    runs = {n: {"model_name": P["model"], "cfg": cfg, "teacher": teacher if n in agk.NEEDS_TEACHER else None}
            for n, cfg in configs.items()}
    rows = pd.DataFrame(timing.time_training(runs=runs, dataset=dataset, train_index=agk.train_index(P, dataset),
                                             n_batches=P["timing_batches"], repeats=P["timing_repeats"],
                                             seed=P["seed"], device=device))
    rows["steps"] = [configs[m].key_fields().get("at_steps", 0) for m in rows["method"]]
    return rows


def time_table(timings: pd.DataFrame, *, reference: str = "at") -> pd.DataFrame:
    """AGK-T4 as measured: per method its attack steps, median seconds per epoch over the rounds, the
    ratio to ``reference``'s median measured in the same run, epochs and seconds per run (the page's
    epochs), and the device."""
    agg = timings.groupby("method", sort=False).agg(
        steps=("steps", "first"), seconds_per_epoch=("seconds_per_epoch", "median"), epochs=("epochs", "first"),
        seconds_per_run=("seconds_per_run", "median"), rounds=("repeat", "nunique"), device=("device", "first"))
    ref = agg.loc[reference, "seconds_per_epoch"] if reference in agg.index else math.nan
    agg.insert(2, "ratio_to_at", agg["seconds_per_epoch"] / ref)
    return agg.reset_index()


def time_beside_rows(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`time_table` as (method, quantity, value) rows for the quantities the supplement's Table 4
    also has: steps, seconds_per_epoch, ratio_to_at (report.cells_beside puts the paper's beside them)."""
    return table.melt(id_vars=["method"], value_vars=["steps", "seconds_per_epoch", "ratio_to_at"],
                      var_name="quantity", value_name="value")


def paper_ratios(paper: pd.DataFrame) -> pd.DataFrame:
    """The supplement's Table 4 (``report.paper_table("AGK-T4")``: method, quantity, value) as (method,
    ratio): seconds per epoch over AT's."""
    part = paper[paper["quantity"] == "ratio_to_at"]
    return pd.DataFrame({"method": part["method"].to_numpy(), "ratio": part["value"].astype(float).to_numpy()})


def width_study(P: dict, *, dataset: Dataset, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, device,
                on_model=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AGKD-BML of each architecture in ``P["models"]`` trained for each of ``P["epoch_points"]``
    epochs, evaluated under AutoAttack (:func:`~advbook.evaluation.agk.attacks_for`'s ``autoattack``)
    on the test images ``x``. Returns the rows (model, role, epochs, length, evaluation, accuracy,
    n, seed, seconds, ran) and the per-image flags (seed, index, model, role, epochs, length,
    evaluation, robust)."""
    roles, lengths = ("narrower", "wider"), ("shorter", "longer")
    if len(P["models"]) != 2 or len(P["epoch_points"]) != 2:
        raise ValueError(f"width_study needs two models and two epoch points, got {P['models']!r} and "
                         f"{P['epoch_points']!r}")
    attack = {"autoattack": agk.attacks_for(P, autoattack=True)["autoattack"]}
    rows, flags = [], []
    for arch, role in zip(P["models"], roles):
        base = P | {"model": arch, "teacher_epochs": P["epochs"]}
        teacher = agk.train_teacher(base, dataset=dataset, device=device)
        for epochs, length in zip(P["epoch_points"], lengths):
            (m,) = agk.train_methods(["agkd_bml"], P=base | {"epochs": epochs}, dataset=dataset, teacher=teacher,
                                     device=device, on_model=on_model).values()
            res = evaluate(m.model, x, y, attacks=attack, batch_size=P.get("eval_batch_size", 500))
            robust = res.robust["autoattack"].to_numpy(bool)
            keys = {"model": arch, "role": role, "epochs": epochs, "length": length, "evaluation": "autoattack"}
            rows.append({**keys, "accuracy": 100 * robust.mean(), "n": len(robust), "seed": P["seed"],
                         "seconds": res.seconds.get("autoattack", 0.0), "ran": res.ran["autoattack"]})
            flags.append(pd.DataFrame({"seed": P["seed"], "index": index.cpu().numpy(), **keys, "robust": robust}))
    return pd.DataFrame(rows), pd.concat(flags, ignore_index=True)


def train_surrogates(P: dict, *, dataset: Dataset, device, on_model=None) -> dict[str, TrainedModel]:
    """The naturally trained source models of AGK-T5's transfer attacks: ``P["surrogates"]`` (two
    architectures) under the keys of :data:`SURROGATE_ROLES`, each trained (or loaded) with the
    teacher's configuration (:func:`~advbook.evaluation.agk.teacher_config`) on the chapter's images."""
    if len(P["surrogates"]) != len(SURROGATE_ROLES):
        raise ValueError(f"surrogates must name {len(SURROGATE_ROLES)} architectures (for "
                         f"{', '.join(SURROGATE_ROLES)}), got {P['surrogates']!r}")
    out = {}
    for role, arch in zip(SURROGATE_ROLES, P["surrogates"]):
        out[role] = train_model(model_name=arch, dataset=dataset, cfg=agk.teacher_config(P), seed=P["seed"],
                                train_index=agk.train_index(P, dataset), device=device)
        if on_model is not None:
            on_model(out[role])
    return out

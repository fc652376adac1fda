"""The adversarial-training defenses of the VIR chapter, trained through one cached loop.

A defense is an objective of :mod:`advbook.objectives` plus the hyperparameters the VIR paper
(§5.3) gives it. :func:`train_defenses` trains a list of them on the same data with the same
schedule and seed, base objectives first, so that every reweighting method forks from the
cached burn-in of its base (PGD-AT for GAIRAT, MAIL-AT and VIR-AT; TRADES for VIR-TRADES,
when both use the same TRADES weight) instead of training it again.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from . import cache, evaluate
from .data import Dataset, balanced_subset, to_float
from .objectives import OBJECTIVES
from .train import TrainConfig, TrainedModel, train_model

__all__ = ["DEFENSES", "defense_config", "train_defenses", "class_weight_sums", "confusion"]

# defense -> (objective, its hyperparameters: VIR §5.3 and the methods' reference codes)
DEFENSES: dict[str, tuple[str, dict]] = {
    "standard": ("standard", {}),
    "at": ("pgd_at", {}),
    "trades": ("trades", {}),
    "mart": ("mart", {"mart_beta": 5.0}),
    "gairat": ("gairat", {"gair_lambda": -1.0}),
    "mail_at": ("mail_at", {"mail_bias": -1.5, "mail_slope": 1.0}),
    "vir_at": ("vir_at", {"vir_alpha": 7.0, "vir_gamma": 10.0, "vir_beta": 0.007}),
    "vir_trades": ("vir_trades", {"vir_alpha": 8.0, "vir_gamma": 3.0, "vir_beta": 1.6}),
}


def defense_config(name: str, params: dict, **overrides) -> TrainConfig:
    """The TrainConfig of defense ``name`` under experiment ``params`` (schedule, attack, burn-in
    and TRADES weights), with ``overrides`` (e.g. ``vir_use="sv"`` or ``vir_beta=0.1``) last."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; valid: {', '.join(DEFENSES)}")
    objective, hyper = DEFENSES[name]
    common = dict(epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                  weight_decay=params["weight_decay"], at_eps=params["at_eps"], at_step_size=params["at_step_size"],
                  at_steps=params["at_steps"], reweight_from=params["reweight_from"],
                  trades_beta=params["vir_trades_beta"] if objective == "vir_trades" else params["trades_beta"])
    cfg = TrainConfig(objective=objective, **{**common, **hyper, **overrides})
    if cfg.objective not in OBJECTIVES:  # pragma: no cover - DEFENSES and OBJECTIVES are kept in step
        raise ValueError(f"defense {name!r} names unknown objective {cfg.objective!r}")
    return cfg


def train_defenses(names, *, params: dict, dataset: Dataset, seed: int, device,
                   variants: dict[str, tuple[str, dict]] | None = None) -> dict[str, TrainedModel]:
    """Train (or load) each defense in ``names`` and each variant (label -> (defense, overrides)),
    bases first, each base saving its state at ``reweight_from`` for the forks."""
    index = balanced_subset(dataset.train.labels, n_per_class=params["train_per_class"], seed=params["seed"])
    jobs = {n: (n, {}) for n in names} | dict(variants or {})
    configs = {label: defense_config(d, params, **o) for label, (d, o) in jobs.items()}
    order = sorted(configs, key=lambda label: OBJECTIVES[configs[label].objective].base is not None)
    share = (params["reweight_from"],) if 0 < params["reweight_from"] < params["epochs"] else ()
    return {label: train_model(model_name=params["model"], dataset=dataset, cfg=configs[label], seed=seed,
                               train_index=index, device=device, share_epochs=share)
            for label in order}


def class_weight_sums(trained: TrainedModel, labels: torch.Tensor, *, num_classes: int) -> pd.DataFrame:
    """VIR Fig. 3: per reweighted epoch, the sum of the recorded sample weights of each class,
    as a share of the epoch's total. ``labels`` are the dataset's training labels."""
    rows = []
    for epoch, rec in sorted(trained.records().items()):
        w = rec["w"].double()
        cls = labels[rec["index"]]
        sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, cls, w)
        rows += [{"epoch": epoch, "class": c, "weight_sum": float(sums[c]), "share": float(sums[c] / sums.sum())}
                 for c in range(num_classes)]
    return pd.DataFrame(rows)


def confusion(labels, predictions, *, num_classes: int) -> np.ndarray:
    """Row-normalised confusion matrix in % (row = true class, column = predicted class)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    m = np.zeros((num_classes, num_classes))
    np.add.at(m, (labels, predictions), 1)
    return 100 * m / np.maximum(m.sum(1, keepdims=True), 1)


def evaluate_models(models: dict, *, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, attacks: dict,
                    batch_size: int, **labels) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run :func:`advbook.evaluate.evaluate` on every ``name -> TrainedModel`` of ``models`` with the
    same inputs (``index``: their positions in the test set). Flags are cached per model key and
    subset, so a model that another page already evaluated costs nothing. Returns (accuracy rows,
    per-sample flags, seconds), each with a ``model`` column and the extra ``labels`` columns."""
    tag = cache.stable_hash(index.tolist())
    rows, flags, seconds = [], [], []
    for name, m in models.items():
        res = evaluate.evaluate(m.model, x, y, attacks=attacks, batch_size=batch_size,
                                resume_dir=cache.cache_dir("evals") / m.key / tag)
        rows += [{**labels, "model": name, "evaluation": e, "accuracy": a} for e, a in res.accuracy().items()]
        flags.append(res.robust.assign(**labels, model=name, index=index.numpy(), label=y.cpu().numpy()))
        seconds += [{**labels, "model": name, "evaluation": e, "seconds": s} for e, s in res.seconds.items()]
    return pd.DataFrame(rows), pd.concat(flags, ignore_index=True), pd.DataFrame(seconds)


def attack_suite(params: dict, names: tuple[str, ...] = ("fgsm", "pgd", "cw", "fmn", "autoattack", "mde")) -> dict:
    """The evaluation settings of VIR §5.4 from a ``vir_main`` parameter set, for the listed
    evaluations (white box: fgsm, pgd, cw, fmn, autoattack, mde; black box: square, spsa)."""
    eps, seed = params["eval_eps"], params["seed"]
    every = {
        "fgsm": dict(eps=eps),
        "pgd": dict(eps=eps, step_size=params["pgd_step_size"], steps=params["pgd_steps"], seed=seed),
        "cw": dict(eps=eps, step_size=params["pgd_step_size"], steps=params["cw_steps"], seed=seed),
        "fmn": dict(eps=eps, steps=params["fmn_steps"]),
        "autoattack": dict(eps=eps, version=params["aa_version"], parts=params["aa_parts"], seed=seed),
        "mde": dict(eps=eps, parts=params["mde_parts"], steps=params["mde_steps"],
                    change_point=params["mde_change_point"], n_targets=params["mde_targets"], seed=seed),
        "square": dict(eps=eps, n_queries=params["square_queries"], seed=seed),
        "spsa": dict(eps=eps, steps=params["spsa_steps"], samples=params["spsa_samples"], seed=seed),
    }
    return {name: every[name] for name in names}


def train_and_evaluate(names, *, params: dict, dataset: Dataset, seeds: list[int], device, index: torch.Tensor,
                       attacks: dict, on_model=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train ``names`` with ``params`` on ``dataset`` for every seed (cached, shared burn-ins) and
    evaluate them on the test images at ``index``. Returns (accuracy rows without ``worst``,
    per-sample flags), both with ``defense`` and ``seed`` columns; ``on_model`` sees each model
    (e.g. a run's ``use_model`` for provenance)."""
    x = to_float(dataset.test.images[index]).to(device)
    y = dataset.test.labels[index]
    parts = []
    for seed in seeds:
        trained = train_defenses(names, params=params, dataset=dataset, seed=seed, device=device)
        for m in trained.values():
            if on_model is not None:
                on_model(m)
        parts.append(evaluate_models(trained, x=x, y=y, index=index, attacks=attacks,
                                     batch_size=params["eval_batch_size"], seed=seed)[:2])
    results, flags = (pd.concat(p, ignore_index=True).rename(columns={"model": "defense"}) for p in zip(*parts))
    return results[results.evaluation != "worst"], flags

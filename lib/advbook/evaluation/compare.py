"""Evaluating the defenses of :mod:`advbook.training.defenses` on the same test images.

:func:`evaluate_models` runs the evaluation suite on several models with the same inputs and keeps
their per-sample flags (the input of every paired comparison); :func:`train_and_evaluate` trains
them for several seeds first.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from advbook.core import cache
from advbook.core.tensors import to_float
from advbook.data.cifar import Dataset
from advbook.evaluation import evaluate
from advbook.training.defenses import train_defenses

__all__ = ["confusion", "evaluate_models", "attack_suite", "train_and_evaluate"]


def confusion(*, labels, predictions, num_classes: int) -> np.ndarray:
    """Row-normalised confusion matrix in % (row = true class, column = predicted class).
    Keyword-only: the two arrays look alike, and a swap would transpose the matrix silently."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    m = np.zeros((num_classes, num_classes))
    np.add.at(m, (labels, predictions), 1)
    return 100 * m / np.maximum(m.sum(1, keepdims=True), 1)


def evaluate_models(models: dict, *, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, attacks: dict,
                    batch_size: int, **labels) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run :func:`advbook.evaluation.evaluate.evaluate` on every ``name -> TrainedModel`` of ``models`` with the
    same inputs (``index``: their positions in the test set). Flags are cached per model key and
    subset, so a model that another page already evaluated costs nothing. Returns (accuracy rows,
    per-sample flags, seconds), each with a ``model`` column and the extra ``labels`` columns; the
    accuracy and seconds rows also carry ``ran``, the name of what actually ran
    (:func:`advbook.evaluation.evaluate.display_name`: "APGD-CE" for a reduced AutoAttack)."""
    tag = cache.stable_hash(index.tolist())
    rows, flags, seconds = [], [], []
    for name, m in models.items():
        res = evaluate.evaluate(m.model, x, y, attacks=attacks, batch_size=batch_size,
                                resume_dir=cache.cache_dir("evals") / m.key / tag)
        rows += [{**labels, "model": name, "evaluation": e, "ran": res.ran[e], "accuracy": a}
                 for e, a in res.accuracy().items()]
        flags.append(res.robust.assign(**labels, model=name, index=index.numpy(), label=y.cpu().numpy()))
        seconds += [{**labels, "model": name, "evaluation": e, "ran": res.ran[e], "seconds": s}
                    for e, s in res.seconds.items()]
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

"""Limited-data knowledge distillation (HOL §9).

A robust teacher scores a pool of training images; a transfer set of ``per_class`` images
per class is chosen from it by one of the :data:`SELECTIONS` criteria; a student is trained
on it with the loss of HOL Eq. 5 (:func:`advbook.objectives.kd_loss`, objective ``"kd"``).

* ``random``: uniformly at random within each class (the paper's baseline);
* ``closest``: the smallest DDB to the teacher's boundary within each class (the
  "conventional" criterion, after Heo et al., 2019);
* ``trust``: the highest trust score T (Eq. 3) with respect to the teacher within each class.

Classes are the true labels. Ties are broken by position in the pool, so a selection is a
pure function of the scores (and of the seed, for ``random``).
"""
from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import pandas as pd
import torch

from advbook.analysis import trust
from advbook.data.cifar import Dataset, to_float
from tqdm import tqdm

from advbook.models.predict import predict
from advbook.training.train import TrainConfig, TrainedModel, train_model

__all__ = ["SELECTIONS", "select_transfer_set", "score_pool", "distil_student", "student_accuracy", "distil_grid"]


def _random(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(len(values))[:k]


def _closest(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(values, kind="stable")[:k]


def _highest(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(-values, kind="stable")[:k]


# criterion -> (score column it ranks, or None; how it picks k positions from one class's values)
SELECTIONS: dict[str, tuple[str | None, Callable]] = {
    "random": (None, _random),
    "closest": ("ddb", _closest),
    "trust": ("T", _highest),
}


def select_transfer_set(*, criterion: str, labels, per_class: int, scores: pd.DataFrame | None = None,
                        seed: int = 0) -> torch.Tensor:
    """Positions (into the pool, sorted) of ``per_class`` samples of every class chosen by ``criterion``.

    ``scores`` is a frame with one row per pool sample holding the column the criterion ranks
    (``ddb`` for ``closest``, ``T`` for ``trust``), as returned by :func:`score_pool`.
    """
    if criterion not in SELECTIONS:
        raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(SELECTIONS)}")
    labels = np.asarray(labels)
    column, pick = SELECTIONS[criterion]
    if column is not None and (scores is None or column not in scores):
        raise ValueError(f"criterion {criterion!r} needs a scores frame with column {column!r}")
    if column is not None and len(scores) != len(labels):
        raise ValueError(f"scores has {len(scores)} rows but there are {len(labels)} labels")
    classes, counts = np.unique(labels, return_counts=True)
    if per_class < 1 or per_class > counts.min():
        raise ValueError(f"per_class must be in [1, {counts.min()}] (the smallest class in the pool), got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        values = None if column is None else scores[column].to_numpy(float)[members]
        chosen.append(members[pick(members if values is None else values, per_class, rng)])
    return torch.from_numpy(np.sort(np.concatenate(chosen))).long()


def score_pool(teacher, x: torch.Tensor, *, attack: str, attack_kwargs: dict, attack_batch_size: int,
               batch_size_eval: int) -> pd.DataFrame:
    """Per pool sample, with respect to the teacher: prediction, DDB by ``attack``, flipping
    frequency, and the scores of Eq. 1–3 normalised over the pool (the pool is the set the
    selection ranks, so it is its own reference)."""
    m = trust.measure(teacher, x, attacks={attack: attack_kwargs}, attack_batch_size=attack_batch_size,
                      batch_size_eval=batch_size_eval)
    scores = trust.score_frame(ddb={attack: m["ddb"][attack]}, ff=m["ff"])
    return pd.DataFrame({"teacher_prediction": m["pred"], "ddb": m["ddb"][attack], "flipping_frequency": m["ff"],
                         "d_hat": scores[f"d_hat_{attack}"], "f_hat": scores["f_hat"], "T": scores[f"T_{attack}"]})


def distil_student(*, student: str, dataset: Dataset, teacher: TrainedModel, train_index: torch.Tensor,
                   tau: float, lam: float, epochs: int, batch_size: int, lr: float, weight_decay: float,
                   seed: int, device) -> TrainedModel:
    """Train ``student`` on ``dataset.train[train_index]`` with Eq. 5 against ``teacher`` (cached)."""
    cfg = TrainConfig.build(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, objective="kd",
                            kd_tau=tau, kd_lambda=lam)
    return train_model(model_name=student, dataset=dataset, cfg=cfg, seed=seed, train_index=train_index,
                       device=device, teacher=teacher)


def student_accuracy(model, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """Per-sample correctness (bool tensor) of ``model`` on uint8 or float ``images``."""
    x = images if images.dtype != torch.uint8 else to_float(images)
    return predict(model, x, batch_size=batch_size).argmax(1) == labels


def distil_grid(*, dataset: Dataset, teacher: TrainedModel, pool_index: torch.Tensor, scores: pd.DataFrame,
                budgets, criteria, taus, lam: float, seeds, student: str, epochs: int, batch_size: int,
                lr: float, weight_decay: float, device, eval_images: torch.Tensor,
                eval_labels: torch.Tensor) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """One student per (seed, budget, criterion, tau), each cached, each evaluated on the same images.

    The seed draws the ``random`` selection and the student's weights and data order; the
    other criteria pick the same samples for every seed. Returns ``(results, selections,
    correct, students)``: one row per student (accuracy in %, cache key, train seconds); the pool
    with one boolean column per (criterion, budget, seed) marking the samples chosen; the
    per-image correctness of every student (one column each); and the trained students by
    ``(seed, budget, criterion, tau)``.
    """
    pool_labels = dataset.train.labels[pool_index].numpy()
    rows, chosen, correct, students = [], {}, {}, {}
    grid = list(itertools.product(seeds, budgets, criteria, taus))
    for seed, budget, criterion, tau in tqdm(grid, desc="students", unit="student"):
        name = f"{criterion}_{budget}_s{seed}"
        if name not in chosen:
            positions = select_transfer_set(criterion=criterion, labels=pool_labels, per_class=budget,
                                            scores=scores, seed=seed)
            chosen[name] = np.zeros(len(pool_labels), bool)
            chosen[name][positions.numpy()] = True
        positions = torch.from_numpy(np.flatnonzero(chosen[name])).long()
        trained = distil_student(student=student, dataset=dataset, teacher=teacher,
                                 train_index=pool_index[positions], tau=tau, lam=lam, epochs=epochs,
                                 batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, device=device)
        ok = student_accuracy(trained.model, eval_images, eval_labels).numpy()
        correct[f"{name}_tau{tau:g}"] = ok
        students[(seed, budget, criterion, tau)] = trained
        sel = scores.iloc[positions.numpy()]
        rows.append({"seed": seed, "budget": budget, "criterion": criterion, "tau": tau, "lambda": lam,
                     "accuracy": 100.0 * ok.mean(), "n_transfer": len(positions),
                     "transfer_mean_ddb": sel["ddb"].mean(), "transfer_mean_T": sel["T"].mean(),
                     "transfer_teacher_correct": 100.0 * (sel["teacher_prediction"].to_numpy()
                                                          == pool_labels[positions.numpy()]).mean(),
                     "train_seconds": trained.meta["train_seconds"], "from_cache": trained.from_cache,
                     "key": trained.key})
    selections = pd.DataFrame({"pool_index": pool_index.numpy(), "label": pool_labels, **chosen})
    return pd.DataFrame(rows), selections, pd.DataFrame(correct), students


def selection_summary(pool: pd.DataFrame, labels, *, criteria, per_class: int, seed: int) -> pd.DataFrame:
    """What each criterion's largest transfer set holds, beside the whole pool: size, mean DDB,
    flipping frequency and T, and how often the teacher is right on it (the mechanism §9 relies on)."""
    labels = np.asarray(labels)

    def row(name, chosen):
        sel = pool.iloc[chosen]
        return {"criterion": name, "images": len(chosen), "mean DDB": sel.ddb.mean(),
                "mean flipping frequency": sel.flipping_frequency.mean(), "mean T": sel["T"].mean(),
                "teacher right (%)": 100 * (sel.teacher_prediction.to_numpy() == labels[chosen]).mean()}
    rows = [row(c, select_transfer_set(criterion=c, labels=labels, per_class=per_class, scores=pool,
                                       seed=seed).numpy()) for c in criteria]
    return pd.DataFrame(rows + [row("whole pool", np.arange(len(pool)))]).set_index("criterion")

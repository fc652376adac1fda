"""Per-class damage: confusion matrices of a standard model and of defenses under PGD (VIR Fig. 1-2)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from advbook.evaluation import evaluate
from advbook.evaluation.compare import confusion
from advbook.models.predict import predict

__all__ = ["class_predictions", "confusion_frames", "lowest_classes"]


def class_predictions(models: dict, x: torch.Tensor, y: torch.Tensor, *, natural: str, attacked: list[str],
                      pgd: dict) -> dict[str, torch.Tensor]:
    """Predictions of ``models[natural]`` on the natural images and of every model in ``attacked``
    on its PGD examples (``pgd``: eps, step_size, steps, batch_size, seed), labelled for the figures."""
    preds = {f"{natural} (natural)": predict(models[natural].model, x).argmax(1)}
    for name in attacked:
        if name in models:
            preds[f"{name} (PGD)"] = evaluate.pgd_predictions(models[name].model, x, y, **pgd)
    return preds


def confusion_frames(y, preds: dict, *, num_classes: int) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Row-normalised confusion matrices (%) per label, and the same as long rows
    (matrix, true, predicted, percent) for the artifact file."""
    mats = {k: confusion(labels=y, predictions=p, num_classes=num_classes) for k, p in preds.items()}
    long = pd.DataFrame([{"matrix": k, "true": i, "predicted": j, "percent": m[i, j]}
                         for k, m in mats.items() for i in range(m.shape[0]) for j in range(m.shape[1])])
    return mats, long


def lowest_classes(mats: dict[str, np.ndarray], *, classes, k: int = 2) -> pd.Series:
    """The ``k`` classes with the lowest diagonal (per-class accuracy) of each matrix, by name."""
    return pd.Series({name: ", ".join(classes[i] for i in np.argsort(np.diag(m))[:k]) for name, m in mats.items()},
                     name=f"{k} least accurate classes")

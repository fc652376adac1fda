"""Figures for the book, drawn on pyplot-free ``Figure`` objects (see ``report.new_figure``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from .report import new_figure

__all__ = ["ddb_vs_steps"]

_ATTACK_LABELS = {"pgd": "PGD", "deepfool": "DeepFool"}


def ddb_vs_steps(samples: pd.DataFrame, *, attacks: list[str], boxes: dict[str, dict],
                 title: str = ""):
    """HOL Fig. 2: one panel per attack, DDB (y) against steps to attack (x).

    ``samples`` has columns ``ddb_<attack>``, ``steps_<attack>`` and ``success_<attack>``;
    ``boxes[attack]`` is a ``vulnerability.similar_ddb_window`` result, drawn as the green box.
    Steps are jittered horizontally by up to ±0.2 so that stacked points stay visible.
    """
    fig = new_figure(width=5.2 * len(attacks), height=4.2)
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, attack in zip(axes, attacks):
        ok = samples[f"success_{attack}"].to_numpy(bool)
        steps = samples.loc[ok, f"steps_{attack}"].to_numpy(float)
        ddb = samples.loc[ok, f"ddb_{attack}"].to_numpy(float)
        ax.scatter(steps + rng.uniform(-0.2, 0.2, len(steps)), ddb, s=7, alpha=0.45,
                   color="tab:blue", edgecolors="none", label=f"{ok.sum()} samples")
        box = boxes.get(attack)
        if box is not None:
            x0, x1 = box["steps_min"] - 0.5, box["steps_max"] + 0.5
            y0, y1 = box["ddb_lo"], box["ddb_hi"]
            ax.add_patch(Rectangle(
                (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="green", linewidth=2,
                label=f"similar DDB, {int(box['steps_min'])}–{int(box['steps_max'])} steps"))
        ax.set_xlabel("steps to attack (first iteration that changes the prediction)")
        ax.set_ylabel("DDB  (L2 norm of the perturbation)")
        ax.set_title(_ATTACK_LABELS.get(attack, attack))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig

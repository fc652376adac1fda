"""The figure of LEC-T1, the trade-off (notebooks/15_lec_tradeoff.ipynb), laid out as the book's other
figures (:mod:`advbook.book.plots`: at most ``COLUMN_INCHES`` wide, no text below ``MIN_FONT``).

One figure in three panels, the two parts of the lecture's slide: (a) clean and PGD accuracy of the
largest training set's models as the attack budget grows; (b) Raghunathan et al. (2019), Fig. 1:
the clean error of the adversarially trained model minus that of the standard model, against the
training-set size (log axis), one line per training eps, as the reference code draws it
(``Std Err(AT) - Std Err(Std) (%)``, a dashed line at 0); (c) the lecture's reading of that axis:
the AT model's PGD error at its own eps minus its clean error. Importing this module adds its alt
texts to ``plots.FIGURES``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from advbook.book import plots
from advbook.book.plots import COLUMN_INCHES, MIN_FONT, _title
from advbook.book.report import new_figure
from advbook.evaluation.tradeoff import eps_label

__all__ = ["FIGURES", "tradeoff_figure", "accuracy_panel", "gap_panel", "GAP_AXES"]

FIGURES = {
    "LEC-T1": "three line plots: (a) clean (dashed) and PGD (solid) accuracy against the attack budget for the "
              "standard model and the adversarially trained models of the largest training set; (b) the clean "
              "error of each adversarially trained model minus that of the standard model against the number of "
              "training images (log scale), one line per training eps; (c) the adversarially trained model's PGD "
              "error minus its clean error, against the same axis",
}
plots.FIGURES.update(FIGURES)

# gap_summary's column -> (y label, panel title): the paper's axis and the lecture's reading of it
GAP_AXES = {
    "gap": ("Std Err(AT) − Std Err(Std) (%)",
            "(b) the paper's Fig. 1: clean error of the\nAT model minus that of the standard model"),
    "rob_minus_std": ("Rob Err(AT) − Std Err(AT) (%)",
                      "(c) the lecture's wording: the AT model's\nPGD error at its own ε minus its clean error"),
}
_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def _colours(budgets) -> dict[float, str]:
    """One colour per training eps (black for the standard model), the same in every panel."""
    ordered = sorted(float(e) for e in set(budgets) if e > 0)
    return {0.0: "black", **{e: _COLOURS[i % len(_COLOURS)] for i, e in enumerate(ordered)}}


def _colour(colours: dict[float, str], eps: float) -> str:
    return colours[min(colours, key=lambda e: abs(e - float(eps)))]


def accuracy_panel(ax, accuracy: pd.DataFrame, *, colours: dict[float, str]) -> None:
    """Panel (a): ``accuracy`` is :func:`advbook.evaluation.tradeoff.accuracy_table` of the PGD flags;
    the largest training set's models, clean accuracy dashed, PGD accuracy solid from the clean value
    at eps 0, the model's own training eps ringed."""
    largest = accuracy["n"].max()
    top = accuracy[accuracy["n"] == largest]
    for train_eps, g in top.groupby("train_eps", sort=True):
        colour = _colour(colours, train_eps)
        clean = g.loc[g["evaluation"] == "natural", "accuracy"].iloc[0]
        pgd = g[g["evaluation"] == "pgd"].sort_values("eval_eps")
        x = np.r_[0.0, 255 * pgd["eval_eps"].to_numpy(float)]
        y = np.r_[clean, pgd["accuracy"].to_numpy(float)]
        name = "standard" if train_eps == 0 else f"AT {eps_label(train_eps)}"
        ax.plot(x, y, "-o", color=colour, markersize=4, linewidth=1.5, label=name)
        ax.axhline(clean, color=colour, linestyle="--", linewidth=1, alpha=0.8)
        own = pgd[np.isclose(pgd["eval_eps"], train_eps)] if train_eps > 0 else pgd.iloc[:0]
        ax.plot(255 * own["eval_eps"], own["accuracy"], "o", markersize=10, markerfacecolor="none",
                markeredgecolor=colour)
    ticks = sorted(set(np.round(255 * top["eval_eps"].to_numpy(float), 6)) | {0.0})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("PGD budget ε (× 1/255); 0 = clean", fontsize=9)
    ax.set_ylabel("accuracy (%)", fontsize=9)
    images = int(top["images"].max()) if len(top) else 0
    ax.set_title(f"(a) the models of the largest training set (n = {int(largest):,}) on {images:,} test images\n"
                 "solid: PGD; dashed: clean; ringed: an AT model attacked at its own training ε", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=MIN_FONT)
    ax.legend(fontsize=MIN_FONT, loc="upper right", framealpha=0.9)


def gap_panel(ax, gaps: pd.DataFrame, *, column: str, colours: dict[float, str]) -> None:
    """Panels (b) and (c): ``gaps`` is :func:`advbook.evaluation.tradeoff.gap_summary`; ``column``
    one of :data:`GAP_AXES`, against the training-set size on a log axis, one line per training eps."""
    if column not in GAP_AXES:
        raise ValueError(f"unknown gap column {column!r}; valid: {', '.join(GAP_AXES)}")
    ylabel, title = GAP_AXES[column]
    sizes = sorted(gaps["n"].unique())
    for eps, g in gaps.groupby("eps", sort=True):
        g = g.sort_values("n")
        ax.plot(g["n"], g[column], "-o", color=_colour(colours, eps), markersize=5, linewidth=1.5,
                label=f"ε = {eps_label(eps)}")
    ax.axhline(0, color="gray", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{int(n):,}" for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=MIN_FONT)
    ax.legend(fontsize=MIN_FONT, framealpha=0.9)


def tradeoff_figure(accuracy: pd.DataFrame, gaps: pd.DataFrame, *, title: str = ""):
    """LEC-T1: panel (a) across the top, (b) and (c) below (see the module docstring). ``accuracy``
    is ``accuracy_table`` of the PGD flags, ``gaps`` is ``gap_summary``."""
    colours = _colours([*accuracy["train_eps"], *gaps["eps"]])
    fig = new_figure(width=COLUMN_INCHES, height=7.6)
    axes = fig.subplot_mosaic([["a", "a"], ["b", "c"]], height_ratios=[1, 1.05])
    accuracy_panel(axes["a"], accuracy, colours=colours)
    gap_panel(axes["b"], gaps, column="gap", colours=colours)
    gap_panel(axes["c"], gaps, column="rob_minus_std", colours=colours)
    _title(fig, title)
    return fig

"""The figures of the RRM chapter (notebooks/16-19_rrm_*.ipynb), laid out as the book's other figures
(:mod:`advbook.book.plots`: at most ``COLUMN_INCHES`` wide, no text below ``MIN_FONT``).

Accuracies are drawn with their 95 % Wilson intervals over the test images (statsmodels), so a reader
sees at a glance which differences the test set can resolve; the claims themselves are decided by the
paired tests of the claims engine, not by these intervals. Importing this module adds the figures'
alt texts to ``plots.FIGURES``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import FormatStrFormatter, NullLocator
from statsmodels.stats.proportion import proportion_confint

from advbook.book import plots
from advbook.book.plots import COLUMN_INCHES, MIN_FONT, _title
from advbook.book.report import new_figure

__all__ = ["FIGURES", "time_vs_accuracy", "transfer_bars", "lambda_curves", "capacity_curves"]

FIGURES = {
    "RRM-T1": "two bar panels with one row per method (SAT, the two Fast AT variants, Free AT, RRM, and RRM with "
              "its teacher's training time added): its training time measured in this run (log scale), and its "
              "clean and APGD-CE accuracy with 95% intervals",
    "RRM-T2": "grouped bars of natural and APGD-CE accuracy of the students trained from one robust teacher: "
              "standard training, RDT, KD as in the RRM code, textbook KD and RRM, the teacher's own accuracies "
              "as lines",
    "RRM-F3": "line plot of the RRM student's natural and APGD-CE accuracy against lambda (log scale) with 95% "
              "intervals",
    "RRM-F4": "line plot of each RRM student's natural and APGD-CE accuracy against its measured training time "
              "per epoch (log scale), one point per architecture, the teacher's accuracies as lines",
}
plots.FIGURES.update(FIGURES)

_COLOURS = {"natural": "0.55", "apgd_ce": "#08519c"}
_NAMES = {"natural": "clean", "apgd_ce": "APGD-CE"}


def _wilson(acc_percent: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each accuracy to the ends of its 95 % Wilson interval (for ``errorbar``)."""
    k = np.round(np.asarray(acc_percent, float) / 100 * n)
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    acc = np.asarray(acc_percent, float)
    return np.clip(acc - 100 * lo, 0, None), np.clip(100 * hi - acc, 0, None)   # 0 or 100 %: rounding


def _log_seconds(ax, x: np.ndarray) -> None:
    """A log x axis over ``x`` with room for the labels right of the last point, a tick at each point."""
    ax.set_xscale("log")
    ax.set_xlim(x.min() / 1.25, x.max() * 1.6)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(np.unique(np.round(x, 2)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))


def _need(frame: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"table lacks column(s) {', '.join(missing)}")


def time_vs_accuracy(table: pd.DataFrame, *, n: int, title: str = "", device: str = ""):
    """RRM-T1 from :func:`advbook.evaluation.rrm.speedup_table` (columns method, seconds, natural,
    apgd_ce): two panels with one row per method, (a) its training time measured in this run (log
    scale, the time written at each bar) and (b) its clean and APGD-CE accuracy with 95 % intervals."""
    _need(table, ("method", "seconds", "natural", "apgd_ce"))
    rows = len(table)
    fig = new_figure(width=COLUMN_INCHES, height=1.2 + 0.55 * rows)
    ax_t, ax_a = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.3]})
    ys = np.arange(rows)[::-1].astype(float)
    secs = table["seconds"].to_numpy(float)
    ax_t.barh(ys, secs, height=0.6, color="0.6")
    for y, v in zip(ys, secs):
        ax_t.text(v * 1.05, y, f"{v:.0f} s", va="center", fontsize=MIN_FONT)
    ax_t.set_xscale("log")
    ax_t.set_xlim(secs.min() / 2, secs.max() * 4)
    ax_t.set_xlabel("(a) training time, measured in this run (s, log)", fontsize=9)
    ax_t.set_yticks(ys, table["method"].tolist(), fontsize=MIN_FONT)
    height = 0.36
    for k, col in enumerate(("natural", "apgd_ce")):
        y_off = ys + (0.5 - k) * height
        acc = table[col].to_numpy(float)
        err = _wilson(acc, n)
        ax_a.barh(y_off, acc, height=height * 0.92, color=_COLOURS[col], label=_NAMES[col],
                  xerr=err, capsize=2, error_kw={"elinewidth": 0.8})
        for y, v, e in zip(y_off, acc, err[1]):
            ax_a.text(v + e + 1.5, y, f"{v:.1f}", va="center", fontsize=MIN_FONT)
    ax_a.set_xlim(0, 100)
    ax_a.set_xlabel("(b) accuracy (%), 95 % intervals", fontsize=9)
    ax_a.legend(fontsize=MIN_FONT, loc="lower right")
    for ax in (ax_t, ax_a):
        ax.tick_params(labelsize=MIN_FONT)
        ax.grid(axis="x", alpha=0.3)
    if device:
        fig.supxlabel(f"timed on {device}", fontsize=MIN_FONT)
    _title(fig, title)
    return fig


def transfer_bars(table: pd.DataFrame, *, n: int, teacher: dict | None = None, title: str = ""):
    """RRM-T2 from the accuracy rows (columns method (display name), natural, apgd_ce): grouped bars,
    one group per method, with 95 % Wilson intervals; ``teacher`` ({"natural": .., "apgd_ce": ..})
    draws the teacher's accuracies as dashed lines."""
    _need(table, ("method", "natural", "apgd_ce"))
    fig = new_figure(width=COLUMN_INCHES, height=3.8)
    ax = fig.subplots()
    xs = np.arange(len(table), dtype=float)
    width = 0.38
    for k, col in enumerate(("natural", "apgd_ce")):
        y = table[col].to_numpy(float)
        pos = xs + (k - 0.5) * width
        err = _wilson(y, n)
        ax.bar(pos, y, width=width * 0.95, color=_COLOURS[col], label=_NAMES[col], yerr=err, capsize=2)
        for p, v, e in zip(pos, y, err[1]):
            ax.text(p, v + e + 1.5, f"{v:.0f}", ha="center", va="bottom", fontsize=MIN_FONT)
        if teacher is not None and col in teacher:
            ax.axhline(teacher[col], color=_COLOURS[col], linestyle="--", linewidth=1,
                       label=f"teacher, {_NAMES[col]}")
    ax.set_xticks(xs, table["method"].tolist(), fontsize=MIN_FONT)
    ax.set_ylabel("accuracy (%)", fontsize=9)
    ax.set_ylim(0, 112)
    ax.tick_params(labelsize=MIN_FONT)
    ax.legend(fontsize=MIN_FONT, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    _title(fig, title)
    return fig


def lambda_curves(results: pd.DataFrame, *, n: int, reference: float | None = None, title: str = ""):
    """RRM-F3 from the accuracy rows (columns lambda, evaluation, accuracy): one line per evaluation
    against lambda on a log axis, with 95 % Wilson intervals; ``reference`` marks the slides' lambda."""
    _need(results, ("lambda", "evaluation", "accuracy"))
    fig = new_figure(width=COLUMN_INCHES, height=3.6)
    ax = fig.subplots()
    for col in ("natural", "apgd_ce"):
        part = results[results["evaluation"] == col].sort_values("lambda")
        y = part["accuracy"].to_numpy(float)
        ax.errorbar(part["lambda"], y, yerr=_wilson(y, n), marker="o", ms=5, capsize=2, color=_COLOURS[col],
                    label=_NAMES[col])
    if reference is not None:
        ax.axvline(reference, color="0.5", linestyle=":", linewidth=1, label=f"reference λ = {reference:g}")
    ax.set_xscale("log")
    ax.set_xlabel("λ, the weight of the cross-entropy (log scale)", fontsize=9)
    ax.set_ylabel("accuracy (%)", fontsize=9)
    ax.set_ylim(0, 100)
    ax.tick_params(labelsize=MIN_FONT)
    ax.legend(fontsize=MIN_FONT)
    ax.grid(alpha=0.3)
    _title(fig, title)
    return fig


def capacity_curves(table: pd.DataFrame, *, n: int, teacher: dict | None = None, title: str = "",
                    device: str = ""):
    """RRM-F4 from one row per student (columns student, seconds_per_epoch, natural, apgd_ce): accuracy
    against the measured time per epoch on a log axis, each point labelled with its architecture;
    ``teacher`` draws the teacher's accuracies as dashed lines."""
    _need(table, ("student", "seconds_per_epoch", "natural", "apgd_ce"))
    table = table.sort_values("seconds_per_epoch")
    fig = new_figure(width=COLUMN_INCHES, height=3.8)
    ax = fig.subplots()
    x = table["seconds_per_epoch"].to_numpy(float)
    for col in ("natural", "apgd_ce"):
        y = table[col].to_numpy(float)
        ax.errorbar(x, y, yerr=_wilson(y, n), marker="o", ms=5, capsize=2, color=_COLOURS[col],
                    label=f"student, {_NAMES[col]}")
        if teacher is not None and col in teacher:
            ax.axhline(teacher[col], color=_COLOURS[col], linestyle="--", linewidth=1,
                       label=f"teacher, {_NAMES[col]}")
    for xi, yi, name in zip(x, table["natural"], table["student"]):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 6), fontsize=MIN_FONT)
    _log_seconds(ax, x)
    ax.set_xlabel("student's training time per epoch, measured in this run (s, log scale)", fontsize=9)
    if device:
        fig.supxlabel(f"timed on {device}", fontsize=MIN_FONT)
    ax.set_ylabel("accuracy (%)", fontsize=9)
    ax.set_ylim(0, 100)
    ax.tick_params(labelsize=MIN_FONT)
    ax.legend(fontsize=MIN_FONT, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax.grid(alpha=0.3)
    _title(fig, title)
    return fig

"""The figure of LEC-F11, the lecture's defenses (notebooks/14_lec_defenses.ipynb), laid out as the book's
other figures (:mod:`advbook.book.plots`: at most ``COLUMN_INCHES`` wide, no text below ``MIN_FONT``).

One panel of horizontal grouped bars (the legend under it, clear of the bars), one group per defense (the order of the table), three bars each:
clean accuracy (grey), accuracy under the plain attack (the negative control, light) and under the
adaptive attack (dark), every bar labelled with its value. A line separates the test-time defenses
around the standard model from the trained ones. Importing this module adds its alt text to
``plots.FIGURES``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from advbook.book import plots
from advbook.book.plots import COLUMN_INCHES, MIN_FONT, _title
from advbook.book.report import new_figure

__all__ = ["FIGURES", "BARS", "plain_vs_adaptive"]

FIGURES = {
    "LEC-F11": "horizontal grouped bars, one group per defense (undefended, random resize-and-pad, input noise, "
               "bit-depth reduction, denoiser, defensive distillation, PGD-AT, ALP, TRADES): clean accuracy, "
               "accuracy under the plain attack and under the adaptive attack (EOT, BPDA, the full gradient or "
               "the logit margin) at the same budget",
}
plots.FIGURES.update(FIGURES)

# column of the table -> (legend label, colour), drawn top to bottom within a group
BARS = {"clean": ("clean", "0.75"), "plain": ("plain attack (negative control)", "#9ecae1"),
        "adaptive": ("adaptive attack", "#08519c")}


def plain_vs_adaptive(table: pd.DataFrame, *, title: str = "", budget: str = ""):
    """LEC-F11 from :func:`advbook.evaluation.defenses_lec.evaluate_defenses`' table (columns
    ``what``, ``kind``, ``clean``, ``plain``, ``adaptive`` in %, ``plain attack``, ``adaptive
    attack``): one group of three bars per row, each defense's plain and adaptive attack named
    under its name. ``budget`` (e.g. "L-inf 8/255, 10 steps") goes in the x label."""
    missing = [c for c in ("what", "kind", *BARS, "plain attack", "adaptive attack") if c not in table]
    if missing:
        raise ValueError(f"table lacks column(s) {', '.join(missing)}")
    n = len(table)
    fig = new_figure(width=COLUMN_INCHES, height=1.0 + 0.72 * n)
    ax = fig.subplots()
    height = 0.26
    centres = np.arange(n)[::-1].astype(float)        # the first row on top
    for k, (column, (label, colour)) in enumerate(BARS.items()):
        ys = centres + (1 - k) * height
        values = table[column].to_numpy(float)
        ax.barh(ys, values, height=height * 0.92, color=colour, label=label, edgecolor="none")
        for yv, v in zip(ys, values):
            ax.text(min(v, 100) + 1, yv, f"{v:.0f}", va="center", ha="left", fontsize=MIN_FONT)
    labels = [f"{r['what']}\nplain: {_short(r['plain attack'])}\nadaptive: {_short(r['adaptive attack'])}"
              for _, r in table.iterrows()]
    ax.set_yticks(centres, labels, fontsize=MIN_FONT)
    kinds = table["kind"].tolist()
    for i in range(1, n):
        if kinds[i] != kinds[i - 1]:
            ax.axhline(centres[i] + 0.5, color="0.4", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, 112)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xticks(range(0, 101, 20))
    ax.tick_params(axis="x", labelsize=MIN_FONT)
    ax.set_xlabel("test images classified correctly (%)" + (f" — {budget}" if budget else ""), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    _title(fig, title)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=MIN_FONT, frameon=False)
    return fig


def _short(attack: str) -> str:
    """An attack's label without its step count (the budget is in the x label)."""
    parts = [p for p in attack.split(", ") if not p.endswith(" steps")]
    return ", ".join(parts)

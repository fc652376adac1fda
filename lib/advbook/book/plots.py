"""Figures for the book, drawn on pyplot-free ``Figure`` objects (see ``report.new_figure``).

Every figure is laid out to be read at the width of the book's text column (about 784 px): at
most ``COLUMN_INCHES`` wide, at most two panels per row (more panels wrap onto further rows),
and no text below ``MIN_FONT`` points. Saved at any dpi and shown at the column width, a point
is then at least 784 / (72 * 8) = 1.36 px, so 8 pt text reads at about 11 px. A click on a
figure in the book opens the full-size PNG.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from advbook.book.report import new_figure

__all__ = ["FIGURES", "COLUMN_INCHES", "ddb_vs_steps", "attack_paths", "dct_pipeline", "band_accuracy_curves", "student_accuracy", "flagging_bars", "confusion_grid",
           "class_weight_lines"]

_ATTACK_LABELS = {"pgd": "PGD", "deepfool": "DeepFool"}

# What each of the book's figures shows, in words: the default alt text of ``report.show_image``.
FIGURES = {
    "HOL-F2": "scatter plots of each test image's distance to the decision boundary (DDB) against the number "
              "of attack steps that changed its prediction, one panel per attack; a green box marks images of "
              "similar DDB that need different numbers of steps",
    "HOL-F3": "a two-dimensional toy classifier's decision regions with two points at about the same distance "
              "from the boundary and their PGD attack paths (left), and distance against steps for every test "
              "point (right)",
    "HOL-F4": "line plot of a robust model's accuracy per class on high-pass filtered inputs as frequency bands "
              "are added, the paper's least and most vulnerable classes in bold",
    "HOL-F5": "a test image, its DCT spectrum, a frequency band mask, and low-pass reconstructions that keep "
              "more and more bands",
    "HOL-F6": "bar charts of the flagging accuracy of normalised DDB and of the trust score T per transfer-set "
              "budget, one panel per attack",
    "HOL-T3": "student accuracy against transfer-set budget, one line per selection criterion with its range "
              "over seeds, one panel per distillation temperature; the paper's values dashed",
    "VIR-F1": "confusion matrices in percent of each true class: a standard model on natural images, and AT, "
              "TRADES and MART under PGD; the diagonal is each class's accuracy",
    "VIR-F2": "confusion matrices in percent of each true class for VIR-AT and VIR-TRADES under PGD; the "
              "diagonal is each class's accuracy",
    "VIR-F3": "line plots of each class's share of the total sample weight per training epoch, one panel per "
              "reweighted defense",
    "VIR-X1": "line plots per epoch of the learning rate, each defense's mean sample weight, and their product "
              "(log scale), VIR-AT and VIR-TRADES beside our mean-matched and normalised controls",
}

COLUMN_INCHES = 8.0   # the widest a figure is drawn: the book's text column
MIN_FONT = 8          # points; the smallest text any figure here uses
_TITLE_CHARS = 95     # a suptitle of 10 pt wraps after about this many characters at COLUMN_INCHES


def _panels(n: int, *, max_cols: int = 2, panel_height: float, width: float = COLUMN_INCHES,
            extra_height: float = 0.0, **subplots):
    """A figure with ``n`` panels, at most ``max_cols`` per row, ``panel_height`` inches per row;
    the spare cells of the last row are removed. Returns the figure and the ``n`` axes."""
    cols = max(1, min(n, max_cols))
    rows = math.ceil(n / cols)
    fig = new_figure(width=width, height=panel_height * rows + extra_height)
    grid = np.asarray(fig.subplots(rows, cols, squeeze=False, **subplots))
    for ax in grid.ravel()[n:]:
        fig.delaxes(ax)
    return fig, grid, list(grid.ravel()[:n])


def _title(fig, title: str, *, width: float = COLUMN_INCHES) -> None:
    """A suptitle wrapped to the figure's width."""
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, int(_TITLE_CHARS * width / COLUMN_INCHES))), fontsize=10)


def ddb_vs_steps(samples: pd.DataFrame, *, attacks: list[str], boxes: dict[str, dict],
                 title: str = ""):
    """HOL Fig. 2: one panel per attack, DDB (y) against steps to attack (x).

    ``samples`` has columns ``ddb_<attack>``, ``steps_<attack>`` and ``success_<attack>``;
    ``boxes[attack]`` is a ``vulnerability.central_window`` result, drawn as the green box.
    Steps are jittered horizontally by up to ±0.2 so that stacked points stay visible.
    """
    fig, grid, axes = _panels(len(attacks), panel_height=3.6, extra_height=0.5)
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
        ax.set_title(_ATTACK_LABELS.get(attack, attack), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=MIN_FONT, framealpha=0.9)
    for ax in grid[:, 0]:
        ax.set_ylabel("DDB (L2 norm of the perturbation)", fontsize=9)
    fig.supxlabel("steps to attack (first iteration that changes the prediction)", fontsize=9)
    _title(fig, title)
    return fig


def attack_paths(*, grid: tuple, train_x, train_y, pair_x, paths, steps, ddb, all_ddb, all_steps,
                 title: str = ""):
    """HOL Fig. 3 on a 2-D toy: two points at about the same distance from the boundary and
    their attack paths (left), and distance against steps for every test point (right).

    ``grid`` is ``toy.decision_grid``'s ``(xx, yy, p1)``; ``paths`` is ``(T + 1, 2, 2)``;
    ``steps`` and ``ddb`` belong to the two points.
    """
    from matplotlib.patches import Circle

    xx, yy, p1 = grid
    fig = new_figure(width=COLUMN_INCHES, height=4.4)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1.05, 1])
    ax.contourf(xx, yy, p1, levels=[0, 0.5, 1], colors=["#dbe9f6", "#fde2cf"], alpha=0.9)
    ax.contour(xx, yy, p1, levels=[0.5], colors="black", linewidths=1.2)
    ax.scatter(train_x[:, 0], train_x[:, 1], c=train_y, cmap="coolwarm", s=6, alpha=0.35,
               edgecolors="none")
    colours = ["tab:green", "tab:purple"]
    for k in range(2):
        path = np.asarray(paths[:, k])
        ax.plot(path[:, 0], path[:, 1], "-o", color=colours[k], markersize=2.5, linewidth=1.2,
                label=f"DDB {ddb[k]:.3f}: {int(steps[k])} steps")
        ax.add_patch(Circle(pair_x[k], ddb[k], fill=False, linestyle="--", color=colours[k], linewidth=1))
        ax.plot(*pair_x[k], marker="*", markersize=12, color=colours[k], markeredgecolor="black")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_title("same distance, different paths\n(dashed: distance to the boundary)", fontsize=9)
    ax.legend(loc="lower left", fontsize=MIN_FONT, framealpha=0.9)
    ax2.scatter(all_steps, all_ddb, s=8, alpha=0.5, color="tab:blue", edgecolors="none", label="test points")
    for k in range(2):
        ax2.plot(steps[k], ddb[k], marker="*", markersize=14, color=colours[k], markeredgecolor="black",
                 linestyle="none")
    ax2.set_title("every test point", fontsize=9)
    ax2.set_xlabel("PGD steps to change the prediction", fontsize=9)
    ax2.set_ylabel("distance to the boundary (exact, grid)", fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right", fontsize=MIN_FONT)
    _title(fig, title)
    return fig


def dct_pipeline(image, *, bands: list[int], title: str = ""):
    """HOL Fig. 5 (top): an image, its DCT (log magnitude), a band mask, and low-pass
    reconstructions keeping the bands below each ``k`` in ``bands``. ``image`` is (C, H, W) in [0, 1]."""
    import torch

    from advbook.analysis import frequency

    x = torch.as_tensor(image, dtype=torch.float64)[None]
    spec = frequency.dct2(x)[0]
    h, w = x.shape[-2:]
    fig, _, axes = _panels(3 + len(bands), max_cols=4, panel_height=2.25, extra_height=0.4)
    axes[0].imshow(x[0].permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(np.log10(spec.abs().mean(0).numpy() + 1e-4), cmap="magma")
    axes[1].set_title("DCT, log |coef.|", fontsize=9)
    mask = frequency.band_masks(h, w, high=False, like=x)[bands[len(bands) // 2]]
    axes[2].imshow(mask.numpy(), cmap="gray", vmin=0, vmax=1)
    axes[2].set_title(f"mask: bands < {bands[len(bands) // 2]}", fontsize=9)
    for ax, k in zip(axes[3:], bands):
        ax.imshow(frequency.low_pass(x, k)[0].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(f"IDCT, bands < {k}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _title(fig, title)
    return fig


def band_accuracy_curves(acc, *, classes, highlight: dict[int, str], title: str = ""):
    """HOL Fig. 4: accuracy (%) on high-pass inputs per class as bands are added from k_max down to 0.

    ``acc`` is ``(k_max + 1, n_classes)`` with row ``k`` = inputs keeping the bands ``>= k``;
    ``highlight`` maps class indices to a label drawn in bold (least / most vulnerable).
    """
    acc = np.asarray(acc) * 100
    k = np.arange(acc.shape[0])
    fig = new_figure(width=COLUMN_INCHES, height=4.6)
    ax = fig.subplots()
    for c, name in enumerate(classes):
        bold = c in highlight
        ax.plot(k, acc[:, c], linewidth=2.6 if bold else 1.0, alpha=1 if bold else 0.55,
                label=f"{name} ({highlight[c]})" if bold else name)
    ax.invert_xaxis()
    ax.set_xlabel("lowest band kept, k  (inputs keep bands k … k_max − 1;\nbands are added from left to right)", fontsize=9)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONT, ncol=2, loc="upper left")
    _title(fig, title)
    return fig


_CRITERION_COLORS = {"random": "tab:gray", "closest": "tab:orange", "trust": "tab:blue"}


def student_accuracy(results: pd.DataFrame, *, paper: pd.DataFrame | None = None, title: str = ""):
    """HOL Table 3 as a figure: student accuracy against budget, one line per criterion (mean and
    min–max over seeds), one panel per temperature; the paper's values dashed."""
    taus = sorted(results["tau"].unique(), reverse=True)
    fig, grid, axes = _panels(len(taus), panel_height=3.0, extra_height=1.2, sharey=True)
    for ax, tau in zip(axes, taus):
        for criterion, g in results[results.tau == tau].groupby("criterion", sort=False):
            stats = g.groupby("budget")["accuracy"].agg(["mean", "min", "max"])
            color = _CRITERION_COLORS.get(criterion)
            ax.plot(stats.index, stats["mean"], "o-", color=color, label=f"{criterion} (ours)")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)
            if paper is not None:
                p = paper[(paper.tau == tau) & (paper.criterion == criterion)
                          & paper.budget.isin(results["budget"].unique())].sort_values("budget")
                if len(p):
                    ax.plot(p["budget"], p["accuracy"], "s--", color=color, alpha=0.6, markersize=4,
                            label=f"{criterion} (paper)")
        ax.set_title(f"τ = {tau:g}", fontsize=10)
        ax.set_xlabel("transfer-set budget (images per class)", fontsize=9)
        ax.set_xticks(sorted(results["budget"].unique()))
        ax.grid(alpha=0.3)
    for ax in grid[:, 0]:
        ax.set_ylabel("student accuracy (%)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=MIN_FONT)
    _title(fig, title)
    return fig


def flagging_bars(rows: pd.DataFrame, *, title: str = ""):
    """HOL Fig. 6: flagging accuracy of normalised DDB and of the trust score, per budget; one
    panel per (attack, criterion), a row per attack when there are several criteria, else the
    attacks side by side. ``rows`` has columns criterion, budget, attack, score (``d_hat`` or
    ``T``) and flagging_accuracy."""
    attacks = list(dict.fromkeys(rows["attack"]))
    criteria = list(dict.fromkeys(rows["criterion"]))
    pairs = [(a, c) for a in attacks for c in criteria]
    cols = len(criteria) if len(criteria) > 1 else 2
    fig, grid, axes = _panels(len(pairs), max_cols=cols, panel_height=3.0, extra_height=0.9, sharey=True)
    width = 0.38
    for ax, (attack, criterion) in zip(axes, pairs):
        g = rows[(rows.attack == attack) & (rows.criterion == criterion)]
        budgets = sorted(g["budget"].unique())
        x = np.arange(len(budgets))
        for k, (score, label, color) in enumerate((("d_hat", "normalised DDB", "tab:gray"),
                                                    ("T", "trust score T", "tab:blue"))):
            vals = [g[(g.budget == b) & (g.score == score)]["flagging_accuracy"].mean() for b in budgets]
            bars = ax.bar(x + (k - 0.5) * width, vals, width, color=color, label=label)
            ax.bar_label(bars, fmt="%.0f", fontsize=MIN_FONT)
        ax.set_xticks(x, [str(b) for b in budgets])
        ax.set_title(f"{_ATTACK_LABELS.get(attack, attack)} · {criterion}-selected", fontsize=9)
        ax.set_xlabel("budget (images per class)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.set_ylim(0, 118)
    for ax in grid[:, 0]:
        ax.set_ylabel("flagging accuracy (%)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=MIN_FONT)
    _title(fig, title)
    return fig


def confusion_grid(matrices: dict, *, classes, title: str = ""):
    """Row-normalised confusion matrices in % side by side (VIR Fig. 1–2); the diagonal printed."""
    n = len(matrices)
    fig, grid, axes = _panels(n, panel_height=3.5, extra_height=0.5)
    for k, (ax, (name, m)) in enumerate(zip(axes, matrices.items())):
        im = ax.imshow(m, vmin=0, vmax=100, cmap="Blues")
        for i in range(len(classes)):
            ax.text(i, i, f"{m[i, i]:.0f}", ha="center", va="center", fontsize=MIN_FONT,
                    color="white" if m[i, i] > 60 else "black")
        first = k % grid.shape[1] == 0
        ax.set_xticks(range(len(classes)), [str(i) for i in range(len(classes))], fontsize=MIN_FONT)
        ax.set_yticks(range(len(classes)), [f"{i} {c}" if first else str(i) for i, c in enumerate(classes)],
                      fontsize=MIN_FONT)
        ax.set_xlabel("predicted class", fontsize=9)
        ax.set_title(name, fontsize=10)
        if first:
            ax.set_ylabel("true class", fontsize=9)
    bar = fig.colorbar(im, ax=axes, shrink=0.8)
    bar.set_label("% of the true class", fontsize=9)
    bar.ax.tick_params(labelsize=MIN_FONT)
    _title(fig, title)
    return fig


def class_weight_lines(frames: dict, *, classes, title: str = ""):
    """VIR Fig. 3: each class's share of the total sample weight per reweighted epoch, one panel
    per method (``frames``: name -> output of ``defenses.class_weight_sums``)."""
    n = len(frames)
    fig, grid, axes = _panels(n, panel_height=3.0, extra_height=1.3, sharey=True)
    for ax, (name, frame) in zip(axes, frames.items()):
        for c, cname in enumerate(classes):
            g = frame[frame["class"] == c]
            ax.plot(g["epoch"], 100 * g["share"], marker="o", markersize=3, label=f"{c} {cname}")
        ax.axhline(100 / len(classes), color="black", linewidth=0.8, linestyle=":")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in grid[:, 0]:
        ax.set_ylabel("share of the total weight (%)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=5, fontsize=MIN_FONT)
    _title(fig, title)
    return fig


def weight_scale_lines(frame: pd.DataFrame, *, title: str = ""):
    """The schedule's learning rate, each method's mean sample weight, and their product per epoch
    (``frame``: output of ``defenses.weight_scale``), the last two on a log scale, so that a mean
    weight far from 1 shows as the change of step size it is."""
    fig, grid, axes = _panels(3, max_cols=3, panel_height=2.6, extra_height=1.2)
    names = list(dict.fromkeys(frame["defense"]))
    first = frame[frame["defense"] == names[0]]
    axes[0].plot(first["epoch"], first["lr"], color="black", marker="o", markersize=3)
    axes[0].set_title("learning rate", fontsize=9)
    unweighted = [n for n in names if (frame.loc[frame["defense"] == n, "mean weight"] == 1.0).all()]
    if unweighted:   # one line for all of them, drawn first: they coincide
        axes[1].plot(first["epoch"], [1.0] * len(first), color="black", label="unweighted: " + ", ".join(unweighted))
        axes[2].plot(first["epoch"], first["lr"], color="black")
    for name in (n for n in names if n not in unweighted):
        g = frame[frame["defense"] == name]
        style = dict(marker="o", markersize=3, linestyle="--" if name.endswith(("_mean", "_norm")) else "-")
        axes[1].plot(g["epoch"], g["mean weight"], label=name, **style)
        axes[2].plot(g["epoch"], g["lr x mean weight"], **style)
    axes[1].set_title("mean sample weight", fontsize=9)
    axes[2].set_title("lr × mean weight", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=MIN_FONT)
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.set_yscale("log")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=MIN_FONT)
    _title(fig, title)
    return fig

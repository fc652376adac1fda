"""Figures for the book, drawn on pyplot-free ``Figure`` objects (see ``report.new_figure``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from advbook.book.report import new_figure

__all__ = ["ddb_vs_steps", "attack_paths", "dct_pipeline", "band_accuracy_curves", "student_accuracy", "flagging_bars", "confusion_grid",
           "class_weight_lines"]

_ATTACK_LABELS = {"pgd": "PGD", "deepfool": "DeepFool"}


def ddb_vs_steps(samples: pd.DataFrame, *, attacks: list[str], boxes: dict[str, dict],
                 title: str = ""):
    """HOL Fig. 2: one panel per attack, DDB (y) against steps to attack (x).

    ``samples`` has columns ``ddb_<attack>``, ``steps_<attack>`` and ``success_<attack>``;
    ``boxes[attack]`` is a ``vulnerability.central_window`` result, drawn as the green box.
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


def attack_paths(*, grid: tuple, train_x, train_y, pair_x, paths, steps, ddb, all_ddb, all_steps,
                 title: str = ""):
    """HOL Fig. 3 on a 2-D toy: two points at about the same distance from the boundary and
    their attack paths (left), and distance against steps for every test point (right).

    ``grid`` is ``toy.decision_grid``'s ``(xx, yy, p1)``; ``paths`` is ``(T + 1, 2, 2)``;
    ``steps`` and ``ddb`` belong to the two points.
    """
    from matplotlib.patches import Circle

    xx, yy, p1 = grid
    fig = new_figure(width=11, height=4.8)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1.1, 1])
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
    ax.set_title("same distance, different paths (dashed: distance to the boundary)", fontsize=9)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax2.scatter(all_steps, all_ddb, s=8, alpha=0.5, color="tab:blue", edgecolors="none", label="test points")
    for k in range(2):
        ax2.plot(steps[k], ddb[k], marker="*", markersize=14, color=colours[k], markeredgecolor="black",
                 linestyle="none")
    ax2.set_xlabel("PGD steps to change the prediction")
    ax2.set_ylabel("distance to the decision boundary (exact, grid)")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def dct_pipeline(image, *, bands: list[int], title: str = ""):
    """HOL Fig. 5 (top): an image, its DCT (log magnitude), a band mask, and low-pass
    reconstructions keeping the bands below each ``k`` in ``bands``. ``image`` is (C, H, W) in [0, 1]."""
    import torch

    from advbook.analysis import frequency

    x = torch.as_tensor(image, dtype=torch.float64)[None]
    spec = frequency.dct2(x)[0]
    h, w = x.shape[-2:]
    fig = new_figure(width=2.0 * (3 + len(bands)), height=2.6)
    axes = fig.subplots(1, 3 + len(bands))
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
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def band_accuracy_curves(acc, *, classes, highlight: dict[int, str], title: str = ""):
    """HOL Fig. 4: accuracy (%) on high-pass inputs per class as bands are added from k_max down to 0.

    ``acc`` is ``(k_max + 1, n_classes)`` with row ``k`` = inputs keeping the bands ``>= k``;
    ``highlight`` maps class indices to a label drawn in bold (least / most vulnerable).
    """
    acc = np.asarray(acc) * 100
    k = np.arange(acc.shape[0])
    fig = new_figure(width=7.5, height=4.2)
    ax = fig.subplots()
    for c, name in enumerate(classes):
        bold = c in highlight
        ax.plot(k, acc[:, c], linewidth=2.6 if bold else 1.0, alpha=1 if bold else 0.55,
                label=f"{name} ({highlight[c]})" if bold else name)
    ax.invert_xaxis()
    ax.set_xlabel("lowest band kept, k  (inputs keep bands k … k_max − 1; bands are added from left to right)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


_CRITERION_COLORS = {"random": "tab:gray", "closest": "tab:orange", "trust": "tab:blue"}


def student_accuracy(results: pd.DataFrame, *, paper: pd.DataFrame | None = None, title: str = ""):
    """HOL Table 3 as a figure: student accuracy against budget, one line per criterion (mean and
    min–max over seeds), one panel per temperature; the paper's values dashed."""
    taus = sorted(results["tau"].unique(), reverse=True)
    fig = new_figure(width=4.2 * len(taus), height=3.6)
    axes = np.atleast_1d(fig.subplots(1, len(taus), sharey=True))
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
        ax.set_xlabel("transfer-set budget (images per class)")
        ax.set_xticks(sorted(results["budget"].unique()))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("student accuracy (%)")
    axes[-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def flagging_bars(rows: pd.DataFrame, *, title: str = ""):
    """HOL Fig. 6: flagging accuracy of normalised DDB and of the trust score, per budget; one
    panel per (attack, criterion). ``rows`` has columns criterion, budget, attack, score
    (``d_hat`` or ``T``) and flagging_accuracy."""
    attacks = list(dict.fromkeys(rows["attack"]))
    criteria = list(dict.fromkeys(rows["criterion"]))
    fig = new_figure(width=max(6.0, 3.6 * len(criteria) + 0.6), height=2.9 * len(attacks))
    axes = np.asarray(fig.subplots(len(attacks), len(criteria), sharey=True, squeeze=False))
    width = 0.38
    for i, attack in enumerate(attacks):
        for j, criterion in enumerate(criteria):
            ax = axes[i, j]
            g = rows[(rows.attack == attack) & (rows.criterion == criterion)]
            budgets = sorted(g["budget"].unique())
            x = np.arange(len(budgets))
            for k, (score, label, color) in enumerate((("d_hat", "normalised DDB", "tab:gray"),
                                                        ("T", "trust score T", "tab:blue"))):
                vals = [g[(g.budget == b) & (g.score == score)]["flagging_accuracy"].mean() for b in budgets]
                bars = ax.bar(x + (k - 0.5) * width, vals, width, color=color, label=label)
                ax.bar_label(bars, fmt="%.0f", fontsize=7)
            ax.set_xticks(x, [str(b) for b in budgets])
            ax.set_title(f"{_ATTACK_LABELS.get(attack, attack)} · {criterion}-selected", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
            ax.set_ylim(0, 118)
            if i == len(attacks) - 1:
                ax.set_xlabel("budget (images per class)")
        axes[i, 0].set_ylabel("flagging accuracy (%)")
    axes[0, -1].legend(fontsize=7, loc="upper right", ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def confusion_grid(matrices: dict, *, classes, title: str = ""):
    """Row-normalised confusion matrices in % side by side (VIR Fig. 1–2); the diagonal printed."""
    n = len(matrices)
    fig = new_figure(width=3.3 * n + 0.8, height=3.6)
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (name, m) in zip(axes, matrices.items()):
        im = ax.imshow(m, vmin=0, vmax=100, cmap="Blues")
        for i in range(len(classes)):
            ax.text(i, i, f"{m[i, i]:.0f}", ha="center", va="center", fontsize=6.5,
                    color="white" if m[i, i] > 60 else "black")
        ax.set_xticks(range(len(classes)), [str(i) for i in range(len(classes))], fontsize=7)
        ax.set_yticks(range(len(classes)), [f"{i} {c}" for i, c in enumerate(classes)], fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("true class", fontsize=8)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="% of the true class")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def class_weight_lines(frames: dict, *, classes, title: str = ""):
    """VIR Fig. 3: each class's share of the total sample weight per reweighted epoch, one panel
    per method (``frames``: name -> output of ``defenses.class_weight_sums``)."""
    n = len(frames)
    fig = new_figure(width=4.6 * n, height=3.6)
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    for ax, (name, frame) in zip(axes, frames.items()):
        for c, cname in enumerate(classes):
            g = frame[frame["class"] == c]
            ax.plot(g["epoch"], 100 * g["share"], marker="o", markersize=3, label=f"{c} {cname}")
        ax.axhline(100 / len(classes), color="black", linewidth=0.8, linestyle=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of the total weight (%)")
    axes[-1].legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig

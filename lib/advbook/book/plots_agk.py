"""The figures of the AGK chapter (AGKD-BML's supplement, /work/shared/papers/agkd-bml-supplementary.txt),
laid out as the book's other figures (:mod:`advbook.book.plots`: at most ``COLUMN_INCHES`` wide, no text
below ``MIN_FONT``).

Accuracies are drawn with their 95 % Wilson intervals over the test images (statsmodels, through
:func:`advbook.book.plots_rrm._wilson`), so a reader sees which differences the test set can resolve; the
claims themselves are decided by the claims engine's paired tests. Every function takes the rows of its
artifact as a pandas DataFrame and refuses one that lacks a column before drawing anything. Method and
evaluation names are shown through ``LABELS`` and :func:`evaluation_label` (the supplement's names);
names they do not know are shown as they are. Importing this module adds the figures' alt texts to
``plots.FIGURES``.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from advbook.book import plots
from advbook.book.plots import COLUMN_INCHES, MIN_FONT, _title
from advbook.book.plots_rrm import _need, _wilson
from advbook.book.report import new_figure

__all__ = ["tsne_figures", "FIGURES", "LABELS", "EVALUATIONS", "ATTENTION_GROUPS", "method_label", "evaluation_label",
           "attack_table", "autoattack_widths", "attention_ablation", "time_ratios", "cat_comparison",
           "knn_vs_softmax", "tsne_panels"]

FIGURES = {
    "AGK-T1": "a table drawn as a heatmap: one row per method (UM, Bilateral, FS, AT, ALP, SML, AGKD-BML), one "
              "column per evaluation (clean, FGSM, BIM(10), PGD(10), PGD(20), CW(10), CW(20), MIM(40)), the "
              "accuracy in percent printed in each cell, darker for higher, the best of each column in bold",
    "AGK-T2": "AGKD-BML's accuracy under AutoAttack with 95% intervals against the number of training epochs, "
              "one line per Wide ResNet",
    "AGK-T3": "horizontal grouped bars of clean and PGD-20 accuracy with 95% intervals for students distilled "
              "from class-relevant attention (Grad-CAM of the original and of a false class) and from "
              "class-irrelevant attention (CAM average and AGKD), the two kinds in separate panels",
    "AGK-T4": "dot plot of each method's training time as a multiple of PGD-AT's on a log scale: ours with its "
              "interval as filled dots, the paper's as hollow markers, a line at 1 for AT",
    "AGK-T5": "grouped bars of CAT-CE, CAT-MIX and AGKD-BML accuracy with 95% intervals on clean images, under "
              "PGD-20 and CW-20 and under attacks transferred from two other models",
    "AGK-T6": "scatter of each method's k-NN accuracy against its softmax accuracy, on clean images and under "
              "PGD-20, with the diagonal where the two classifiers agree dashed",
    "AGK-F1": "a grid of t-SNE plots of penultimate features, one row per attacked class and one column per "
              "method (UM, SML, BML, AGKD-BML): clean test images as small triangles coloured by class, the "
              "attacked class's adversarial examples as red circles",
}
plots.FIGURES.update(FIGURES)

# The supplement's names of the methods (method names of evaluation.agk.METHODS and the T3 ablation).
LABELS = {"um": "UM", "at": "AT", "alp": "ALP", "sml": "SML", "bml": "BML", "agkd": "AGKD",
          "agkd_bml": "AGKD-BML", "bilateral": "Bilateral", "feature_scatter": "FS", "cat_ce": "CAT-CE",
          "cat_mix": "CAT-MIX", "agkd_gc_orig": "GC-orig", "agkd_gc_false": "GC-false",
          "agkd_cam_avg": "CAM-avg"}
# The supplement's names of the evaluations (evaluation.agk.attacks_for's names); "transfer:<name>" apart.
EVALUATIONS = {"natural": "clean", "fgsm": "FGSM", "bim:10": "BIM(10)", "pgd:10": "PGD(10)",
               "pgd:20": "PGD(20)", "cw:10": "CW(10)", "cw:20": "CW(20)", "mim:40": "MIM(40)",
               "autoattack": "AutoAttack"}
# AGK-T3's two kinds of distilled attention (supplement, Table 3), in the order drawn.
ATTENTION_GROUPS = {"class-relevant (Grad-CAM)": ("agkd_gc_orig", "agkd_gc_false"),
                    "class-irrelevant": ("agkd_cam_avg", "agkd")}

_EVAL_COLOURS = {"natural": "0.6", "pgd:20": "#08519c"}
_METHOD_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def method_label(name: str) -> str:
    """The supplement's name of a method; a name ``LABELS`` does not know is shown as it is."""
    return LABELS.get(name, name)


def evaluation_label(name: str) -> str:
    """The supplement's name of an evaluation: "transfer:<name>" reads "transfer from <name>", and an
    attack with steps the table does not list, "pgd:100", reads as the others do, "PGD(100)"."""
    if name.startswith("transfer:"):
        return f"transfer from {name.split(':', 1)[1]}"
    kind, _, steps = name.partition(":")
    if name not in EVALUATIONS and steps.isdigit() and kind in ("fgsm", "bim", "pgd", "cw", "mim"):
        return f"{kind.upper()}({steps})"
    return EVALUATIONS.get(name, name)


def _ordered(values) -> list:
    """The distinct values in the order of their first appearance (the caller's order)."""
    return list(dict.fromkeys(values))


def _grid(results: pd.DataFrame, rows: str, cols: str, value: str) -> pd.DataFrame:
    """``value`` as a rows x cols table in the order of first appearance; one row per cell or ValueError."""
    dup = results.duplicated([rows, cols])
    if dup.any():
        r = results[dup].iloc[0]
        raise ValueError(f"more than one row for {rows} {r[rows]!r} and {cols} {r[cols]!r}")
    return results.pivot(index=rows, columns=cols, values=value).reindex(
        index=_ordered(results[rows]), columns=_ordered(results[cols]))


def _bar_labels(ax, pos, values, err_hi, *, horizontal: bool, rotate: bool = False) -> None:
    """Each bar's value (rounded to 0.1) just past the end of its interval; ``rotate`` turns the labels
    of upright bars on their side (for bars too narrow for four characters)."""
    for p, v, e in zip(pos, values, err_hi):
        if horizontal:
            ax.text(v + e + 1.2, p, f"{v:.1f}", va="center", ha="left", fontsize=MIN_FONT)
        else:
            ax.text(p, v + e + 1.2, f"{v:.1f}", ha="center", va="bottom", fontsize=MIN_FONT,
                    rotation=90 if rotate else 0)


def attack_table(results: pd.DataFrame, *, title: str = ""):
    """AGK-T1 (columns method, evaluation, accuracy in %; ``n`` may be present and is not used: the
    table prints numbers, not intervals): the supplement's Table 1 as a heatmap, methods as rows and
    evaluations as columns in the order given, each cell's accuracy printed (one decimal, as the paper)
    and the best of each column in bold (every tied best). The colour scale is fixed to 0-100 % so that
    tables of two runs compare by eye; a cell without a result is left white with a dash."""
    _need(results, ("method", "evaluation", "accuracy"))
    grid = _grid(results, "method", "evaluation", "accuracy")
    values = grid.to_numpy(float)
    n_rows, n_cols = values.shape
    fig = new_figure(width=COLUMN_INCHES, height=1.5 + 0.36 * n_rows)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="Blues", vmin=0, vmax=100, aspect="auto")
    best = np.nanmax(np.where(np.isnan(values), -np.inf, values), axis=0)
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            if np.isnan(v):
                ax.text(j, i, "–", ha="center", va="center", fontsize=MIN_FONT + 1, color="0.4")
                continue
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=MIN_FONT + 1,
                    fontweight="bold" if v == best[j] else "normal", color="white" if v > 60 else "black")
    ax.set_xticks(range(n_cols), ["\n".join(textwrap.wrap(evaluation_label(e), 10)) for e in grid.columns],
                  fontsize=MIN_FONT)
    ax.set_yticks(range(n_rows), [method_label(m) for m in grid.index], fontsize=MIN_FONT + 1)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.01, aspect=15)
    bar.set_label("accuracy (%)", fontsize=MIN_FONT)
    bar.ax.tick_params(labelsize=MIN_FONT)
    ax.set_xlabel("bold: the best of each column", fontsize=MIN_FONT)
    _title(fig, title)
    return fig


def autoattack_widths(rows: pd.DataFrame, *, title: str = ""):
    """AGK-T2 (columns model (an architecture's label), epochs, accuracy in %, n): AutoAttack accuracy
    with 95 % Wilson intervals against the epochs trained, one line per model in the order given. The
    models are shifted sideways by 4 % of the epoch range so that their intervals do not hide each
    other (the ticks stay at the epochs themselves), each value written on the outer side of its point."""
    _need(rows, ("model", "epochs", "accuracy", "n"))
    fig = new_figure(width=COLUMN_INCHES, height=3.4)
    ax = fig.subplots()
    models = _ordered(rows["model"])
    epochs = np.sort(rows["epochs"].unique()).astype(float)
    span = (epochs.max() - epochs.min()) or epochs.max() or 1.0
    shift = 0.04 * span
    for k, (model, colour) in enumerate(zip(models, _METHOD_COLOURS * len(models))):
        part = rows[rows["model"] == model].sort_values("epochs")
        x = part["epochs"].to_numpy(float) + (k - (len(models) - 1) / 2) * shift
        y = part["accuracy"].to_numpy(float)
        err = _wilson(y, part["n"].to_numpy(float))
        ax.errorbar(x, y, yerr=err, marker="o", ms=5, capsize=3, color=colour, label=str(model))
        left = k < len(models) / 2     # values beside their points, outwards, clear of the other models'
        for xi, yi in zip(x, y):
            ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(-7 if left else 7, 0),
                        ha="right" if left else "left", va="center", fontsize=MIN_FONT, color=colour)
    ax.set_xticks(epochs, [f"{e:g}" for e in epochs])
    ax.set_xlim(epochs.min() - 0.25 * span, epochs.max() + 0.25 * span)
    low, high = rows["accuracy"].min(), rows["accuracy"].max()
    ax.set_ylim(max(0, low - 6), min(100, high + 6))
    ax.set_xlabel("epochs trained", fontsize=9)
    ax.set_ylabel("AutoAttack accuracy (%), 95 % intervals", fontsize=9)
    ax.tick_params(labelsize=MIN_FONT)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(models),
              frameon=False)
    _title(fig, title)
    return fig


def attention_ablation(results: pd.DataFrame, *, title: str = ""):
    """AGK-T3 (columns method, evaluation ("natural", "pgd:20"), accuracy in %, n): horizontal grouped
    bars with 95 % Wilson intervals, clean above PGD-20 in each group, one panel per kind of attention
    (``ATTENTION_GROUPS``, the supplement's Table 3 split: Grad-CAM of the original and of a false class
    are class-relevant; the CAM average and AGKD's channel sum are class-irrelevant), methods in the
    order given within a panel. Panels share the accuracy axis so the two kinds compare directly."""
    _need(results, ("method", "evaluation", "accuracy", "n"))
    known = {m for group in ATTENTION_GROUPS.values() for m in group}
    unknown = [m for m in _ordered(results["method"]) if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    methods = _ordered(results["method"])
    groups = {name: [m for m in methods if m in members] for name, members in ATTENTION_GROUPS.items()}
    groups = {name: ms for name, ms in groups.items() if ms}
    evaluations = [e for e in _EVAL_COLOURS if e in set(results["evaluation"])]
    evaluations += [e for e in _ordered(results["evaluation"]) if e not in evaluations]
    fig = new_figure(width=COLUMN_INCHES, height=1.3 + 0.62 * len(methods) + 0.3 * len(groups))
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [len(ms) for ms in groups.values()]})[:, 0]
    height = 0.8 / len(evaluations)
    for ax, (name, ms) in zip(axes, groups.items()):
        centres = np.arange(len(ms))[::-1].astype(float)
        for k, evaluation in enumerate(evaluations):
            part = results[results["evaluation"] == evaluation].set_index("method").reindex(ms)
            have = part["accuracy"].notna().to_numpy()
            acc = part["accuracy"].to_numpy(float)[have]
            ys = (centres + ((len(evaluations) - 1) / 2 - k) * height)[have]
            err = _wilson(acc, part["n"].to_numpy(float)[have])
            ax.barh(ys, acc, height=height * 0.92, xerr=err, capsize=2, error_kw={"elinewidth": 0.8},
                    color=_EVAL_COLOURS.get(evaluation, _METHOD_COLOURS[k % len(_METHOD_COLOURS)]),
                    label=evaluation_label(evaluation))
            _bar_labels(ax, ys, acc, err[1], horizontal=True)
        ax.set_yticks(centres, [method_label(m) for m in ms], fontsize=MIN_FONT + 1)
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xlim(0, 100)
        ax.set_ylim(-0.6, len(ms) - 0.4)
        ax.tick_params(labelsize=MIN_FONT)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("accuracy (%), 95 % intervals", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=MIN_FONT, frameon=False)
    _title(fig, title)
    return fig


def time_ratios(ours: pd.DataFrame, paper: pd.DataFrame, *, title: str = ""):
    """AGK-T4: each method's training time as a multiple of PGD-AT's, ``ours`` (columns method, ratio,
    low, high: the ratio and its interval) as filled dots with interval bars, ``paper`` (columns method,
    ratio: the supplement's Table 4 hours divided by AT's) as hollow diamonds just below, on a log axis
    (a ratio of 2 and one of 1/2 are the same distance from AT) with a line at 1 = AT. One row per method,
    ours in their order and then the paper's others; a method in one frame only shows what exists."""
    _need(ours, ("method", "ratio", "low", "high"))
    _need(paper, ("method", "ratio"))
    methods = _ordered(list(ours["method"]) + list(paper["method"]))
    fig = new_figure(width=COLUMN_INCHES, height=1.5 + 0.5 * len(methods))
    ax = fig.subplots()
    row = {m: float(len(methods) - 1 - i) for i, m in enumerate(methods)}   # the first method on top
    offset = 0.17
    y = np.array([row[m] for m in ours["method"]]) + offset
    r = ours["ratio"].to_numpy(float)
    err = np.vstack([np.clip(r - ours["low"].to_numpy(float), 0, None),
                     np.clip(ours["high"].to_numpy(float) - r, 0, None)])
    ax.errorbar(r, y, xerr=err, fmt="o", ms=6, capsize=3, color="#08519c", label="this run (with its interval)")
    for ri, yi, hi in zip(r, y, r + err[1]):
        ax.text(hi * 1.06, yi, f"×{ri:.2g}", va="center", fontsize=MIN_FONT, color="#08519c")
    yp = np.array([row[m] for m in paper["method"]]) - offset
    rp = paper["ratio"].to_numpy(float)
    ax.plot(rp, yp, "D", ms=6, mfc="none", mec="#c44e52", mew=1.3, linestyle="none", label="paper (Table 4)")
    for ri, yi in zip(rp, yp):
        ax.text(ri * 1.06, yi, f"×{ri:.2g}", va="center", fontsize=MIN_FONT, color="#c44e52")
    ax.axvline(1.0, color="0.3", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    every = np.concatenate([r, r - err[0], r + err[1], rp, [1.0]])
    every = every[every > 0]
    lo, hi = every.min() / 1.6, every.max() * 2.2
    ax.set_xlim(lo, hi)
    ticks = [t for t in (10.0 ** np.arange(-3, 4)[:, None] * np.array([1, 2, 5])).ravel() if lo <= t <= hi]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])      # 1-2-5 ticks in plain numbers, no minor labels
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yticks(list(row.values()), [method_label(m) for m in row], fontsize=MIN_FONT + 1)
    ax.set_ylim(-0.6, len(methods) - 0.4)
    ax.set_xlabel("training time ÷ AT's training time (log scale; dashed: AT)", fontsize=9)
    ax.tick_params(labelsize=MIN_FONT)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=MIN_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    _title(fig, title)
    return fig


def cat_comparison(results: pd.DataFrame, *, title: str = ""):
    """AGK-T5 (columns method, evaluation, accuracy in %, n): the supplement's Table 5 as grouped bars,
    one group per evaluation (clean, PGD-20, CW-20, transfer from each surrogate, in the order given),
    one bar per method (in the order given, one colour each) with its 95 % Wilson interval and value."""
    _need(results, ("method", "evaluation", "accuracy", "n"))
    methods = _ordered(results["method"])
    evaluations = _ordered(results["evaluation"])
    fig = new_figure(width=COLUMN_INCHES, height=3.9)
    ax = fig.subplots()
    xs = np.arange(len(evaluations), dtype=float)
    width = 0.84 / len(methods)
    for k, method in enumerate(methods):
        part = results[results["method"] == method].set_index("evaluation").reindex(evaluations)
        have = part["accuracy"].notna().to_numpy()
        acc = part["accuracy"].to_numpy(float)[have]
        pos = (xs + (k - (len(methods) - 1) / 2) * width)[have]
        err = _wilson(acc, part["n"].to_numpy(float)[have])
        ax.bar(pos, acc, width=width * 0.92, yerr=err, capsize=2, error_kw={"elinewidth": 0.8},
               color=_METHOD_COLOURS[k % len(_METHOD_COLOURS)], label=method_label(method))
        _bar_labels(ax, pos, acc, err[1], horizontal=False, rotate=len(methods) * len(evaluations) > 18)
    ax.set_xticks(xs, ["\n".join(textwrap.wrap(evaluation_label(e), 14)) for e in evaluations],
                  fontsize=MIN_FONT + 1)
    ax.set_ylabel("accuracy (%), 95 % intervals", fontsize=9)
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.tick_params(labelsize=MIN_FONT)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=MIN_FONT, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.2),
              frameon=False)
    _title(fig, title)
    return fig


_EVAL_MARKERS = {"natural": "o", "pgd:20": "^"}


def knn_vs_softmax(rows: pd.DataFrame, *, title: str = ""):
    """AGK-T6 (columns method, classifier ("knn", "softmax"), evaluation, accuracy in %, n): one marker per
    (method, evaluation) at (softmax accuracy, k-NN accuracy), colour = method, shape = evaluation, with
    the dashed diagonal on which the two classifiers agree (the supplement's claim: k-NN "performs very
    similarly as softmax") on equal axes. The legends sit right of the axes so that they cover no point.
    ``n`` is required with the rows but not drawn: the two accuracies of a point share its test images,
    so separate intervals would overstate how far from the diagonal a point may be."""
    _need(rows, ("method", "classifier", "evaluation", "accuracy", "n"))
    bad = sorted(set(rows["classifier"]) - {"knn", "softmax"})
    if bad:
        raise ValueError(f"unknown classifier(s) {', '.join(map(str, bad))}; valid: knn, softmax")
    wide = rows.pivot_table(index=["method", "evaluation"], columns="classifier", values="accuracy",
                            aggfunc="first", sort=False).dropna()
    methods = _ordered(rows["method"])
    evaluations = _ordered(rows["evaluation"])
    markers = dict(_EVAL_MARKERS)
    for e, m in zip([e for e in evaluations if e not in markers], "sDvP*X"):
        markers[e] = m
    fig = new_figure(width=0.8 * COLUMN_INCHES, height=4.4)     # square axes: a full-width figure is mostly blank
    ax = fig.subplots()
    for (method, evaluation), r in wide.iterrows():
        ax.plot(r["softmax"], r["knn"], markers[evaluation], ms=8, mec="black", mew=0.6, linestyle="none",
                color=_METHOD_COLOURS[methods.index(method) % len(_METHOD_COLOURS)])
    values = wide[["softmax", "knn"]].to_numpy(float)
    low, high = (values.min(), values.max()) if values.size else (0.0, 100.0)
    pad = max(3.0, 0.08 * (high - low))
    lim = (max(0.0, low - pad), min(100.0, high + pad))
    ax.plot(lim, lim, "--", color="0.4", linewidth=1)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xlabel("softmax accuracy (%)", fontsize=9)
    ax.set_ylabel("k-NN accuracy (%)", fontsize=9)
    ax.tick_params(labelsize=MIN_FONT)
    ax.grid(alpha=0.3)
    colour = [Line2D([], [], marker="s", linestyle="none", ms=8, color=_METHOD_COLOURS[k % len(_METHOD_COLOURS)],
                     label=method_label(m)) for k, m in enumerate(methods)]
    shape = [Line2D([], [], marker=markers[e], linestyle="none", ms=8, color="0.7", mec="black",
                    label=evaluation_label(e)) for e in evaluations]
    shape.append(Line2D([], [], linestyle="--", color="0.4", label="k-NN = softmax"))
    first = ax.legend(handles=colour, title="method", fontsize=MIN_FONT, title_fontsize=MIN_FONT,
                      loc="upper left", bbox_to_anchor=(1.04, 1.0), frameon=False)
    ax.add_artist(first)
    ax.legend(handles=shape, title="evaluation", fontsize=MIN_FONT, title_fontsize=MIN_FONT,
              loc="upper left", bbox_to_anchor=(1.04, 0.45), frameon=False)
    _title(fig, title)
    return fig


_MAX_TSNE_ROWS, _MAX_TSNE_COLS = 5, 4     # the supplement's Figs. 1-4: five attacked classes x four methods


def tsne_panels(points: pd.DataFrame, *, class_names: list[str] | None = None, title: str = ""):
    """AGK-F1 for ONE attack (columns method, attack, attacked, kind ("clean" or "adversarial"), label,
    x, y): rows = attacked classes (at most 5, in the order given), columns = methods (at most 4, in the
    order given), as the supplement's Figs. 1-4. In each panel the clean points are small triangles
    coloured by their true class (tab10) and the attacked class's adversarial examples red circles
    (the supplement's Section 7), drawn last and edged in black so that they stay apart from tab10's
    own red (class 3) where they land in its cluster. t-SNE coordinates carry no units: no ticks.
    ``class_names`` name the rows and the legend; without them the class indices do. Clean points
    with ``attacked`` -1 belong to every row (one map per method and attack, as
    :func:`advbook.analysis.agk.tsne_points` makes them)."""
    _need(points, ("method", "attack", "attacked", "kind", "label", "x", "y"))
    attacks = _ordered(points["attack"])
    if len(attacks) != 1:
        raise ValueError(f"tsne_panels draws one attack at a time; got {len(attacks)}: "
                         f"{', '.join(map(str, attacks))}")
    kinds = sorted(set(points["kind"]) - {"clean", "adversarial"})
    if kinds:
        raise ValueError(f"unknown kind(s) {', '.join(map(str, kinds))}; valid: adversarial, clean")
    attacked = _ordered(points.loc[points["attacked"] >= 0, "attacked"])
    methods = _ordered(points["method"])
    top = int(max(points["label"].max(), max(attacked)))
    if class_names is not None and len(class_names) <= top:
        raise ValueError(f"class_names has {len(class_names)} names; the points need {top + 1}")
    if len(attacked) > _MAX_TSNE_ROWS or len(methods) > _MAX_TSNE_COLS:
        raise ValueError(f"at most {_MAX_TSNE_ROWS} attacked classes and {_MAX_TSNE_COLS} methods; got "
                         f"{len(attacked)} and {len(methods)}")

    def name(c) -> str:
        return class_names[int(c)] if class_names is not None else f"class {int(c)}"

    fig = new_figure(width=COLUMN_INCHES * min(1.0, 0.25 + 0.1875 * len(methods)),
                     height=1.5 * len(attacked) + 1.2)
    axes = fig.subplots(len(attacked), len(methods), squeeze=False)
    colours = {c: f"C{int(c) % 10}" for c in sorted(set(points["label"]))}
    for i, c in enumerate(attacked):
        for j, method in enumerate(methods):
            ax = axes[i, j]
            part = points[points["attacked"].isin([c, -1]) & (points["method"] == method)]
            clean = part[part["kind"] == "clean"]
            adv = part[part["kind"] == "adversarial"]
            ax.scatter(clean["x"], clean["y"], s=6, marker="^", linewidths=0,
                       c=[colours[v] for v in clean["label"]])
            ax.scatter(adv["x"], adv["y"], s=10, marker="o", color="red", edgecolors="black", linewidths=0.3)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(method_label(method), fontsize=9)
            if j == 0:
                ax.set_ylabel(f"attacked: {name(c)}", fontsize=MIN_FONT)
    handles = [Line2D([], [], marker="^", linestyle="none", ms=6, color=colours[c], label=name(c))
               for c in colours]
    handles.append(Line2D([], [], marker="o", linestyle="none", ms=6, color="red", mec="black",
                          label=f"adversarial ({evaluation_label(attacks[0])})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=MIN_FONT,
               frameon=False, handletextpad=0.2, columnspacing=0.9)
    _title(fig, title)
    return fig


def tsne_figures(points: pd.DataFrame, *, class_names: list[str] | None = None,
                 title: str = "") -> list[tuple[str, Figure]]:
    """:func:`tsne_panels` for each attack of ``points`` in order, as (name, figure) pairs, the name
    the attack's with ":" as "_" (``pgd_20``: a file name for ``report.write_artifact(figures=...)``)."""
    _need(points, ("attack",))
    return [(str(a).replace(":", "_"), tsne_panels(points[points["attack"] == a], class_names=class_names,
                                                   title=f"{title}: {evaluation_label(a)}" if title else ""))
            for a in _ordered(points["attack"])]

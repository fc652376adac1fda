"""Figures of the LEC page on white-box attacks (LEC-F3 to LEC-F8), drawn like the book's other
figures (:mod:`advbook.book.plots`: at most ``COLUMN_INCHES`` wide, at most two plot panels per row,
no text below ``MIN_FONT``). Importing this module adds their alt texts to ``plots.FIGURES``.

The data come from :mod:`advbook.analysis.lec_whitebox`; nothing here runs an attack.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator

from advbook.book import plots
from advbook.book.plots import COLUMN_INCHES, MIN_FONT, _title
from advbook.book.report import new_figure

__all__ = ["FIGURES", "MODEL_LABELS", "amplification", "fgsm_figure", "pgd_figure", "deepfool_figure", "cw_figure",
           "jsma_figure", "universal_figure"]

FIGURES = {
    "LEC-F3": "top: test images, each clean, after untargeted FGSM and after targeted FGSM towards a given class, "
              "titled with the prediction and its probability; bottom: accuracy against the FGSM budget epsilon for "
              "a standard and a PGD-trained model, and the share of correctly classified images that untargeted "
              "FGSM misclassifies and that targeted FGSM sends to the target",
    "LEC-F4": "top: the cross-entropy loss along the PGD iterations for a few test images, one line per random "
              "start, for a standard and a PGD-trained model; bottom: accuracy after each number of PGD steps "
              "for both models, with the clean and the FGSM accuracy of the same images",
    "LEC-F5": "a two-dimensional affine classifier with three classes: a point, its distances to the two "
              "boundaries of its class and DeepFool's one step onto the nearest; then, for CIFAR-10 images, "
              "the logit margin of the clean prediction against the size of the perturbation along DeepFool's "
              "iterations, for a standard and a PGD-trained model, and the number of iterations DeepFool needed",
    "LEC-F6": "left: the change of variables x = (tanh w + 1)/2, which maps every real w into the valid pixel "
              "range [0, 1], and its slope; right: the L2 size of C&W-L2 adversarial examples against the "
              "confidence kappa, one line per image with the median, and how many images succeeded at each kappa",
    "LEC-F7": "a test image, JSMA's saliency map for its target class, the adversarial image with the changed "
              "pixels marked, and the number of input components JSMA changed for each attacked image",
    "LEC-F8": "the universal perturbation (amplified, as the panel says), the share of images whose prediction it "
              "changes on the images it was computed from and on held-out images, beside random noise of the "
              "same L2 norm, and its fooling rate after each pass over the build images",
}
plots.FIGURES.update(FIGURES)

MODEL_LABELS = {"standard": "standard", "at": "PGD-AT"}
_COLOURS = {"standard": "tab:blue", "at": "tab:orange"}
_NICE = (1, 2, 5)


def amplification(size: float, *, fill: float = 0.5) -> int:
    """The factor that shows a perturbation of L-inf ``size`` around grey: the largest of 1, 2, 5, 10,
    20, ... with ``factor * size <= fill`` (at least 1)."""
    if not size > 0:
        return 1
    v = fill / size
    if v <= 1:
        return 1
    exp = 10 ** math.floor(math.log10(v))
    return int(max(m * exp for m in _NICE if m * exp <= v))


def _rgb(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _eps_axis(ax) -> None:
    ax.set_xlabel("ε (× 1/255)", fontsize=9)
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------- LEC-F3

def fgsm_figure(examples: dict, summary: pd.DataFrame, *, classes, eps: float, example_model: str = "standard",
                title: str = ""):
    """LEC-F3: the example images (clean, untargeted FGSM, targeted FGSM) with predictions, then the
    accuracy against ε and the success rates of both attacks against ε, per model."""
    n = len(examples["position"])
    fig = new_figure(width=COLUMN_INCHES, height=2.0 * math.ceil(n / 2) + 3.4)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.0 * math.ceil(n / 2), 3.1])
    cols = 3 * min(n, 2)
    axes = np.asarray(top.subplots(math.ceil(n / 2), cols, squeeze=False)).ravel()
    for ax in axes:
        _bare(ax)
        ax.set_frame_on(False)
    for k in range(n):
        label, target = int(examples["label"][k]), int(examples["target"][k])
        for j, (key, head) in enumerate((("x", "clean"), ("x_fgsm", "FGSM"),
                                         ("x_targeted", f"→ {classes[target]}"))):
            ax = axes[3 * k + j]
            probs = examples["probs"][j][k]
            pred = int(probs.argmax())
            ax.imshow(_rgb(examples[key][k]))
            ax.set_frame_on(True)
            hit = (j == 1 and pred != label) or (j == 2 and pred == target)      # the attack did what it aims at
            ax.set_title(f"{head}\n{classes[pred]} {probs[pred]:.2f}", fontsize=MIN_FONT,
                         color="tab:red" if hit else "black")
    top.suptitle(f"{_label(example_model)} model, ε = {eps * 255:g}/255; labels "
                 + ", ".join(classes[int(c)] for c in examples["label"])
                 + "; red: the attack reached its goal", fontsize=9)
    ax1, ax2 = bottom.subplots(1, 2)
    for model, g in summary.groupby("model", sort=False):
        c = _COLOURS.get(model)
        ax1.plot(g["eps_255"], g["accuracy"], "o-", color=c, label=_label(model))
        h = g[g["eps"] > 0]
        ax2.plot(h["eps_255"], h["untargeted_success"], "o-", color=c)
        ax2.plot(h["eps_255"], h["targeted_success"], "s--", color=c)
    for ax in (ax1, ax2):
        ax.axvline(eps * 255, color="grey", linestyle=":", linewidth=1)
        _eps_axis(ax)
        ax.set_ylim(-3, 103)
        ax.tick_params(labelsize=MIN_FONT)
    ax1.set_ylabel("accuracy (%), all images", fontsize=9)
    ax1.set_title("accuracy under untargeted FGSM", fontsize=9)
    ax2.set_ylabel("success (%), correctly classified images", fontsize=9)
    ax2.set_title("solid: misclassified by untargeted FGSM\ndashed: sent to the target by targeted FGSM",
                  fontsize=9)
    ax1.legend(fontsize=MIN_FONT)
    _title(fig, title)
    return fig


# ---------------------------------------------------------------- LEC-F4

def pgd_figure(losses: pd.DataFrame, summary: pd.DataFrame, *, eps: float, step_size: float, title: str = ""):
    """LEC-F4: the loss along the PGD iterations (a colour per image, a line per random start), one
    panel per model; then the accuracy after each number of steps, with the clean and FGSM accuracy."""
    models = list(dict.fromkeys(summary["model"]))
    fig = new_figure(width=COLUMN_INCHES, height=7.0)
    grid = fig.subplots(2, len(models), squeeze=False, height_ratios=[1, 1.15])
    images = list(dict.fromkeys(losses["index"]))
    palette = ["tab:purple", "tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    for ax, model in zip(grid[0], models):
        for k, index in enumerate(images):
            for start, g in losses[(losses["model"] == model) & (losses["index"] == index)].groupby("start"):
                ax.plot(g["iteration"], g["loss"], color=palette[k % len(palette)], linewidth=1, alpha=0.8,
                        label=f"image {index}" if start == 0 else None)
        ax.set_title(f"{_label(model)}: loss from {losses['start'].nunique()} random starts", fontsize=9)
        ax.set_xlabel("PGD iteration", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=MIN_FONT)
    grid[0, 0].set_ylabel("cross-entropy of the label", fontsize=9)
    if images:
        grid[0, 0].legend(fontsize=MIN_FONT)
    gs = grid[1, 0].get_gridspec()
    for ax in grid[1]:
        ax.remove()
    ax = fig.add_subplot(gs[1, :])
    for model, g in summary.groupby("model", sort=False):
        c = _COLOURS.get(model)
        ax.plot(g["iteration"], g["pgd_accuracy"], "o-", color=c, markersize=3, label=f"{_label(model)}: PGD")
        ax.axhline(g["natural_accuracy"].iloc[0], color=c, linestyle=":", linewidth=1.2,
                   label=f"{_label(model)}: clean")
        ax.plot([1], [g["fgsm_accuracy"].iloc[0]], marker="X", markersize=10, color=c, linestyle="none",
                markeredgecolor="black", label=f"{_label(model)}: FGSM (one step of ε)")
    ax.set_xlabel(f"PGD steps of {step_size * 255:g}/255 (0: the random start)", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)", fontsize=9)
    ax.set_title(f"accuracy after each number of steps, ε = {eps * 255:g}/255, "
                 f"{int(summary['n'].iloc[0])} images", fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=MIN_FONT)
    ax.legend(fontsize=MIN_FONT, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    _title(fig, title)
    return fig


# ---------------------------------------------------------------- LEC-F5

def deepfool_figure(toy: pd.DataFrame, regions: tuple, path: pd.DataFrame, samples: pd.DataFrame, *,
                    title: str = ""):
    """LEC-F5: the toy affine classifier (regions, the point, its distance to each boundary of its
    class, DeepFool's step), then per model the path of DeepFool's iterates (margin of the clean
    prediction against the perturbation's L2 norm), then the iterations needed."""
    from matplotlib.colors import ListedColormap

    models = list(dict.fromkeys(samples["model"]))
    fig = new_figure(width=COLUMN_INCHES, height=7.0)
    axes = fig.subplots(2, 2).ravel()
    xx, yy, cls = regions
    ax = axes[0]
    ax.contourf(xx, yy, cls, levels=[-0.5, 0.5, 1.5, 2.5],
                cmap=ListedColormap(["#dbe9f6", "#fde2cf", "#e0f0d9"]))
    point = toy[["point_x", "point_y"]].iloc[0].to_numpy()
    w = np.linspace(0, 1, 2)
    for _, r in toy.iterrows():
        style = dict(color="black", linewidth=1.6) if r["nearest"] else dict(color="grey", linewidth=1.2)
        ax.plot([point[0], r["foot_x"]], [point[1], r["foot_y"]], linestyle="--", **style)
        ax.annotate(f"to class {int(r['other'])}: {r['distance']:.3f}", ((point[0] + r["foot_x"]) / 2,
                    (point[1] + r["foot_y"]) / 2), fontsize=MIN_FONT, xytext=(4, -10), textcoords="offset points")
        # the whole line (w_l - w_y) x + (b_l - b_y) = 0, also where another class wins
        dx, dy = r["foot_y"] - point[1], -(r["foot_x"] - point[0])
        if abs(dx) > abs(dy):
            ax.plot(w, r["foot_y"] + (w - r["foot_x"]) * dy / dx, color="grey", linewidth=0.6, linestyle=":")
        else:
            ax.plot(r["foot_x"] + (w - r["foot_y"]) * dx / dy, w, color="grey", linewidth=0.6, linestyle=":")
    land = toy[["landing_x", "landing_y"]].iloc[0].to_numpy()
    ax.annotate("", land, point, arrowprops=dict(arrowstyle="->", color="tab:red", linewidth=1.8))
    ax.plot(*point, marker="*", markersize=13, color="gold", markeredgecolor="black", linestyle="none")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=MIN_FONT)
    ax.set_title(f"affine toy: one DeepFool step (red)\nlands on the nearest boundary "
                 f"(margin after: {toy['margin_after'].iloc[0]:.1e})", fontsize=9)
    for k, label in enumerate(("class 0", "class 1", "class 2")):
        ax.text(*{0: (0.05, 0.05), 1: (0.85, 0.1), 2: (0.1, 0.9)}[k], label, fontsize=MIN_FONT)
    for ax, model in zip(axes[1:3], models):
        g = path[path["model"] == model]
        final = g.groupby("index")["l2"].max()
        right = 1.1 * float(final.quantile(0.95)) if len(final) else 1.0
        for _, p in g.groupby("index"):
            ax.plot(p["l2"], p["margin"], "-o", color=_COLOURS.get(model), markersize=2, linewidth=0.7, alpha=0.45)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlim(0, right)
        beyond = int((final > right).sum())
        ax.set_title(f"{_label(model)}: DeepFool's iterates, {g['index'].nunique()} images"
                     + (f"\n({beyond} end beyond the right edge)" if beyond else ""), fontsize=9)
        ax.set_xlabel("L2 norm of the perturbation so far", fontsize=9)
        ax.set_ylabel("logit margin of the clean prediction", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=MIN_FONT)
    ax = axes[3]
    top = int(max(1, samples.loc[samples["success"], "iterations"].max())) if samples["success"].any() else 1
    bins = np.arange(1, top + 1)
    width = 0.8 / max(1, len(models))
    for k, model in enumerate(models):
        s = samples[(samples["model"] == model) & samples["success"]]
        counts = [int((s["iterations"] == b).sum()) for b in bins]
        ax.bar(bins + (k - (len(models) - 1) / 2) * width, counts, width, color=_COLOURS.get(model),
               label=f"{_label(model)} (median L2 {s['l2'].median():.3f})")
    ax.set_xticks(bins)
    ax.set_xlabel("iterations to change the decision", fontsize=9)
    ax.set_ylabel("images", fontsize=9)
    ax.set_title("how many linearisations DeepFool needed", fontsize=9)
    ax.legend(fontsize=MIN_FONT)
    ax.grid(alpha=0.3, axis="y")
    ax.tick_params(labelsize=MIN_FONT)
    _title(fig, title)
    return fig


# ---------------------------------------------------------------- LEC-F6

def cw_figure(summary: pd.DataFrame, samples: pd.DataFrame, *, title: str = ""):
    """LEC-F6: the tanh change of variables and its slope; the L2 norm of the C&W-L2 examples against
    kappa (each image that succeeded at every kappa a thin line, the median over them bold), with
    the number of successes at each kappa."""
    fig = new_figure(width=COLUMN_INCHES, height=3.6)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.25])
    w = np.linspace(-4, 4, 401)
    x = (np.tanh(w) + 1) / 2
    ax1.axhspan(1, 1.25, color="tab:red", alpha=0.12)
    ax1.axhspan(-0.25, 0, color="tab:red", alpha=0.12)
    ax1.plot(w, x, color="black", linewidth=2, label="x = (tanh w + 1) / 2")
    ax1.plot(w, (1 - np.tanh(w) ** 2) / 2, color="tab:blue", linestyle="--", label="slope dx/dw")
    ax1.text(-3.9, 1.06, "no w lands here", fontsize=MIN_FONT, color="tab:red")
    ax1.text(-3.9, -0.19, "nor here", fontsize=MIN_FONT, color="tab:red")
    ax1.set_ylim(-0.25, 1.25)
    ax1.set_xlabel("w (the variable Adam updates, unconstrained)", fontsize=9)
    ax1.set_ylabel("pixel value x", fontsize=9)
    ax1.set_title("every real w gives a valid pixel", fontsize=9)
    ax1.legend(fontsize=MIN_FONT, loc="upper left", bbox_to_anchor=(0, 0.86))
    ax1.grid(alpha=0.3)
    ax1.tick_params(labelsize=MIN_FONT)
    kappas = sorted(samples["kappa"].unique())
    every = samples.groupby("index")["success"].transform("all")
    paired = samples[every]
    for _, g in paired.groupby("index"):
        g = g.sort_values("kappa")
        ax2.plot(g["kappa"], g["l2"], color="grey", linewidth=0.7, alpha=0.5)
    med = paired.groupby("kappa")["l2"].median().reindex(kappas)
    ax2.plot(kappas, med, "o-", color="black", linewidth=2,
             label=f"median, {paired['index'].nunique()} images that succeeded at every κ")
    allmed = summary.set_index("kappa")["l2_median"].reindex(kappas)
    ax2.plot(kappas, allmed, "s--", color="tab:orange", label="median over all successes at that κ")
    done = summary.set_index("kappa").reindex(kappas)
    ax2.set_xticks(kappas, [f"{k:g}\n{int(round(r['success'] * r['n'] / 100))}/{int(r['n'])}"
                            for k, (_, r) in zip(kappas, done.iterrows())])
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("confidence κ (below it: images that succeeded)", fontsize=9)
    ax2.set_ylabel("L2 norm of the adversarial perturbation", fontsize=9)
    ax2.set_title("C&W-L2: the distance/confidence trade-off", fontsize=9)
    ax2.legend(fontsize=MIN_FONT, loc="upper left")
    ax2.grid(alpha=0.3)
    ax2.tick_params(labelsize=MIN_FONT)
    _title(fig, title)
    return fig


# ---------------------------------------------------------------- LEC-F7

def jsma_figure(example: dict, samples: pd.DataFrame, summary: pd.DataFrame, *, classes, title: str = ""):
    """LEC-F7: the example image, its saliency map for the target (largest over the colour channels),
    the adversarial image with the changed pixels marked, and the L0 count of every attacked image."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = new_figure(width=COLUMN_INCHES, height=5.6)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.6, 2.6])
    a, b, c = top.subplots(1, 3)
    a.imshow(_rgb(example["x"]))
    a.set_title(f"clean: {classes[example['label']]}\n(predicted {classes[example['pred']]})", fontsize=9)
    sal = example["saliency"].detach().cpu().amax(0).numpy()
    im = b.imshow(sal, cmap="magma")
    b.set_title(f"saliency map for target\n{classes[example['target']]} (max over channels)", fontsize=9)
    bar = top.colorbar(im, ax=b, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=MIN_FONT)
    bar.formatter.set_powerlimits((-2, 2))
    bar.ax.yaxis.get_offset_text().set_fontsize(MIN_FONT)
    c.imshow(_rgb(example["x_adv"]))
    mask = example["changed"].detach().cpu().any(0).numpy()
    overlay = np.zeros((*mask.shape, 4))
    overlay[mask] = (0.0, 1.0, 1.0, 0.75)
    c.imshow(overlay)
    c.set_title(f"JSMA: predicted {classes[example['pred_adv']]}\n{int(mask.sum())} pixels changed (cyan)",
                fontsize=9)
    for ax in (a, b, c):
        _bare(ax)
    ax = bottom.subplots()
    s = samples.sort_values(["success", "l0_features"], ascending=[False, True]).reset_index(drop=True)
    colours = np.where(s["success"], "tab:green", "tab:grey")
    ax.bar(np.arange(len(s)), s["l0_features"], color=colours)
    cap = int(summary["l0_features_max_allowed"].iloc[0])
    ax.axhline(cap, color="tab:red", linestyle=":", linewidth=1.2)
    handles = [Line2D([], [], color="tab:red", linestyle=":", linewidth=1.2),
               Patch(color="tab:green"), Patch(color="tab:grey")]
    labels = [f"budget: γ = {summary['gamma'].iloc[0]:g} of {int(summary['n_features'].iloc[0])} components = {cap}",
              f"reached the target ({int(s['success'].sum())})", f"did not ({int((~s['success']).sum())})"]
    ax.set_xticks([])
    ax.set_xlabel(f"attacked images ({len(s)}), sorted", fontsize=9)
    ax.set_ylabel("components changed (L0)", fontsize=9)
    ax.set_title("how many input components JSMA changed per image", fontsize=9)
    ax.legend(handles, labels, fontsize=MIN_FONT, loc="upper left")
    ax.set_ylim(0, 1.35 * cap)
    ax.grid(alpha=0.3, axis="y")
    ax.tick_params(labelsize=MIN_FONT)
    _title(fig, title)
    return fig


# ---------------------------------------------------------------- LEC-F8

def universal_figure(v: torch.Tensor, summary: pd.DataFrame, history: list[float], *, title: str = ""):
    """LEC-F8: ``v`` around grey (amplified, the factor in the panel's title), the fooling rates on the
    build and held-out images beside the random control, and the fooling rate after each pass."""
    fig = new_figure(width=COLUMN_INCHES, height=3.3)
    a, b, c = fig.subplots(1, 3, width_ratios=[1, 1.35, 0.9])
    size = float(v.abs().max())
    k = amplification(size)
    a.imshow(_rgb(0.5 + k * v[0]))
    _bare(a)
    a.set_title(f"v, amplified ×{k}\n(L∞ {size * 255:.1f}/255, L2 {float(v.norm()):.2f})", fontsize=9)
    splits = [("build", "build images"), ("held_out", "held-out images")]
    x = np.arange(len(splits))
    for j, (kind, label, colour) in enumerate((("uap", "universal v", "tab:red"),
                                               ("noise", "random, same L2", "tab:grey"))):
        vals = [summary[(summary["split"] == s) & (summary["perturbation"] == kind)]["fooling_rate"].iloc[0]
                for s, _ in splits]
        bars = b.bar(x + (j - 0.5) * 0.38, vals, 0.38, color=colour, label=label)
        b.bar_label(bars, fmt="%.0f", fontsize=MIN_FONT)
    ns = [int(summary[summary["split"] == s]["n"].iloc[0]) for s, _ in splits]
    b.set_xticks(x, [f"{lbl}\n(n = {n})" for (_, lbl), n in zip(splits, ns)], fontsize=MIN_FONT)
    b.set_ylabel("fooling rate (%)", fontsize=9)
    b.set_ylim(0, 105)
    b.set_title("prediction changed", fontsize=9)
    b.legend(fontsize=MIN_FONT, loc="upper right")
    b.grid(alpha=0.3, axis="y")
    b.tick_params(labelsize=MIN_FONT)
    c.plot(np.arange(1, len(history) + 1), [100 * h for h in history], "o-", color="tab:red")
    c.set_xticks(np.arange(1, len(history) + 1))
    c.set_ylim(0, 105)
    c.set_xlabel("pass over the build images", fontsize=9)
    c.set_ylabel("fooling rate on them (%)", fontsize=9)
    c.set_title("while building v", fontsize=9)
    c.grid(alpha=0.3)
    c.tick_params(labelsize=MIN_FONT)
    _title(fig, title)
    return fig

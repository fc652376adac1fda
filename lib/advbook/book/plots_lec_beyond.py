"""Figures of the LEC page on attacks beyond L_p and beyond white-box access (LEC-F9, LEC-F10), drawn
like the book's other figures (:mod:`advbook.book.plots`: at most ``COLUMN_INCHES`` wide, no text
below ``MIN_FONT``). Importing this module adds their alt texts to ``plots.FIGURES``."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from advbook.book import plots
from advbook.book.plots import COLUMN_INCHES, MIN_FONT, _panels, _title

__all__ = ["FIGURES", "nonlp_examples", "blackbox_panels", "example_rows", "MODEL_LABELS"]

FIGURES = {
    "LEC-F9": "rows of test images: the clean image, the flow-attacked image with its flow field drawn as "
              "arrows, the flow attack's pixel change amplified, the colour-attacked image and its pixel change "
              "amplified, each titled with the model's prediction",
    "LEC-F10": "three panels: cosine between zeroth-order gradient estimates and the true gradient against the "
               "number of queries, per estimator; the distance to the decision boundary found by a hard-label "
               "search along random directions and along the gradient, per image; accuracy under the Square "
               "attack against its query budget for a standard and an adversarially trained model",
}
plots.FIGURES.update(FIGURES)

MODEL_LABELS = {"standard": "standard", "at": "PGD-AT"}
_NICE = (1, 2, 5)


def _nice_floor(v: float) -> int:
    """The largest of 1, 2, 5, 10, 20, 50, ... not above ``v`` (at least 1): a readable amplification."""
    if not v > 1:
        return 1
    exp = 10 ** math.floor(math.log10(v))
    return int(max(m * exp for m in _NICE if m * exp <= v))


def example_rows(samples: pd.DataFrame, *, n: int) -> list[int]:
    """Which rows of :func:`advbook.analysis.lec_beyond.nonlp_samples`' table LEC-F9 draws, a rule fixed
    before the attacks ran: the first ``n`` (in test-index order) that both attacks fooled, then, if
    fewer, those only the flow attack fooled, then the others."""
    both = (samples["flow_fooled"] & samples["colour_fooled"]).to_numpy()
    flow_only = samples["flow_fooled"].to_numpy() & ~both
    order = [*np.flatnonzero(both), *np.flatnonzero(flow_only), *np.flatnonzero(~both & ~flow_only)]
    return [int(i) for i in order[:n]]


def _rgb(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()


def nonlp_examples(x: torch.Tensor, flow_result, colour_result, samples: pd.DataFrame, *, classes,
                   n_examples: int = 2, arrow_every: int = 4, title: str = ""):
    """LEC-F9: for ``n_examples`` images (:func:`example_rows`), the clean image, the flow adversarial with
    the flow drawn as arrows (every ``arrow_every`` pixels, from each pixel towards the point it samples,
    amplified so that the longest shown is about three pixels), the flow's change of the pixel values,
    the colour adversarial and its change. Each change column has its own amplification (around grey =
    no change), written in its title, so that the colour attack's small changes show too."""
    rows = example_rows(samples, n=n_examples)
    flows = flow_result.flow.detach().cpu()
    amp = {}
    for name, result in (("flow", flow_result), ("colour", colour_result)):
        largest = max(float((result.x_adv[r] - x[r]).abs().max()) for r in rows)
        amp[name] = min(50, _nice_floor(0.5 / max(largest, 1e-6)))
    longest = max(float(flows[r].norm(dim=0).max()) for r in rows)
    arrows = min(100, _nice_floor(3.0 / max(longest, 1e-6)))
    fig, grid, axes = _panels(5 * len(rows), max_cols=5, panel_height=1.75, extra_height=0.55)
    h, w = x.shape[-2:]
    ys, xs = np.mgrid[arrow_every // 2:h:arrow_every, arrow_every // 2:w:arrow_every]
    for i, r in enumerate(rows):
        s = samples.iloc[r]
        ax = grid[i]
        ax[0].imshow(_rgb(x[r]))
        ax[0].set_title(f"clean: {classes[int(s['clean_pred'])]}\n(label {classes[int(s['label'])]})", fontsize=MIN_FONT)
        ax[1].imshow(_rgb(flow_result.x_adv[r]))
        f = flows[r].numpy()
        ax[1].quiver(xs, ys, f[0][ys, xs], f[1][ys, xs], angles="xy", scale_units="xy", scale=1 / arrows,
                     color="yellow", width=0.012, headwidth=3, minlength=0)
        ax[1].set_title(f"flow: {classes[int(s['flow_pred'])]}\nmax shift {s['flow_shift_max']:.2f} px",
                        fontsize=MIN_FONT)
        ax[2].imshow(_rgb(0.5 + amp["flow"] * (flow_result.x_adv[r] - x[r])))
        ax[2].set_title(f"flow − clean\namplified ×{amp['flow']}, L∞ {255 * s['flow_linf']:.0f}/255", fontsize=MIN_FONT)
        ax[3].imshow(_rgb(colour_result.x_adv[r]))
        ax[3].set_title(f"colour: {classes[int(s['colour_pred'])]}", fontsize=MIN_FONT)
        ax[4].imshow(_rgb(0.5 + amp["colour"] * (colour_result.x_adv[r] - x[r])))
        ax[4].set_title(f"colour − clean\namplified ×{amp['colour']}, L∞ {255 * s['colour_linf']:.0f}/255",
                        fontsize=MIN_FONT)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _title(fig, ". ".join(t for t in (title.rstrip(". "), f"Arrows amplified ×{arrows}; pixel changes amplified "
                                                             "as titled, around grey.") if t))
    return fig


def blackbox_panels(zoo_rows: pd.DataFrame, per_direction: pd.DataFrame, hard: pd.DataFrame,
                    square: pd.DataFrame, trace: pd.DataFrame, *, dim: int, max_distance: float, title: str = ""):
    """LEC-F10: (1) cosine of the zeroth-order estimate to the true gradient against queries, each
    image thin and the median bold, per estimator, with the value for a linear loss whose gradient is
    spread evenly over the ``dim`` coordinates dashed (coordinate: √(k/d); Gaussian, to first order:
    √(k/(k+d+1)), k = queries/2); (2) per image, sorted by the distance along the gradient, the boundary distance
    along every random direction (grey), the best of them and along the gradient; (3) accuracy
    against Square's budget per model, the clean accuracy dotted."""
    fig, grid, axes = _panels(4, max_cols=2, panel_height=3.1, extra_height=0.6)
    colours = {"coordinate": "tab:blue", "gaussian": "tab:orange"}
    ax = axes[0]
    for est, g in zoo_rows.groupby("estimator", sort=False):
        c = colours.get(est, "tab:green")
        for _, one in g.groupby("index"):
            ax.plot(one["queries"], one["cosine"], color=c, alpha=0.25, linewidth=0.8)
        med = g.groupby("queries")["cosine"].median()
        ax.plot(med.index, med.values, "o-", color=c, linewidth=2, markersize=4, label=f"{est} (median)")
        q = np.geomspace(med.index.min(), med.index.max(), 50)
        k = q / 2
        ref = np.sqrt(k / dim) if est == "coordinate" else np.sqrt(k / (k + dim + 1))
        ax.plot(q, ref, "--", color=c, linewidth=1, label=f"{est}, linear loss")
    ax.axvline(2 * dim, color="black", linestyle=":", linewidth=0.8)
    ax.text(2 * dim, 0.02, " 2d", fontsize=MIN_FONT, ha="right", va="bottom", rotation=90)
    ax.set_xscale("log")
    ax.set_ylim(min(0.0, float(zoo_rows["cosine"].min()) - 0.05), 1.05)
    ax.set_xlabel("queries per image", fontsize=9)
    ax.set_ylabel("cosine to the true gradient", fontsize=9)
    ax.set_title("ZOO: finite-difference estimates", fontsize=9)
    ax.legend(fontsize=MIN_FONT, loc="upper left")

    ax = axes[1]
    order = hard.sort_values("dist_gradient", kind="stable").reset_index(drop=True)
    rank = {idx: r for r, idx in enumerate(order["index"])}
    dirs = per_direction[np.isfinite(per_direction["distance"])]
    ax.scatter(dirs["index"].map(rank), dirs["distance"], s=5, color="0.65", label="each random direction")
    found = order[order["success_random"]]
    ax.scatter(found.index, found["dist_random"], s=14, marker="x", color="tab:orange", label="best random direction")
    missed = order[~order["success_random"]]
    if len(missed):
        ax.scatter(missed.index, [max_distance] * len(missed), s=14, marker="^", color="tab:red",
                   label=f"no boundary ≤ {max_distance:g}")
    grad_found = order[order["success_gradient"]]
    ax.scatter(grad_found.index, grad_found["dist_gradient"], s=10, color="tab:blue", label="gradient direction")
    ax.set_yscale("log")
    ax.set_ylim(top=30 * max_distance)                     # room for the legend above the points
    ax.set_xlabel("image (sorted by distance along the gradient)", fontsize=9)
    ax.set_ylabel("distance to the boundary (L2)", fontsize=9)
    ax.set_title(f"hard-label search: median {hard['queries_random'].median():.0f} queries per image\n"
                 f"over {per_direction['direction'].nunique()} random directions", fontsize=9)
    ax.legend(fontsize=MIN_FONT, loc="upper center", ncol=2, handletextpad=0.2, columnspacing=0.8)

    ax = axes[2]
    for i, (model, g) in enumerate(trace.groupby("model", sort=False)):
        c = f"C{i}"
        acc = 100 * g.groupby("budget")["robust"].mean()
        ax.plot(acc.index, acc.values, "o-", color=c, label=f"{MODEL_LABELS.get(model, model)} under Square")
        clean = 100 * square.loc[square["model"] == model, "natural"].mean()
        ax.axhline(clean, color=c, linestyle=":", linewidth=1, label=f"{MODEL_LABELS.get(model, model)}, clean")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel("query budget (Square iterations)", fontsize=9)
    ax.set_ylabel("accuracy (%)", fontsize=9)
    ax.set_title("Square: a query-based local search", fontsize=9)
    ax.legend(fontsize=MIN_FONT, loc="upper right")
    for ax in axes[:3]:
        ax.tick_params(labelsize=MIN_FONT)
        ax.grid(alpha=0.3)
    axes[3].axis("off")
    axes[3].text(0.0, 1.0, _numbers(zoo_rows, hard, square, trace), va="top", ha="left", fontsize=MIN_FONT,
                 family="monospace", transform=axes[3].transAxes)
    _title(fig, title)
    return fig


def _numbers(zoo_rows: pd.DataFrame, hard: pd.DataFrame, square: pd.DataFrame, trace: pd.DataFrame) -> str:
    """The numbers behind LEC-F10's panels, as lines of text for its fourth cell."""
    lines = ["The numbers behind the panels", ""]
    top = zoo_rows[zoo_rows["queries"] == zoo_rows["queries"].max()]
    lines += [f"ZOO, {top['queries'].iloc[0]} queries: median cosine"]
    lines += [f"  {e:<11} {g['cosine'].median():.3f} ({len(g)} images)" for e, g in top.groupby("estimator", sort=False)]
    n = len(hard)
    found = hard[hard["success_random"]]
    lines += ["", f"hard-label attack, {n} images:",
              f"  boundary found: random {len(found)}, gradient {int(hard['success_gradient'].sum())}",
              f"  median queries: random {hard['queries_random'].median():.0f}, "
              f"gradient {hard['queries_gradient'].median():.0f}",
              f"  median L2 of its adversarials: {found['l2_random'].median():.2f}" if len(found) else
              "  no adversarial found"]
    last = trace["budget"].max()
    lines += ["", f"Square, accuracy clean → {last} iterations:"]
    for model, g in square.groupby("model", sort=False):
        after = 100 * trace[(trace["model"] == model) & (trace["budget"] == last)]["robust"].mean()
        lines.append(f"  {MODEL_LABELS.get(model, model):<9} {100 * g['natural'].mean():5.1f}% → {after:5.1f}% "
                     f"({len(g)} images)")
    return "\n".join(lines)

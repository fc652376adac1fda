"""Figures of the LEC page on adversarial examples and threat models (LEC-F1, LEC-F2), drawn like the
book's other figures (:mod:`advbook.book.plots`: at most ``COLUMN_INCHES`` wide, no text below
``MIN_FONT``). Importing this module adds their alt texts to ``plots.FIGURES``.

Perturbations are drawn as ``0.5 + k * delta`` per colour channel (mid-grey: no change), with the
amplification ``k`` written on the panel: the largest of 1, 2, 5, 10, 20, ... that keeps the panel's
largest change within the range, at most 100.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from advbook.book import plots
from advbook.book.plots import COLUMN_INCHES, MIN_FONT, _title
from advbook.book.report import new_figure
from advbook.evaluation.lec_examples import NORMS, AttackRun

__all__ = ["FIGURES", "LABELS", "NORM_LABELS", "OWN_NORM", "amplification", "examples_grid", "threat_models"]

FIGURES = {
    "LEC-F1": "one clean test image and, for FGSM, PGD, DeepFool and C&W-L2, the adversarial image, its "
              "perturbation amplified (the factor written on each panel) and the model's three largest "
              "softmax confidences as bars, the true class in green",
    "LEC-F2": "top: one clean test image and the perturbations that L-inf PGD, L2 PGD and the L0 attack "
              "JSMA found for it, each amplified and titled with its L0, L2 and L-inf norms; bottom: one "
              "panel per norm with the distribution over test images of each attack's perturbation size "
              "(log scale), the attack built for that norm in colour",
}
plots.FIGURES.update(FIGURES)

LABELS = {"fgsm": "FGSM", "pgd": "PGD", "deepfool": "DeepFool", "cw_l2": "C&W-L2",
          "pgd_linf": "PGD-L∞", "pgd_l2": "PGD-L2", "jsma": "JSMA"}
NORM_LABELS = {"l0": "L0 (values changed)", "l2": "L2", "linf": "L∞ (in 1/255)"}
OWN_NORM = {"pgd_linf": "linf", "pgd_l2": "l2", "jsma": "l0"}   # the threat model each LEC-F2 attack works in
_NICE = (1, 2, 5)
_MAX_AMP = 100


def amplification(delta: torch.Tensor, *, room: float = 0.5) -> int:
    """The factor ``k`` a perturbation is drawn with: the largest of 1, 2, 5, 10, 20, 50, 100 with
    ``k * max|delta| <= room`` (1 when even ``k = 1`` overflows; 100 for a zero perturbation)."""
    peak = float(delta.abs().max()) if delta.numel() else 0.0
    if peak <= 0:
        return _MAX_AMP
    v = room / peak
    if v <= 1:
        return 1
    exp = 10 ** math.floor(math.log10(v))
    return int(min(_MAX_AMP, max(m * exp for m in _NICE if m * exp <= v)))


def _rgb(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()


def _image(ax, t: torch.Tensor, title: str) -> None:
    ax.imshow(_rgb(t), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=MIN_FONT)


def _delta(ax, delta: torch.Tensor, title: str) -> int:
    k = amplification(delta)
    _image(ax, 0.5 + k * delta, title.format(k=k))
    return k


def _bars(ax, probs: torch.Tensor, *, label: int, classes, top: int = 3) -> None:
    """The ``top`` largest softmax outputs as horizontal bars, class and percent written on them."""
    values, cls = probs.topk(top)
    for i, (v, c) in enumerate(zip(values.tolist(), cls.tolist())):
        ax.barh(i, v, color="tab:green" if c == label else "0.65", height=0.8)
        ax.text(0.03, i, f"{classes[c]} {100 * v:.0f}%", va="center", ha="left", fontsize=MIN_FONT)
    ax.set_xlim(0, 1)
    ax.set_ylim(top - 0.5, -0.5)
    ax.set_xticks([0, 0.5, 1], ["0", "", "1"], fontsize=MIN_FONT)
    ax.set_yticks([])


def examples_grid(run: AttackRun, *, row: int, classes, title: str = ""):
    """LEC-F1: for the image at position ``row`` of ``run``, the clean image and every attack's adversarial
    image (top, titled with the prediction and its confidence), the perturbation amplified (middle,
    with its L2 and L∞ norms) and the three largest softmax outputs (bottom, the true class green)."""
    attacks = run.attacks
    s = run.samples[run.samples["index"] == run.samples["index"].iloc[row]].set_index("attack")
    label = int(s["label"].iloc[0])
    cols = len(attacks) + 1
    fig = new_figure(width=COLUMN_INCHES, height=5.3)
    grid = fig.subplots(3, cols, height_ratios=[1, 1, 0.55], squeeze=False)
    clean = run.probs["clean"][row]
    _image(grid[0, 0], run.x[row], f"clean\n{classes[int(clean.argmax())]} {100 * float(clean.max()):.0f}%")
    grid[1, 0].axis("off")
    grid[1, 0].text(0.0, 0.5, "perturbation\n= adversarial\n   − clean,\namplified ×k;\ngrey: no change",
                    fontsize=MIN_FONT, va="center", ha="left", transform=grid[1, 0].transAxes)
    _bars(grid[2, 0], clean, label=label, classes=classes)
    grid[2, 0].set_ylabel("top 3", fontsize=MIN_FONT)
    for j, attack in enumerate(attacks, start=1):
        r, p = s.loc[attack], run.probs[attack][row]
        _image(grid[0, j], run.x_adv[attack][row],
               f"{LABELS.get(attack, attack)}\n{classes[int(p.argmax())]} {100 * float(p.max()):.0f}%")
        _delta(grid[1, j], run.x_adv[attack][row] - run.x[row],
               f"amplified ×{{k}}\nL2 {r['l2']:.2f} · L∞ {255 * r['linf']:.1f}/255")
        _bars(grid[2, j], p, label=label, classes=classes)
    _title(fig, title)
    return fig


def threat_models(run: AttackRun, *, row: int, classes, title: str = ""):
    """LEC-F2: top, the clean image at position ``row`` of ``run`` and each attack's perturbation of it
    (amplified), titled with the prediction it caused and its L0, L2 and L∞ norms; bottom, one panel
    per norm: each attack's norms over the images that every attack fooled (box: quartiles, line:
    median, whiskers: 5th-95th percentile, log scale), the attack built for that norm in colour."""
    attacks = run.attacks
    samples = run.samples
    s = samples[samples["index"] == samples["index"].iloc[row]].set_index("attack")
    fig = new_figure(width=COLUMN_INCHES, height=5.2)
    gs = fig.add_gridspec(2, 12, height_ratios=[1.05, 1])
    top = [fig.add_subplot(gs[0, 3 * i:3 * i + 3]) for i in range(len(attacks) + 1)]
    clean = run.probs["clean"][row]
    _image(top[0], run.x[row], f"clean: {classes[int(clean.argmax())]} {100 * float(clean.max()):.0f}%\n"
                               f"(label {classes[int(s['label'].iloc[0])]})\n ")
    for ax, attack in zip(top[1:], attacks):
        r, p = s.loc[attack], run.probs[attack][row]
        _delta(ax, run.x_adv[attack][row] - run.x[row],
               f"{LABELS.get(attack, attack)} (×{{k}}) → {classes[int(p.argmax())]} {100 * float(p.max()):.0f}%\n"
               f"L0 {int(r['l0'])} · L2 {r['l2']:.2f}\nL∞ {255 * r['linf']:.1f}/255")
    every = samples.groupby("index")["fooled"].all()
    on = samples[samples["index"].isin(every[every].index)]
    bottom = [fig.add_subplot(gs[1, 4 * i:4 * i + 4]) for i in range(len(NORMS))]
    for ax, norm in zip(bottom, NORMS):
        scale = 255.0 if norm == "linf" else 1.0
        data = [np.maximum(scale * on.loc[on["attack"] == a, norm].to_numpy(float), 1e-3) for a in attacks]
        if len(on):
            box = ax.boxplot(data, whis=(5, 95), showfliers=False, patch_artist=True, widths=0.6,
                             medianprops={"color": "black"})
            for patch, attack in zip(box["boxes"], attacks):
                patch.set_facecolor("tab:orange" if OWN_NORM.get(attack) == norm else "0.85")
        else:
            ax.text(0.5, 0.5, "no image fooled\nby all three", transform=ax.transAxes, ha="center", va="center",
                    fontsize=MIN_FONT)
        ax.set_yscale("log")
        ax.set_xlim(0.5, len(attacks) + 0.5)
        ax.set_xticks(range(1, len(attacks) + 1), [LABELS.get(a, a) for a in attacks], fontsize=MIN_FONT)
        ax.tick_params(axis="y", labelsize=MIN_FONT)
        ax.set_title(NORM_LABELS[norm], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    bottom[0].set_ylabel(f"size of the perturbation\n({on['index'].nunique()} images all three fool)",
                         fontsize=MIN_FONT)
    _title(fig, title)
    return fig

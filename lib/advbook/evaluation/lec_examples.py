"""What adversarial examples are, measured image by image (LEC-F1 and LEC-F2; lecture §12.1, 04:49-08:10).

The attacks live in :mod:`advbook.attacks`; this module runs a page's set of them on the same test
images and returns one table row per (image, attack), which the page saves and the claims engine reads.

* :func:`attack_settings`: the page's attacks and their keywords from its parameters: LEC-F1's four
  (FGSM, PGD run to all its steps, DeepFool, C&W-L2) and LEC-F2's one per threat model (L-inf PGD and
  L2 PGD, each stopped at its first misclassified iterate, and JSMA for L0).
* :func:`run_attacks`: every attack against the true labels; per image and attack the clean and the
  adversarial prediction and confidence, whether the attack fooled the model, and the perturbation's
  L0, L2 and L-inf norms.
* :func:`norm_summary`: one row per attack: how often it fooled the model and the median norms of its
  perturbations over the images that *every* attack of the table fooled (the same images for each).
* :func:`pairwise`: for every pair of attacks and every norm, which of the two perturbations is the
  smaller on each image (the per-image booleans a paired sign test reads).
* :func:`example_row`: which image a figure draws, by a rule fixed before the attacks ran.

Conventions. Images are in [0, 1]; the norms are those of ``delta = x_adv - x`` over all
``3 x 32 x 32`` input values. **L0 counts input values (each colour channel of each pixel), not
pixels**, as JSMA does; a value counts as changed when it moved by more than ``l0_tol`` (``1e-4`` in
the book's profiles: far above float rounding, below every attack's step, so L2 attacks such as C&W,
which move almost every value a little, have a large L0). ``l0_pixels`` counts pixels with any channel
changed. An attack *fools* the model on an image the model classifies correctly when its output is
classified as anything else, whatever the attack's own goal (JSMA aims at one target class; reaching
another wrong class also counts here).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import pandas as pd
import torch

from advbook.attacks.core import deepfool, pgd, without_true
from advbook.attacks.cw import cw_l2
from advbook.attacks.fgsm import fgsm
from advbook.attacks.jsma import jsma
from advbook.data import balanced_subset, to_float

__all__ = ["METHODS", "NORMS", "AttackRun", "attack_settings", "test_images", "likeliest_wrong", "run_attacks",
           "norm_summary", "pairwise", "example_row"]

NORMS = ("l0", "l2", "linf")


def likeliest_wrong(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, the class other than ``y`` with the largest logit on ``x``: JSMA's target here."""
    with torch.no_grad():
        return without_true(model(x), y).argmax(1)


def _jsma_untargeted(model, x, y, *, theta: float, gamma: float) -> torch.Tensor:
    """JSMA towards each image's likeliest wrong class (:func:`likeliest_wrong`): the easiest target."""
    return jsma(model, x, likeliest_wrong(model, x, y), theta=theta, gamma=gamma).result.x_adv


def _adversarial(attack: Callable) -> Callable[..., torch.Tensor]:
    """``attack`` (returning an AttackResult) as a function returning its adversarial images."""
    def run(model, x, y, **settings) -> torch.Tensor:
        return attack(model, x, y, **settings).x_adv
    run.__name__ = attack.__name__
    return run


# method name -> (model, x, y, **settings) -> x_adv; every attack is untargeted against ``y`` here
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "fgsm": _adversarial(fgsm), "pgd": _adversarial(pgd), "deepfool": _adversarial(deepfool),
    "cw_l2": _adversarial(cw_l2), "jsma": _jsma_untargeted,
}


def attack_settings(params: dict) -> dict[str, dict[str, tuple[str, dict]]]:
    """The page's attacks from its parameters: ``{"f1": {...}, "f2": {...}}``, each mapping an attack's
    name (a table's ``attack`` column) to ``(method of METHODS, keywords)``. PGD has no random start, so
    a rerun draws the same paths; LEC-F1's PGD runs all its steps (the usual evaluation: a confident
    mistake), LEC-F2's two stop at the first misclassified iterate (the smallest perturbation on the path)."""
    p = params
    return {
        "f1": {
            "fgsm": ("fgsm", dict(eps=p["fgsm_eps"])),
            "pgd": ("pgd", dict(norm="linf", eps=p["pgd_eps"], step_size=p["pgd_step_size"], steps=p["pgd_steps"],
                                stop_on_success=False)),
            "deepfool": ("deepfool", dict(steps=p["deepfool_steps"], overshoot=p["deepfool_overshoot"])),
            "cw_l2": ("cw_l2", dict(binary_steps=p["cw_binary_steps"], steps=p["cw_steps"], lr=p["cw_lr"],
                                    initial_const=p["cw_initial_const"])),
        },
        "f2": {
            "pgd_linf": ("pgd", dict(norm="linf", eps=p["linf_eps"], step_size=p["linf_step_size"],
                                     steps=p["linf_steps"], stop_on_success=True)),
            "pgd_l2": ("pgd", dict(norm="l2", eps=p["l2_eps"], step_size=p["l2_step_size"], steps=p["l2_steps"],
                                   stop_on_success=True)),
            "jsma": ("jsma", dict(theta=p["jsma_theta"], gamma=p["jsma_gamma"])),
        },
    }


def test_images(dataset, *, n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n // classes`` test images of every class (:func:`advbook.data.balanced_subset`: for one seed a
    smaller ``n`` gives a subset of a larger one). Returns their sorted test indices, the images in
    [0, 1] on ``device`` and their labels on ``device``."""
    classes = len(dataset.classes)
    if n < classes:
        raise ValueError(f"n must be at least the number of classes ({classes}), got {n}")
    index = balanced_subset(dataset.test.labels, n_per_class=n // classes, seed=seed)
    return index, to_float(dataset.test.images[index]).to(device), dataset.test.labels[index].to(device)


@dataclasses.dataclass
class AttackRun:
    """:func:`run_attacks`' result: the per-(image, attack) table, and on the CPU the clean images,
    each attack's adversarial images and the softmax outputs (``"clean"`` and one per attack) that the
    figures draw."""
    samples: pd.DataFrame
    x: torch.Tensor
    x_adv: dict[str, torch.Tensor]
    probs: dict[str, torch.Tensor]

    @property
    def attacks(self) -> list[str]:
        return list(self.x_adv)

    def test_index(self, row: int) -> int:
        """The test-set index of the image at position ``row`` of the run's images."""
        return int(self.samples["index"].iloc[row])


def _norms(delta: torch.Tensor, *, l0_tol: float) -> dict[str, torch.Tensor]:
    flat = delta.flatten(1)
    return {"l0": (flat.abs() > l0_tol).sum(1), "l0_pixels": (delta.abs() > l0_tol).any(1).flatten(1).sum(1),
            "l2": flat.norm(dim=1), "linf": flat.abs().amax(1)}


def run_attacks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, index: torch.Tensor,
                attacks: dict[str, tuple[str, dict]], l0_tol: float, batch_size: int = 500) -> AttackRun:
    """Every attack of ``attacks`` (name -> (method, keywords), :func:`attack_settings`) on every image
    against its label ``y``, in batches of ``batch_size``. Table columns: ``index`` (test index),
    ``label``, ``attack``, ``clean_pred``, ``clean_conf`` (softmax probability of the clean prediction),
    ``correct`` (clean prediction right), ``adv_pred``, ``adv_conf``, ``adv_label_conf`` (probability
    left on the label), ``fooled`` (correct, and the adversarial image is not classified as the label),
    ``l0`` (input values changed by more than ``l0_tol``), ``l0_pixels``, ``l2``, ``linf``."""
    if model.training:
        raise ValueError("the model must be in eval mode (call model.eval()): the attacks query a fixed function")
    unknown = sorted({method for method, _ in attacks.values()} - set(METHODS))
    if unknown:
        raise ValueError(f"unknown attack method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    if not attacks:
        raise ValueError("attacks is empty; name at least one of: " + ", ".join(METHODS))
    if not l0_tol >= 0:
        raise ValueError(f"l0_tol must be >= 0, got {l0_tol}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(index) != len(x) or len(y) != len(x):
        raise ValueError(f"index, x and y must have one entry per image, got {len(index)}, {len(x)} and {len(y)}")
    chunks = [slice(i, i + batch_size) for i in range(0, len(x), batch_size)]
    with torch.no_grad():
        clean = torch.cat([model(x[c]).softmax(1) for c in chunks])
    conf, pred = clean.max(1)
    correct = pred == y
    probs, advs, frames = {"clean": clean.cpu()}, {}, []
    for name, (method, kw) in attacks.items():
        x_adv = torch.cat([METHODS[method](model, x[c], y[c], **kw).detach() for c in chunks])
        with torch.no_grad():
            p = torch.cat([model(x_adv[c]).softmax(1) for c in chunks])
        a_conf, a_pred = p.max(1)
        norms = _norms(x_adv - x, l0_tol=l0_tol)
        frames.append(pd.DataFrame({
            "index": index.cpu().numpy(), "label": y.cpu().numpy(), "attack": name,
            "clean_pred": pred.cpu().numpy(), "clean_conf": conf.cpu().numpy(), "correct": correct.cpu().numpy(),
            "adv_pred": a_pred.cpu().numpy(), "adv_conf": a_conf.cpu().numpy(),
            "adv_label_conf": p.gather(1, y[:, None]).squeeze(1).cpu().numpy(),
            "fooled": (correct & (a_pred != y)).cpu().numpy(),
            **{k: v.cpu().numpy() for k, v in norms.items()}}))
        probs[name], advs[name] = p.cpu(), x_adv.cpu()
    return AttackRun(pd.concat(frames, ignore_index=True), x.detach().cpu(), advs, probs)


def _all_fooled(samples: pd.DataFrame) -> pd.Series:
    """Per test index: did every attack of the table fool the model on it."""
    return samples.groupby("index", sort=False)["fooled"].all()


def norm_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per attack of :func:`run_attacks`' table: ``images``, ``correct`` (clean), ``fooled`` and
    ``fooled_pct`` (% of the correct ones), and over the ``common`` images that every attack fooled the
    median ``l0``, ``l0_pixels``, ``l2``, ``linf`` (and ``linf_255``, the same in 8-bit grey levels) and
    ``adv_conf`` (confidence of the wrong prediction): a comparison of the attacks on the same images."""
    common = _all_fooled(samples)
    common = set(common[common].index)
    rows = []
    for attack, g in samples.groupby("attack", sort=False):
        on = g[g["index"].isin(common)]
        n_correct = int(g["correct"].sum())
        rows.append({"attack": attack, "images": len(g), "correct": n_correct, "fooled": int(g["fooled"].sum()),
                     "fooled_pct": 100 * g["fooled"].sum() / n_correct if n_correct else float("nan"),
                     "common": len(on),
                     **{f"median_{k}": on[k].median() for k in ("l0", "l0_pixels", "l2", "linf")},
                     "median_linf_255": 255 * on["linf"].median(), "median_adv_conf": on["adv_conf"].median()})
    return pd.DataFrame(rows)


def pairwise(samples: pd.DataFrame) -> pd.DataFrame:
    """For every pair of the table's attacks and every norm of :data:`NORMS`, two rows per image, one per
    attack of the pair: ``pair`` ("a vs b", names in alphabetical order), ``norm``, ``attack``, ``value``
    (its perturbation's norm), ``smaller`` (strictly smaller than the other attack's on this image; a
    tie is False for both) and ``both_fooled`` (the model classifies the image correctly and both
    attacks fooled it). An exact McNemar test of ``smaller`` between the two attacks is the sign test
    of the paired norms: its discordant images are those where the norms differ."""
    attacks = list(dict.fromkeys(samples["attack"]))
    wide = samples.set_index(["index", "attack"])
    if wide.index.duplicated().any():
        raise ValueError("several rows for one image and attack: pass one run's table")
    frames = []
    for a, b in itertools.combinations(sorted(attacks), 2):
        sa, sb = wide.xs(a, level="attack"), wide.xs(b, level="attack").reindex(wide.xs(a, level="attack").index)
        both = (sa["fooled"] & sb["fooled"]).to_numpy()
        for norm in NORMS:
            va, vb = sa[norm].to_numpy(float), sb[norm].to_numpy(float)
            for attack, mine, other in ((a, va, vb), (b, vb, va)):
                frames.append(pd.DataFrame({"index": sa.index.to_numpy(), "pair": f"{a} vs {b}", "norm": norm,
                                            "attack": attack, "value": mine, "smaller": mine < other,
                                            "both_fooled": both}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["index", "pair", "norm", "attack", "value", "smaller", "both_fooled"])


def example_row(samples: pd.DataFrame, *, position: int = 0, prefer: int | None = None) -> int:
    """Which image a figure draws (its position in the run's images), a rule fixed before the attacks
    ran: the test image ``prefer`` if the model classifies it correctly and every attack of the table
    fooled it; else the ``position``-th of those images in order of decreasing clean confidence (the
    lecture's example is a confidently classified image); if there are fewer, the next images classified
    correctly, then the others (the last one if ``position`` runs past them all)."""
    if position < 0:
        raise ValueError(f"position must be >= 0, got {position}")
    images = samples.drop_duplicates("index")[["index", "correct", "clean_conf"]].reset_index(drop=True)
    fooled = _all_fooled(samples).reindex(images["index"]).to_numpy()
    correct = images["correct"].to_numpy(bool)
    by_conf = images["clean_conf"].to_numpy(float).argsort(kind="stable")[::-1]
    order = [int(i) for i in by_conf if fooled[i]]
    if prefer is not None and prefer in set(images["index"].iloc[order]):
        return int(images.index[images["index"] == prefer][0])
    order += [int(i) for i in by_conf if correct[i] and not fooled[i]]
    order += [int(i) for i in range(len(images)) if not correct[i]]
    return order[min(position, len(order) - 1)]

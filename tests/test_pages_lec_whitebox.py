"""The LEC white-box page (notebooks/12_lec_whitebox.ipynb): the traced attacks (PGD's loss and DeepFool's
path are the library attacks' own iterates), closed forms on affine models, the page's image sets, the
per-image tables the claims are decided on, the claims themselves on tables built to hold and to fail,
the figures, and every profile's parameters."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from advbook import data
from advbook.analysis import claims as engine
from advbook.analysis import lec_whitebox
from advbook.attacks import core
from advbook.attacks.fgsm import fgsm
from advbook.attacks.traces import deepfool_trace, pgd_trace
from advbook.attacks.universal import fooling_rate
from advbook.book import experiment, plots, plots_lec_whitebox, verdicts

matplotlib.use("Agg")

PARAMS = {"seed": 0, "n_eval": 40, "n_build": 20, "n_pgd": 20, "n_deepfool": 8, "n_cw": 8, "n_jsma": 8}


@pytest.fixture(scope="module")
def images(synth):
    return lec_whitebox.page_images(synth, params=PARAMS, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def models(tiny_model):
    return {"standard": tiny_model.eval()}


@pytest.fixture(scope="module")
def f3(models, images):
    return lec_whitebox.fgsm_samples(models, images, eps=8 / 255, grid=[2 / 255], n_examples=2)


def binary(affine, w: torch.Tensor, margin: float):
    """Two logits with z1 - z0 = w.x + c, and c set so that z1 - z0 = -margin at x = 0.5."""
    return affine(torch.stack([torch.zeros_like(w), w]), torch.tensor([0.0, -margin - 0.5 * w.sum().item()]))


# ---------------------------------------------------------------- traced attacks

def test_pgd_trace_ends_where_core_pgd_ends_and_its_prefix_is_the_shorter_attack(tiny_model, test_batch):
    x, pred, labels = test_batch
    settings = dict(eps=8 / 255, step_size=2 / 255)
    long = pgd_trace(tiny_model, x, labels, steps=6, seed=3, **settings)
    ref = core.pgd(tiny_model, x, labels, steps=6, random_start=True, stop_on_success=False, seed=3, **settings)
    assert torch.equal(long.x_adv, ref.x_adv)
    with torch.no_grad():
        logits = tiny_model(ref.x_adv)
    assert torch.equal(long.correct[-1], logits.argmax(1) == labels)
    torch.testing.assert_close(long.loss[-1], F.cross_entropy(logits, labels, reduction="none"))
    short = pgd_trace(tiny_model, x, labels, steps=3, seed=3, **settings)
    assert torch.equal(short.loss, long.loss[:4]) and torch.equal(short.correct, long.correct[:4])
    start = core.linf_start(x, eps=8 / 255, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(long.loss[0], F.cross_entropy(tiny_model(start), labels, reduction="none"))
    assert long.loss.shape == long.correct.shape == (7, len(x))
    assert not torch.equal(pgd_trace(tiny_model, x, labels, steps=2, seed=4, **settings).loss[0], long.loss[0])


def test_pgd_trace_on_an_affine_model_raises_the_logit_gap_by_step_times_l1(affine):
    """From x (no random start) each sign step adds s |w|_1 to z1 - z0 until the ball binds: the
    cross-entropy of class 0 is then softplus(z1 - z0), a closed form at every iterate."""
    torch.manual_seed(0)
    w = torch.randn(48)
    model = binary(affine, w, margin=1.0)
    x = torch.full((1, 3, 4, 4), 0.5)
    s = 0.001
    tr = pgd_trace(model, x, torch.tensor([0]), eps=0.1, step_size=s, steps=5, random_start=False)
    gap = -1.0 + s * w.abs().sum() * torch.arange(6)
    torch.testing.assert_close(tr.loss[:, 0], F.softplus(gap), rtol=1e-5, atol=1e-6)
    assert torch.equal(tr.correct[:, 0], gap < 0)


def test_deepfool_trace_is_deepfool_and_reads_its_iterates(tiny_model, test_batch):
    x, pred, _ = test_batch
    res, path = deepfool_trace(tiny_model, x, pred, steps=50, overshoot=0.02)
    ref = core.deepfool(tiny_model, x, pred, steps=50, overshoot=0.02)
    for field in ("x_adv", "success", "steps", "l2"):
        assert torch.equal(getattr(res, field), getattr(ref, field)), field
    assert res.success.all()
    first = path[path.iteration == 0].set_index("sample")
    assert (first["l2"] == 0).all()
    with torch.no_grad():
        clean = core.margin(tiny_model(x), pred)
    np.testing.assert_allclose(first["margin"].to_numpy(), clean.numpy(), rtol=1e-5, atol=1e-6)
    last = path.groupby("sample").tail(1).set_index("sample").sort_index()
    assert (last.index == np.arange(len(x))).all()
    np.testing.assert_array_equal(last["iteration"].to_numpy(), res.steps.numpy())   # rows 0 .. first flip
    assert (last["pred"].to_numpy() != pred.numpy()).all() and (last["margin"] < 0).all()
    np.testing.assert_allclose(last["l2"].to_numpy(), res.l2.numpy(), rtol=1e-5, atol=1e-6)
    assert (path.groupby("sample")["iteration"].count().to_numpy() == res.steps.numpy() + 1).all()


def test_deepfool_trace_keeps_unfinished_samples_to_the_last_step(tiny_model, test_batch):
    x, pred, _ = test_batch
    res, path = deepfool_trace(tiny_model, x, pred, steps=1, overshoot=0.0)
    assert (~res.success).any()
    assert set(path.groupby("sample")["iteration"].max()) <= {0, 1}
    assert (path.groupby("sample")["iteration"].count() == 2).all()       # the clean point and one step


# ---------------------------------------------------------------- the affine toy (LEC-F5)

def test_one_deepfool_step_on_the_affine_toy_lands_on_the_nearest_boundary():
    model = lec_whitebox.affine_toy()
    toy = lec_whitebox.toy_deepfool(model)
    assert set(toy["other"]) == {1, 2} and (toy["label"] == 0).all()
    # by hand: at (0.35, 0.3), z = (0, -0.75, -1.85) and both weight differences have norm sqrt(10)
    np.testing.assert_allclose(toy["f"], [-0.75, -1.85], rtol=1e-6)
    np.testing.assert_allclose(toy["distance"], [0.75 / math.sqrt(10), 1.85 / math.sqrt(10)], rtol=1e-6)
    near = toy[toy["nearest"]].iloc[0]
    assert near["other"] == 1 and toy["nearest"].sum() == 1
    np.testing.assert_allclose([near["foot_x"], near["foot_y"]], [0.575, 0.375], atol=1e-6)
    # the step is the closed form plus deepfool's 1e-4: it ends just across the nearest boundary
    assert abs(near["landing_x"] - near["foot_x"]) < 1e-3 and abs(near["landing_y"] - near["foot_y"]) < 1e-3
    assert near["deepfool_l2"] == pytest.approx(near["distance"] + 1e-4, rel=1e-4)
    assert -1e-3 < near["margin_after"] < 0 and near["success"]
    xx, yy, cls = lec_whitebox.toy_regions(model, size=51)
    assert xx.shape == yy.shape == cls.shape == (51, 51) and set(np.unique(cls)) == {0, 1, 2}


# ---------------------------------------------------------------- the page's images

def test_page_images_are_balanced_disjoint_seeded_and_nested(synth, images):
    assert len(images.index) == 40 and len(images.build_index) == 20
    assert not set(images.index.tolist()) & set(images.build_index.tolist())
    assert torch.bincount(images.y).tolist() == [10] * 4 and torch.bincount(images.y_build).tolist() == [5] * 4
    assert (images.target != images.y).all() and images.target.max() < 4
    again = lec_whitebox.page_images(synth, params=PARAMS, device=torch.device("cpu"))
    assert torch.equal(again.index, images.index) and torch.equal(again.target, images.target)
    other = lec_whitebox.page_images(synth, params={**PARAMS, "seed": 1}, device=torch.device("cpu"))
    assert not torch.equal(other.index, images.index)
    pos = images.pick(20)
    assert len(pos) == 20 and torch.bincount(images.y[pos]).tolist() == [5] * 4
    assert set(images.pick(8).tolist()) <= set(pos.tolist())
    torch.testing.assert_close(images.x[pos], data.to_float(synth.test.images[images.index[pos]]))


@pytest.mark.parametrize("change, message", [
    ({"n_pgd": 41}, r"n_pgd=41 must be in \[4, n_eval=40\]: its images are a balanced subset of the evaluation images"),
    ({"n_cw": 3}, r"n_cw=3 must be in \[4, n_eval=40\]"),
    ({"n_build": 200}, r"n_eval=40 and n_build=200 must together take at most 50 test images per class of synthetic"),
])
def test_page_images_refuse_sets_that_do_not_fit(synth, change, message):
    with pytest.raises(ValueError, match=message):
        lec_whitebox.page_images(synth, params={**PARAMS, **change}, device=torch.device("cpu"))


# ---------------------------------------------------------------- the per-image tables

def test_fgsm_samples_flags_are_the_attacks_outcomes(models, images, f3):
    summary, samples, curve, examples = f3
    model = models["standard"]
    x, y, t = images.x, images.y, images.target
    x_up, x_down = fgsm(model, x, y, eps=8 / 255).x_adv, fgsm(model, x, y, eps=8 / 255, targeted=True, target=t).x_adv
    with torch.no_grad():
        ok, up, down = (model(z).argmax(1) for z in (x, x_up, x_down))
    ok = ok == y
    assert (samples["index"].to_numpy() == images.index.numpy()).all()
    np.testing.assert_array_equal(samples["natural"], ok.numpy())
    np.testing.assert_array_equal(samples["fgsm"], (ok & (up == y)).numpy())
    np.testing.assert_array_equal(samples["fgsm_targeted"], (down != t).numpy())
    assert set(samples["clean"]) <= {"correct", "wrong"} and ((samples["clean"] == "correct") == samples["natural"]).all()
    assert sorted(curve["eps"].unique()) == pytest.approx([2 / 255, 8 / 255])
    row = summary[(summary.model == "standard") & np.isclose(summary.eps, 8 / 255)].iloc[0]
    assert row["accuracy"] == pytest.approx(100 * samples["fgsm"].mean())
    assert row["untargeted_success"] == pytest.approx(100 * (~samples.loc[samples.natural, "fgsm"]).mean())
    assert row["targeted_success"] == pytest.approx(100 * (~samples.loc[samples.natural, "fgsm_targeted"]).mean())
    clean = summary[(summary.model == "standard") & (summary.eps == 0)].iloc[0]
    assert clean["accuracy"] == pytest.approx(100 * ok.float().mean().item())
    # the examples: the first correct image both attacks fool comes first, then other classes
    both = np.flatnonzero(samples["natural"] & ~samples["fgsm"] & ~samples["fgsm_targeted"])
    assert examples["position"][0] == both[0]
    assert len(set(images.y[examples["position"]].tolist())) == len(examples["position"]) == 2
    assert torch.equal(examples["x"], x[examples["position"]])


def test_pgd_samples_pair_pgd_with_fgsm_on_the_same_images(models, images, f3):
    _, fgsm_flags, _, _ = f3
    summary, samples, by_step, losses = lec_whitebox.pgd_samples(models, images, fgsm_flags, n=20, eps=8 / 255,
                                                                 step_size=2 / 255, steps=4, starts=2, n_trace=2)
    pos = images.pick(20)
    model = models["standard"]
    ref = core.pgd(model, images.x[pos], images.y[pos], eps=8 / 255, step_size=2 / 255, steps=4, random_start=True,
                   stop_on_success=False, seed=images.seed)
    with torch.no_grad():
        ok = model(images.x[pos]).argmax(1) == images.y[pos]
        still = model(ref.x_adv).argmax(1) == images.y[pos]
    np.testing.assert_array_equal(samples["pgd"], (ok & still).numpy())
    merged = samples.merge(fgsm_flags, on=["model", "index"], suffixes=("", "_f3"))
    assert len(merged) == 20 and (merged["fgsm"] == merged["fgsm_f3"]).all()
    assert (merged["natural"] == merged["natural_f3"]).all()
    last = by_step[by_step.iteration == 4]
    np.testing.assert_array_equal(last["robust"], samples["pgd"])
    assert summary["pgd_accuracy"].iloc[-1] == pytest.approx(100 * samples["pgd"].mean())
    assert len(losses) == 2 * 2 * 5 and set(losses["start"]) == {0, 1}
    chosen = samples.set_index("index").loc[sorted(losses["index"].unique())]
    assert chosen["natural"].all()                         # the loss images: correct for every model
    natural = samples[samples["natural"]].set_index("index")
    broken = ~by_step.groupby("index")["robust"].all().reindex(natural.index)
    assert ((natural["first_wrong"] >= 0) == broken).all()


def test_deepfool_samples_start_from_the_clean_prediction(models, images):
    summary, samples, path = lec_whitebox.deepfool_samples(models, images, n=8, steps=50, overshoot=0.02)
    assert len(samples) == 8 and samples["success"].all()
    assert (path.groupby("index")["iteration"].max().to_numpy() == samples.set_index("index")["iterations"]
            .sort_index().to_numpy()).all()
    assert summary["l2_median"].iloc[0] == pytest.approx(samples["l2"].median())


def test_cw_samples_reach_the_asked_margin_and_pay_for_it(models, images):
    summary, samples = lec_whitebox.cw_samples(models["standard"], images, n=8, kappas=[0.0, 2.0], binary_steps=2,
                                               steps=30, lr=0.01, initial_const=1.0)
    ok = samples[samples["success"]]
    assert (ok["margin"] >= ok["kappa"] - 1e-4).all()
    assert summary["success"].min() > 50
    assert summary["l2_median_paired"].iloc[1] > summary["l2_median_paired"].iloc[0]
    assert (summary["n_paired"] == samples.groupby("index")["success"].all().sum()).all()


def test_jsma_samples_count_what_changed(models, images):
    summary, samples, example = lec_whitebox.jsma_samples(models["standard"], images, n=8, theta=1.0, gamma=0.2)
    assert (samples["l0_pixels"] <= samples["l0_features"]).all()
    assert (samples["l0_features"] <= summary["l0_features_max_allowed"].iloc[0]).all()
    assert int(example["changed"].sum()) == samples.loc[example["position"], "l0_features"]
    assert example["saliency"].shape == example["x"].shape and (example["saliency"] >= 0).all()
    assert samples["success"].any() and ((samples["pred_adv"] == samples["target"]) == samples["success"]).all()


def test_sign_noise_has_the_l2_norm_of_v_and_stays_in_its_linf_ball():
    g = torch.Generator().manual_seed(0)
    v = 0.03 * (2 * torch.rand(1, 3, 8, 8, generator=g) - 1)
    noise = lec_whitebox.sign_noise(v, seed=0)
    assert noise.norm().item() == pytest.approx(v.norm().item(), rel=1e-6)
    assert noise.abs().max() <= v.abs().max() and len(noise.abs().unique()) == 1
    assert torch.equal(noise, lec_whitebox.sign_noise(v, seed=0)) and not torch.equal(noise, lec_whitebox.sign_noise(v, seed=1))


def test_universal_samples_are_built_on_one_set_and_measured_on_both(models, images):
    model = models["standard"]
    summary, samples, v, history = lec_whitebox.universal_samples(model, images, eps=0.2, norm="linf", passes=2,
                                                                  delta=0.2, deepfool_steps=20)
    assert v.abs().max() <= 0.2 + 1e-6 and 1 <= len(history) <= 2
    held = samples[samples.split == "held_out"]
    assert (held["index"].to_numpy() == images.index.numpy()).all()
    rate = summary.set_index(["split", "perturbation"])["fooling_rate"]
    assert rate["held_out", "uap"] == pytest.approx(100 * fooling_rate(model, images.x, v))
    assert rate["held_out", "uap"] == pytest.approx(100 * (~held["uap"]).mean())
    assert rate["build", "uap"] == pytest.approx(100 * history[-1])
    assert rate["build", "noise"] == pytest.approx(100 * (~samples[samples.split == "build"]["noise"]).mean())


# ---------------------------------------------------------------- the claims, both ways

def _flags(a_robust: np.ndarray, b_robust: np.ndarray, *, a: str, b: str, **ids) -> pd.DataFrame:
    n = len(a_robust)
    return pd.DataFrame({"seed": 0, "index": np.arange(n), **ids, "natural": True, a: a_robust, b: b_robust})


@pytest.mark.parametrize("artifact, a, b, ids", [
    ("LEC-F3.1", "fgsm", "fgsm_targeted", {"model": "standard", "clean": "correct"}),
    ("LEC-F4.1", "pgd", "fgsm", {"model": "at"}),
    ("LEC-F4.2", "pgd", "fgsm", {"model": "standard"}),
    ("LEC-F8.1", "uap", "noise", {"split": "held_out"}),
])
def test_each_claim_can_hold_and_can_fail(artifact, a, b, ids):
    claim = next(c for c in verdicts.load_claims() if c["id"] == artifact)
    ctx = engine.Context(profile="test", dataset="synthetic", seeds=(0,))
    weak, strong = np.zeros(100, bool), np.ones(100, bool)
    strong[:20] = False                                  # still weaker than the clean flags (the F4 control)
    held = engine.decide(claim, {"samples": _flags(weak, strong, a=a, b=b, **ids)}, ctx)
    failed = engine.decide(claim, {"samples": _flags(strong, weak, a=a, b=b, **ids)}, ctx)
    assert held.outcome == "holds" and failed.outcome == "does not hold", (held.line(), failed.line())
    other = {k: "other" for k in ids}                    # rows of another model, split or clean state are ignored
    assert engine.decide(claim, {"samples": _flags(weak, strong, a=a, b=b, **other)}, ctx).outcome == "not run"


# ---------------------------------------------------------------- figures and parameters

def test_amplification_is_the_largest_readable_factor():
    assert plots_lec_whitebox.amplification(10 / 255) == 10         # 0.5 / (10/255) = 12.75
    assert plots_lec_whitebox.amplification(8 / 255) == 10          # 15.9
    assert plots_lec_whitebox.amplification(0.004) == 100           # 125
    assert plots_lec_whitebox.amplification(0.3) == 1 and plots_lec_whitebox.amplification(0.0) == 1


def test_every_figure_draws_and_says_what_it_shows(models, images, f3):
    assert all(plots.FIGURES[f"LEC-F{i}"] == plots_lec_whitebox.FIGURES[f"LEC-F{i}"] for i in range(3, 9))
    summary, samples, _, examples = f3
    figs = [plots_lec_whitebox.fgsm_figure(examples, summary, classes=images.classes, eps=8 / 255, title="F3")]
    s4, smp4, _, losses = lec_whitebox.pgd_samples(models, images, samples, n=20, eps=8 / 255, step_size=2 / 255,
                                                   steps=2, starts=2, n_trace=1)
    figs.append(plots_lec_whitebox.pgd_figure(losses, s4, eps=8 / 255, step_size=2 / 255, title="F4"))
    toy_model = lec_whitebox.affine_toy()
    _, s5, p5 = lec_whitebox.deepfool_samples(models, images, n=8, steps=10, overshoot=0.02)
    figs.append(plots_lec_whitebox.deepfool_figure(lec_whitebox.toy_deepfool(toy_model),
                                                   lec_whitebox.toy_regions(toy_model, size=21), p5, s5, title="F5"))
    s6, smp6 = lec_whitebox.cw_samples(models["standard"], images, n=8, kappas=[0.0, 1.0], binary_steps=1, steps=5,
                                       lr=0.01, initial_const=1.0)
    figs.append(plots_lec_whitebox.cw_figure(s6, smp6, title="F6"))
    s7, smp7, ex7 = lec_whitebox.jsma_samples(models["standard"], images, n=8, theta=1.0, gamma=0.05)
    figs.append(plots_lec_whitebox.jsma_figure(ex7, smp7, s7, classes=images.classes, title="F7"))
    s8, _, v, hist = lec_whitebox.universal_samples(models["standard"], images, eps=0.1, norm="linf", passes=1,
                                                    delta=0.2, deepfool_steps=5)
    figs.append(plots_lec_whitebox.universal_figure(v, s8, hist, title="F8"))
    for fig in figs:
        assert fig.get_figwidth() <= plots.COLUMN_INCHES + 1e-9
        texts = [t for ax in fig.get_axes() for t in (ax.title, ax.xaxis.label, ax.yaxis.label) if t.get_text()]
        assert texts and min(t.get_fontsize() for t in texts) >= plots.MIN_FONT
    assert "amplified ×" in figs[-1].get_axes()[0].get_title()


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_profile_passes_the_schema_and_names_every_setting(profile):
    P = experiment.resolve("lec_whitebox", profile=profile)
    S = lec_whitebox.settings(P)
    assert set(S) == {"fgsm", "pgd", "deepfool", "cw", "jsma", "universal"}
    for name in lec_whitebox.SUBSETS:
        assert 10 <= P[name] <= P["n_eval"], name                  # page_images' check, for CIFAR-10's 10 classes
    assert (P["n_eval"] + P["n_build"]) // 10 <= 1000


def test_a_bad_override_fails_with_one_line():
    with pytest.raises(experiment.ParameterError, match=r"uap_norm='l1' is not one of: linf, l2"):
        experiment.resolve("lec_whitebox", profile="cpu", overrides={"uap_norm": "l1"})
    with pytest.raises(experiment.ParameterError, match=r"jsma_theta=0.0 is out of range"):
        experiment.resolve("lec_whitebox", profile="cpu", overrides={"jsma_theta": 0.0})

"""The library behind notebooks/11_lec_examples.ipynb (LEC-F1, LEC-F2): the attack settings and the profiles,
the per-(image, attack) table on hand-made perturbations with known norms, the summary, the pairwise
flags and the claims engine reading them as a sign test, the example rule, and the two figures."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from advbook.analysis import claims as engine
from advbook.book import experiment, plots, plots_lec_examples, verdicts
from advbook.evaluation import lec_examples

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture
def linear(affine):
    """A fixed linear model on 3 x 2 x 2 inputs with four classes."""
    torch.manual_seed(0)
    return affine(torch.randn(4, 12), torch.zeros(4)).eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return 0.3 + 0.4 * torch.rand(6, 3, 2, 2, generator=g)


# ---------------------------------------------------------------- settings and profiles

@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_profile_passes_the_schema_and_builds_its_attacks(profile):
    params = experiment.resolve("lec_examples", profile=profile)
    settings = lec_examples.attack_settings(params)
    assert list(settings["f1"]) == ["fgsm", "pgd", "deepfool", "cw_l2"]
    assert list(settings["f2"]) == ["pgd_linf", "pgd_l2", "jsma"]
    assert all(method in lec_examples.METHODS for part in settings.values() for method, _ in part.values())
    assert params["n_f1"] <= params["n_images"]                         # LEC-F1's images are LEC-F2's
    assert params["l0_tol"] < min(params["linf_step_size"], params["pgd_step_size"])   # a step always counts
    experiment.resolve("vir_main", profile=profile)                     # the model's section resolves too


def test_attack_settings_take_their_values_from_the_params():
    params = experiment.resolve("lec_examples", profile="cpu", overrides={"pgd_steps": 7, "l2_eps": 0.25,
                                                                           "jsma_gamma": 0.05})
    s = lec_examples.attack_settings(params)
    assert s["f1"]["pgd"] == ("pgd", dict(norm="linf", eps=params["pgd_eps"], step_size=params["pgd_step_size"],
                                          steps=7, stop_on_success=False))
    assert s["f2"]["pgd_linf"][1]["stop_on_success"] and s["f2"]["pgd_l2"][1]["stop_on_success"]
    assert s["f2"]["pgd_l2"][1]["norm"] == "l2" and s["f2"]["pgd_l2"][1]["eps"] == 0.25
    assert s["f2"]["jsma"] == ("jsma", dict(theta=params["jsma_theta"], gamma=0.05))
    assert s["f1"]["cw_l2"][1] == dict(binary_steps=params["cw_binary_steps"], steps=params["cw_steps"],
                                       lr=params["cw_lr"], initial_const=params["cw_initial_const"])


def test_test_images_are_balanced_nested_and_need_one_per_class():
    labels = torch.arange(4).repeat(10)
    ds = SimpleNamespace(classes=CLASSES, test=SimpleNamespace(images=torch.randint(0, 256, (40, 3, 2, 2),
                                                                                     dtype=torch.uint8), labels=labels))
    index, x, y = lec_examples.test_images(ds, n=12, seed=3, device="cpu")
    assert torch.bincount(y).tolist() == [3, 3, 3, 3] and (x <= 1).all() and x.dtype == torch.float32
    small, _, _ = lec_examples.test_images(ds, n=4, seed=3, device="cpu")
    assert set(small.tolist()) <= set(index.tolist())
    with pytest.raises(ValueError, match="at least the number of classes"):
        lec_examples.test_images(ds, n=3, seed=3, device="cpu")


# ---------------------------------------------------------------- the per-(image, attack) table

def shift(model, x, y, *, delta):
    """A hand-made 'attack': adds a fixed perturbation."""
    return (x + delta).clamp(0, 1)


def test_run_attacks_measures_known_perturbations(linear, images, monkeypatch):
    monkeypatch.setitem(lec_examples.METHODS, "shift", shift)
    delta = torch.zeros(3, 2, 2)
    delta[0, 0, 0], delta[1, 0, 0], delta[2, 1, 1] = 0.1, -0.2, 5e-5   # 5e-5 is below the L0 tolerance
    with torch.no_grad():
        y = linear(images).argmax(1)
    y[0] = (y[0] + 1) % 4                                                 # one image the model gets wrong
    index = torch.arange(100, 106)
    run = lec_examples.run_attacks(linear, images, y, index=index, l0_tol=1e-4,
                                   attacks={"one": ("shift", dict(delta=delta)),
                                            "zero": ("shift", dict(delta=0 * delta))})
    s = run.samples
    assert run.attacks == ["one", "zero"] and len(s) == 12 and s["index"].tolist() == [*range(100, 106)] * 2
    one = s[s.attack == "one"]
    assert (one["l0"] == 2).all() and (one["l0_pixels"] == 1).all()      # two channels of pixel (0, 0)
    assert np.allclose(one["l2"], math.sqrt(0.1 ** 2 + 0.2 ** 2 + 5e-5 ** 2), atol=1e-6)
    assert np.allclose(one["linf"], 0.2, atol=1e-6)
    zero = s[s.attack == "zero"]
    assert (zero["l0"] == 0).all() and (zero["l2"] == 0).all() and not zero["fooled"].any()
    with torch.no_grad():
        pred = linear(images + delta).argmax(1)
    assert one["adv_pred"].tolist() == pred.tolist()
    assert one["fooled"].tolist() == ((pred != y) & (linear(images).argmax(1) == y)).tolist()
    assert not one["fooled"].iloc[0] and not one["correct"].iloc[0]      # a wrong image is never "fooled"
    assert np.allclose(run.probs["one"].sum(1), 1) and run.probs["clean"].shape == (6, 4)
    assert np.allclose(one["adv_conf"], run.probs["one"].max(1).values.numpy())
    assert run.test_index(2) == 102
    batched = lec_examples.run_attacks(linear, images, y, index=index, l0_tol=1e-4, batch_size=4,
                                       attacks={"one": ("shift", dict(delta=delta))})
    pd.testing.assert_frame_equal(batched.samples, s[s.attack == "one"].reset_index(drop=True))


def test_run_attacks_refuses_bad_settings_before_work(linear, images):
    y = torch.zeros(6, dtype=torch.long)
    index = torch.arange(6)
    with pytest.raises(ValueError, match="valid: fgsm, pgd, deepfool, cw_l2, jsma"):
        lec_examples.run_attacks(linear, images, y, index=index, l0_tol=0.0, attacks={"x": ("nope", {})})
    with pytest.raises(ValueError, match="l0_tol"):
        lec_examples.run_attacks(linear, images, y, index=index, l0_tol=-1.0, attacks={"f": ("fgsm", {"eps": 0.1})})
    with pytest.raises(ValueError, match="one entry per image"):
        lec_examples.run_attacks(linear, images, y[:5], index=index, l0_tol=0.0, attacks={"f": ("fgsm", {"eps": 0.1})})
    with pytest.raises(ValueError, match="eval mode"):
        lec_examples.run_attacks(linear.train(), images, y, index=index, l0_tol=0.0,
                                 attacks={"f": ("fgsm", {"eps": 0.1})})


def test_every_method_runs_on_a_linear_model(linear, images):
    with torch.no_grad():
        y = linear(images).argmax(1)
    attacks = {"fgsm": ("fgsm", dict(eps=0.05)),
               "pgd": ("pgd", dict(norm="linf", eps=0.05, step_size=0.02, steps=3, stop_on_success=False)),
               "pgd_l2": ("pgd", dict(norm="l2", eps=0.5, step_size=0.1, steps=5, stop_on_success=True)),
               "deepfool": ("deepfool", dict(steps=10, overshoot=0.02)),
               "cw_l2": ("cw_l2", dict(binary_steps=1, steps=3, lr=0.01, initial_const=1.0)),
               "jsma": ("jsma", dict(theta=1.0, gamma=0.5))}
    run = lec_examples.run_attacks(linear, images, y, index=torch.arange(6), attacks=attacks, l0_tol=1e-4)
    s = run.samples.set_index("attack")
    assert np.allclose(s.loc["fgsm", "linf"], 0.05, atol=1e-6)          # no value of [0.3, 0.7] is clipped
    assert (s.loc["pgd", "linf"] <= 0.05 + 1e-6).all() and (s.loc["pgd_l2", "l2"] <= 0.5 + 1e-5).all()
    assert (s.loc["jsma", "l0"] <= 6).all()                             # gamma = 0.5 of 12 values
    assert s.loc["deepfool", "fooled"].all()                            # DeepFool is exact on a linear model


def test_jsma_aims_at_the_likeliest_wrong_class(linear, images):
    with torch.no_grad():
        logits = linear(images)
    y = logits.argmax(1)
    target = lec_examples.likeliest_wrong(linear, images, y)
    assert (target != y).all()
    assert torch.equal(logits.gather(1, target[:, None]).squeeze(1), logits.sort(1, descending=True).values[:, 1])


# ---------------------------------------------------------------- summary, pairwise flags and the claims

def table(rows):
    """A run_attacks-like table from (index, attack, correct, fooled, l0, l2, linf, clean_conf)."""
    cols = ["index", "attack", "correct", "fooled", "l0", "l2", "linf", "clean_conf"]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.assign(l0_pixels=frame["l0"], adv_conf=0.5, label=0)


def test_norm_summary_takes_medians_over_the_images_every_attack_fooled():
    s = table([(1, "a", True, True, 10, 1.0, 0.1, 0.9), (2, "a", True, True, 20, 2.0, 0.2, 0.9),
               (3, "a", False, False, 0, 0.0, 0.0, 0.9),
               (1, "b", True, True, 30, 3.0, 0.3, 0.9), (2, "b", True, False, 99, 9.0, 0.9, 0.9),
               (3, "b", False, False, 0, 0.0, 0.0, 0.9)])
    out = lec_examples.norm_summary(s).set_index("attack")
    assert out.loc["a", "fooled"] == 2 and out.loc["b", "fooled"] == 1 and out.loc["a", "correct"] == 2
    assert out.loc["a", "fooled_pct"] == 100 and out.loc["b", "fooled_pct"] == 50
    assert (out["common"] == 1).all()                                   # only image 1 is fooled by both
    assert out.loc["a", "median_l2"] == 1.0 and out.loc["b", "median_l0"] == 30
    assert math.isclose(out.loc["b", "median_linf_255"], 255 * 0.3)


def test_pairwise_flags_the_smaller_perturbation_per_image_and_norm():
    s = table([(1, "pgd_linf", True, True, 3000, 0.3, 0.01, 0.9), (2, "pgd_linf", True, True, 10, 0.3, 0.01, 0.9),
               (1, "jsma", True, True, 20, 2.0, 0.9, 0.9), (2, "jsma", True, False, 10, 2.0, 0.9, 0.9)])
    pw = lec_examples.pairwise(s)
    assert set(pw["pair"]) == {"jsma vs pgd_linf"} and len(pw) == 2 * 3 * 2
    l0 = pw[pw.norm == "l0"].set_index(["index", "attack"])
    assert l0.loc[(1, "jsma"), "smaller"] and not l0.loc[(1, "pgd_linf"), "smaller"]
    assert not l0.loc[(2, "jsma"), "smaller"] and not l0.loc[(2, "pgd_linf"), "smaller"]   # a tie
    assert l0.loc[(1, "jsma"), "both_fooled"] and not l0.loc[(2, "jsma"), "both_fooled"]
    assert l0.loc[(1, "pgd_linf"), "value"] == 3000
    three = lec_examples.pairwise(pd.concat([s, s[s.attack == "jsma"].assign(attack="pgd_l2")]))
    assert sorted(three["pair"].unique()) == ["jsma vs pgd_l2", "jsma vs pgd_linf", "pgd_l2 vs pgd_linf"]
    with pytest.raises(ValueError, match="several rows"):
        lec_examples.pairwise(pd.concat([s, s]))


def sign_table(n_for: int, n_against: int, n_tie: int, *, norm: str, pair: str, winner: str, rival: str):
    rows = []
    for i in range(n_for + n_against + n_tie):
        win = 1.0 if i < n_for else 3.0 if i < n_for + n_against else 2.0
        rows += [(i, winner, True, True, win, win, win, 0.9), (i, rival, True, True, 2.0, 2.0, 2.0, 0.9)]
    return lec_examples.pairwise(table(rows))


@pytest.mark.parametrize("claim_id", ["LEC-F2.1", "LEC-F2.2", "LEC-F2.3"])
def test_the_page_claims_are_a_paired_sign_test(claim_id):
    claim = next(c for c in verdicts.load_claims("LEC-F2") if c["id"] == claim_id)
    winner, rival = claim["winner"], claim["rivals"][0]
    ctx = engine.Context(profile="cpu", dataset="cifar10", seeds=(0,))
    kw = dict(norm=claim["where"]["norm"], pair=claim["where"]["pair"], winner=winner, rival=rival)
    holds = engine.decide(claim, {"pairwise": sign_table(12, 1, 5, **kw)}, ctx)
    assert holds.outcome == "holds" and holds.n == 18
    assert math.isclose(holds.estimate, 100 * 11 / 18)                  # points: 12 - 1 of 18 images
    assert math.isclose(holds.p, 2 * sum(math.comb(13, k) for k in range(2)) / 2 ** 13, rel_tol=1e-6)  # sign test
    assert engine.decide(claim, {"pairwise": sign_table(1, 12, 0, **kw)}, ctx).outcome == "does not hold"
    assert engine.decide(claim, {"pairwise": sign_table(3, 2, 4, **kw)}, ctx).outcome == "inconclusive"
    empty = sign_table(3, 2, 0, **kw).assign(both_fooled=False)
    assert engine.decide(claim, {"pairwise": empty}, ctx).outcome == "not run"


# ---------------------------------------------------------------- the example rule

def test_example_row_prefers_confident_images_every_attack_fooled():
    s = table([(10, "a", True, True, 1, 1, 1, 0.6), (11, "a", True, True, 1, 1, 1, 0.9),
               (12, "a", True, False, 1, 1, 1, 0.99), (13, "a", False, False, 1, 1, 1, 0.8),
               (14, "a", True, True, 1, 1, 1, 0.7)])
    s = pd.concat([s, s.assign(attack="b", fooled=[True, True, False, False, False])])
    assert lec_examples.example_row(s) == 1                             # image 11: fooled by both, most confident
    assert lec_examples.example_row(s, position=1) == 0                  # then image 10 (14 is not fooled by b)
    assert lec_examples.example_row(s, position=2) == 2                  # then the correct ones by confidence
    assert lec_examples.example_row(s, position=9) == 3                  # the wrong one last, never past it
    assert lec_examples.example_row(s, prefer=10) == 0 and lec_examples.example_row(s, prefer=12) == 1
    with pytest.raises(ValueError, match="position"):
        lec_examples.example_row(s, position=-1)


# ---------------------------------------------------------------- figures

def test_amplification_is_a_readable_factor_within_range():
    amp = plots_lec_examples.amplification
    assert amp(torch.tensor([8 / 255])) == 10 and amp(torch.tensor([0.5 / 255])) == 100
    assert amp(torch.tensor([0.9])) == 1 and amp(torch.tensor([0.04])) == 10 and amp(torch.zeros(3)) == 100
    assert all(amp(torch.tensor([v])) * v <= 0.5 for v in (0.001, 0.013, 0.2, 0.3))


def test_both_figures_draw_and_have_alt_texts(linear, images, monkeypatch):
    monkeypatch.setitem(lec_examples.METHODS, "shift", shift)
    with torch.no_grad():
        y = linear(images).argmax(1)
    d = torch.zeros(3, 2, 2)
    d[0] = 0.3
    attacks = {"pgd_linf": ("shift", dict(delta=d)), "pgd_l2": ("shift", dict(delta=-d)),
               "jsma": ("shift", dict(delta=d / 2))}
    run = lec_examples.run_attacks(linear, images, y, index=torch.arange(6), attacks=attacks, l0_tol=1e-4)
    f1 = plots_lec_examples.examples_grid(run, row=0, classes=CLASSES, title="t")
    assert len(f1.axes) == 3 * (len(attacks) + 1)
    assert f1.get_figwidth() <= plots.COLUMN_INCHES
    assert any("amplified ×1" in ax.get_title() for ax in f1.axes)
    f2 = plots_lec_examples.threat_models(run, row=0, classes=CLASSES, title="t")
    assert len(f2.axes) == len(attacks) + 1 + 3 and f2.get_figwidth() <= plots.COLUMN_INCHES
    assert {"LEC-F1", "LEC-F2"} <= set(plots.FIGURES)

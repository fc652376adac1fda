"""The library functions behind the HOL pages (§4-9): the fixed DDB window, attack settings, the
per-sample tables, the toy's pair and paths, partial high-pass accuracy, the calibration split and
the scoring of several models, and the summary of the transfer sets; on hand-made cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from advbook.analysis import distill, frequency, toy, trust, vulnerability
from advbook.core import tensors
from advbook.models.predict import predict


# ---------------------------------------------------------------- vulnerability (HOL §4)

def test_central_window_bounds_are_the_ddb_quantiles_around_the_median():
    ddb = np.arange(1.0, 11.0)                       # 1 .. 10
    steps = np.array([9, 1, 8, 2, 7, 3, 6, 4, 5, 0])
    box = vulnerability.central_window(ddb, steps, bins=5)
    # quantiles 0.4 and 0.6 of 1..10 (linear): 1 + 0.4 * 9 = 4.6 and 1 + 0.6 * 9 = 6.4; inside: DDB 5 and 6
    assert box == {"ddb_lo": pytest.approx(4.6), "ddb_hi": pytest.approx(6.4), "n": 2, "steps_min": 3.0,
                   "steps_median": 5.0, "steps_max": 7.0}


def test_central_window_bounds_do_not_depend_on_the_steps():
    ddb = np.array([0.3, 0.1, 0.5, 0.2, 0.4, 0.6, 0.9, 0.7])
    a = vulnerability.central_window(ddb, np.zeros(8), bins=4)
    b = vulnerability.central_window(ddb, np.arange(8) * 100.0, bins=4)
    assert (a["ddb_lo"], a["ddb_hi"], a["n"]) == (b["ddb_lo"], b["ddb_hi"], b["n"])
    lo, hi = np.quantile(ddb, [0.375, 0.625])
    assert (a["ddb_lo"], a["ddb_hi"]) == pytest.approx((lo, hi))
    inside = (ddb >= lo) & (ddb <= hi)
    assert b["n"] == inside.sum() and b["steps_max"] == (np.arange(8) * 100.0)[inside].max()
    assert (a["steps_min"], a["steps_max"]) == (0.0, 0.0)


def test_central_window_of_nothing_and_bad_input():
    empty = vulnerability.central_window([], [], bins=4)
    assert empty["n"] == 0 and np.isnan(empty["ddb_lo"]) and np.isnan(empty["steps_median"])
    with pytest.raises(ValueError, match="bins must be >= 2, got 1"):
        vulnerability.central_window([0.1, 0.2], [1, 2], bins=1)
    with pytest.raises(ValueError, match=r"ddb and steps must be 1-D of the same length, got \(2,\) and \(3,\)"):
        vulnerability.central_window([0.1, 0.2], [1, 2, 3], bins=4)


PARAMS = {"pgd_norm": "l2", "eps": 0.03, "ddb_eps": 1.0, "step_size": 0.01, "pgd_steps": 7, "random_start": True,
          "seed": 3, "deepfool_steps": 11, "overshoot": 0.05, "unrelated": "x"}


def test_attack_settings_take_their_values_from_the_params():
    assert vulnerability.attack_settings(PARAMS) == {
        "pgd": {"norm": "l2", "eps": 0.03, "step_size": 0.01, "steps": 7, "random_start": True, "seed": 3},
        "deepfool": {"steps": 11, "overshoot": 0.05}}
    assert vulnerability.attack_settings(PARAMS, eps_key="ddb_eps")["pgd"]["eps"] == 1.0


def test_attack_settings_defaults_and_a_missing_budget():
    bare = {k: v for k, v in PARAMS.items() if k not in ("pgd_norm", "random_start")}
    pgd = vulnerability.attack_settings(bare)["pgd"]
    assert pgd["norm"] == "linf" and pgd["random_start"] is False
    with pytest.raises(KeyError, match="ddb_eps"):
        vulnerability.attack_settings({k: v for k, v in PARAMS.items() if k != "ddb_eps"}, eps_key="ddb_eps")


def test_ddb_steps_samples_attack_the_models_clean_prediction(tiny_model, synth):
    index = torch.tensor([17, 3, 150, 42, 99, 0, 8, 120])          # unsorted: rows follow the index
    samples = vulnerability.ddb_steps_samples(
        tiny_model, synth, index=index, batch_size=5, device="cpu",
        attacks={"pgd": dict(eps=16 / 255, step_size=2 / 255, steps=10), "deepfool": dict(steps=10)})
    assert list(samples.columns) == ["index", "label", "prediction", "success_pgd", "steps_pgd", "ddb_pgd",
                                     "success_deepfool", "steps_deepfool", "ddb_deepfool", "correct"]
    assert samples["index"].tolist() == index.tolist()
    assert samples["label"].tolist() == synth.test.labels[index].tolist()
    clean = predict(tiny_model, tensors.to_float(synth.test.images[index])).argmax(1)
    assert samples["prediction"].tolist() == clean.tolist()
    assert samples["correct"].tolist() == (clean == synth.test.labels[index]).tolist()
    ok = samples["success_pgd"].to_numpy(bool)
    assert (samples.loc[ok, "ddb_pgd"] > 0).all() and (samples.loc[~ok, "steps_pgd"] == -1).all()


# ---------------------------------------------------------------- the toy (HOL §5)

class Vertical(torch.nn.Module):
    """Class 1 iff x1 > 0.5 (a tie at 0.5 is class 0): distance to the boundary |x1 - 0.5|, and
    the cross-entropy gradient points straight along x1."""

    def forward(self, x):
        return torch.stack([10 * (0.5 - x[:, 0]), 10 * (x[:, 0] - 0.5)], dim=1)


def test_distance_and_steps_on_a_straight_boundary():
    x = torch.tensor([[0.305, 0.3], [0.205, 0.6], [0.745, 0.5]])
    y = torch.tensor([0, 1, 1])                                   # the second point is mislabelled
    s = toy.distance_and_steps(Vertical(), x, y, norm="l2", step_size=0.01, steps=40, seed=0, resolution=201)
    assert list(s.columns) == ["x1", "x2", "label", "prediction", "ddb_exact", "steps_pgd", "success_pgd", "l2_pgd",
                               "ddb_deepfool"]
    assert s["label"].tolist() == [0, 1, 1] and s["prediction"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(s["ddb_exact"], [0.195, 0.295, 0.245], atol=0.005 + 1e-6)   # one grid spacing
    # straight L2 steps of 0.01 from x1 to just past 0.5: the first iterate beyond the boundary
    assert s["steps_pgd"].tolist() == [20, 30, 25] and s["success_pgd"].all()
    np.testing.assert_allclose(s["l2_pgd"], [0.20, 0.30, 0.25], atol=1e-5)
    np.testing.assert_allclose(s["ddb_deepfool"], 1.02 * np.array([0.195, 0.295, 0.245]), rtol=1e-3)  # overshoot
    short = toy.distance_and_steps(Vertical(), x, y, norm="l2", step_size=0.01, steps=25, seed=0, resolution=201)
    assert short["steps_pgd"].tolist() == [20, -1, 25] and short["success_pgd"].tolist() == [True, False, True]


def _toy_samples():
    return pd.DataFrame({
        "success_pgd": [False, True, True, True, True, True],
        "ddb_exact":   [0.101, 0.100, 0.300, 0.102, 0.104, 0.500],
        "steps_pgd":   [99, 20, 50, 5, 8, 90],
        "ddb_deepfool": [0.202, 0.110, 0.300, 0.102, 0.208, 0.250]})


def test_illustration_pair_is_the_largest_step_gap_among_close_distances():
    samples = _toy_samples()
    pair = toy.illustration_pair(samples, rel_tol=0.05)
    # close pairs among the successful points: (1, 3) gap 15, (1, 4) gap 12, (3, 4) gap 3; point 0
    # (gap 79 with point 1) failed, so it is out; the lower step count comes first
    assert pair.tolist() == [3, 1]
    d, st = samples.loc[pair, "ddb_exact"].to_numpy(), samples.loc[pair, "steps_pgd"].to_numpy()
    assert abs(d[0] - d[1]) <= 0.05 * d.max()
    ok = np.flatnonzero(samples.success_pgd)
    gaps = [abs(samples.steps_pgd[i] - samples.steps_pgd[j]) for i in ok for j in ok
            if i != j and abs(samples.ddb_exact[i] - samples.ddb_exact[j]) <= 0.05 * max(samples.ddb_exact[[i, j]])]
    assert st[1] - st[0] == max(gaps)
    with pytest.raises(ValueError, match="no two samples have DDB within 1% of each other"):
        toy.illustration_pair(samples, rel_tol=0.01)


def test_pair_summary_on_hand_values():
    samples = _toy_samples()
    out = toy.pair_summary(samples, np.array([1, 3]), step_size=0.01)
    assert out["pair"] == [1, 3] and out["ddb_exact"] == [0.100, 0.102] and out["steps_pgd"] == [20, 5]
    assert all(type(v) is int for v in out["pair"] + out["steps_pgd"])
    ok = samples[samples.success_pgd]
    assert out["n"] == 5
    # ranks of DDB (0.100, 0.300, 0.102, 0.104, 0.500) and steps (20, 50, 5, 8, 90): d^2 = 4, 0, 1, 1, 0
    assert out["spearman_rho_all"] == pytest.approx(1 - 6 * 6 / (5 * 24))
    assert out["median_steps_over_straight_line"] == pytest.approx(np.median(ok.steps_pgd * 0.01 / ok.ddb_exact))
    assert out["median_steps_over_straight_line"] == pytest.approx(50 * 0.01 / 0.300)   # of 2, 1.67, 0.49, 0.77, 1.8
    # DeepFool's ratio is over every point, the failed PGD one included: 2, 1.1, 1, 1, 2, 0.5 -> 1.05
    assert out["median_deepfool_over_exact"] == pytest.approx(1.05)


def test_paths_table_has_one_row_per_point_and_step():
    paths = torch.arange(3 * 2 * 2, dtype=torch.float32).view(3, 2, 2)   # 2 steps, 2 points
    table = toy.paths_table(paths, [7, 4])
    assert list(table.columns) == ["point", "step", "x1", "x2"]
    assert table["point"].tolist() == [7, 7, 7, 4, 4, 4] and table["step"].tolist() == [0, 1, 2, 0, 1, 2]
    assert table["x1"].tolist() == [0, 4, 8, 2, 6, 10] and table["x2"].tolist() == [1, 5, 9, 3, 7, 11]


def test_moons_identity_records_sizes_noise_seed_and_a_checksum_of_the_data():
    xa, ya = toy.moons(n=20, noise=0.1, seed=0)
    xb, yb = toy.moons(n=10, noise=0.1, seed=1)
    ident = toy.moons_identity(xa, ya, xb, yb, noise=0.1, seed=0)
    assert ident == {"name": "two-moons", "n_train": 20, "n_test": 10, "noise": 0.1, "seed": 0,
                     "sha256": tensors.tensor_checksum(xa, ya, xb, yb)}
    assert len(ident["sha256"]) == 64
    other = toy.moons_identity(xa, ya, xb + 1e-3, yb, noise=0.1, seed=0)
    assert other["sha256"] != ident["sha256"]


# ---------------------------------------------------------------- frequency (HOL §6)

def test_partial_highpass_averages_the_partial_levels_and_takes_the_emptiest():
    # k_max = 4: rows 0 (full image) .. 4 (empty); the partial inputs are rows 1, 2, 3
    preds = torch.tensor([[0, 1, 2],
                          [0, 1, 0],
                          [0, 0, 0],
                          [1, 0, 2],
                          [9, 9, 9]])
    labels = torch.tensor([0, 1, 2])
    out = frequency.partial_highpass(preds, labels)
    assert set(out) == {"partial_highpass_accuracy", "emptiest_prediction"}
    assert out["partial_highpass_accuracy"].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert out["emptiest_prediction"].tolist() == [1, 0, 2]


def test_partial_highpass_needs_three_levels():
    three = frequency.partial_highpass(torch.tensor([[5, 5], [0, 0], [5, 5]]), torch.tensor([0, 1]))
    assert three["partial_highpass_accuracy"].tolist() == [1.0, 0.0] and three["emptiest_prediction"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="need at least 3 band levels, got 2"):
        frequency.partial_highpass(torch.tensor([[0, 1], [0, 1]]), torch.tensor([0, 1]))


# ---------------------------------------------------------------- trust (HOL §7-8)

def test_calibration_mask_is_a_seeded_share():
    mask = trust.calibration_mask(10, share=0.3, seed=4)
    assert mask.dtype == bool and mask.shape == (10,) and mask.sum() == 3
    assert np.array_equal(mask, trust.calibration_mask(10, share=0.3, seed=4))
    assert np.flatnonzero(mask).tolist() == sorted(np.random.default_rng(4).permutation(10)[:3].tolist())
    assert trust.calibration_mask(10, share=0.29, seed=0).sum() == 2          # rounded down
    masks = {tuple(trust.calibration_mask(20, share=0.5, seed=s)) for s in range(5)}
    assert len(masks) > 1                                                        # the seed matters
    for share in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"share must be in \(0, 1\), got {share}"):
            trust.calibration_mask(10, share=share, seed=0)


def test_split_attack_names_the_attack_of_every_score():
    results = pd.DataFrame({"score": ["d_hat_pgd", "f_hat", "T_deepfool", "T_pgd", "d_hat_deepfool"], "v": range(5)})
    out = trust.split_attack(results)
    assert out["score"].tolist() == ["d_hat", "f_hat", "T", "T", "d_hat"]
    assert out["attack"].tolist() == ["pgd", "both", "deepfool", "pgd", "deepfool"]
    assert results["score"].tolist()[0] == "d_hat_pgd" and "attack" not in results   # the input is untouched


def test_expand_both_repeats_the_attack_free_rows_under_every_attack():
    results = pd.DataFrame({"score": ["d_hat", "f_hat", "T", "T"], "attack": ["pgd", "both", "deepfool", "pgd"],
                            "flagging_accuracy": [1.0, 2.0, 3.0, 4.0]})
    out = trust.expand_both(results)
    assert len(out) == 3 + 2 and "both" not in set(out.attack)
    f = out[out.score == "f_hat"]
    assert f["attack"].tolist() == ["deepfool", "pgd"] and f["flagging_accuracy"].tolist() == [2.0, 2.0]
    assert out.iloc[:3]["attack"].tolist() == ["pgd", "deepfool", "pgd"]


def test_score_models_labels_every_model_and_splits_the_attack(tiny_model, synth):
    index = torch.arange(100, 124)
    x = tensors.to_float(synth.test.images[index])
    y = synth.test.labels[index]
    calibration = trust.calibration_mask(len(y), share=0.5, seed=0)
    attacks = {"pgd": dict(norm="linf", eps=1.0, step_size=2 / 255, steps=8, random_start=False, seed=0),
               "deepfool": dict(steps=10, overshoot=0.02)}
    results, samples = trust.score_models({("trust", 100): tiny_model, ("random", 100): tiny_model}, x, y,
                                          keys=("criterion", "budget"), index=index, attacks=attacks,
                                          calibration=calibration, attack_batch_size=12, batch_size_eval=64)
    assert {"criterion", "budget", "protocol", "score", "attack", "flagging_accuracy", "n"} <= set(results.columns)
    assert "model" not in results
    # per model: 2 protocols x (f_hat, d_hat and T per attack)
    assert len(results) == 2 * 2 * 5
    assert set(zip(results.score, results.attack)) == {("f_hat", "both"), ("d_hat", "pgd"), ("T", "pgd"),
                                                      ("d_hat", "deepfool"), ("T", "deepfool")}
    assert set(results.criterion) == {"trust", "random"} and set(results.budget) == {100}
    n = results.groupby("protocol")["n"].unique()
    assert n["calibrated"].tolist() == [int((~calibration).sum())] and n["transductive"].tolist() == [len(y)]
    assert len(samples) == 2 * len(y)
    assert samples["index"].tolist() == index.tolist() * 2
    assert samples["criterion"].tolist() == ["trust"] * len(y) + ["random"] * len(y)
    assert samples["calibration"].tolist() == calibration.tolist() * 2
    # the same network under two keys: the same numbers
    a, b = (results[results.criterion == c].drop(columns="criterion").reset_index(drop=True) for c in ("trust", "random"))
    pd.testing.assert_frame_equal(a, b)
    plain, _ = trust.score_models({"m": tiny_model}, x, y, attacks=attacks, calibration=calibration,
                                  attack_batch_size=12, batch_size_eval=64)
    assert plain["model"].unique().tolist() == ["m"]


# ---------------------------------------------------------------- distillation (HOL §9)

def test_selection_summary_describes_each_transfer_set_and_the_pool():
    pool = pd.DataFrame({"ddb": [0.1, 0.5, 0.3, 0.2], "flipping_frequency": [1, 2, 3, 4],
                         "T": [0.1, 0.9, 0.8, 0.2], "teacher_prediction": [0, 0, 1, 0]})
    labels = np.array([0, 0, 1, 1])
    out = distill.selection_summary(pool, labels, criteria=["closest", "trust"], per_class=1, seed=0)
    assert out.index.tolist() == ["closest", "trust", "whole pool"] and out.index.name == "criterion"
    assert list(out.columns) == ["images", "mean DDB", "mean flipping frequency", "mean T", "teacher right (%)"]
    # closest: the smallest DDB per class, samples 0 and 3; trust: the highest T, samples 1 and 2
    assert out.loc["closest"].tolist() == pytest.approx([2, 0.15, 2.5, 0.15, 50.0])
    assert out.loc["trust"].tolist() == pytest.approx([2, 0.4, 2.5, 0.85, 100.0])
    assert out.loc["whole pool"].tolist() == pytest.approx([4, 0.275, 2.5, 0.5, 75.0])
    with pytest.raises(ValueError, match=r"per_class must be in \[1, 2\]"):
        distill.selection_summary(pool, labels, criteria=["trust"], per_class=3, seed=0)

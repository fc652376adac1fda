"""Trust scores (HOL Eq. 1–4) on hand-computed cases, and K-means flagging."""
from __future__ import annotations

import numpy as np
import pytest

from advbook.analysis import trust


def test_eq1_and_eq2_on_hand_values():
    np.testing.assert_allclose(trust.normalised_ddb([1.0, 2.0, 3.0]), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(trust.reversed_normalised_ff([0, 8, 32]), [1.0, 0.75, 0.0])


def test_calibration_reference_fixes_min_max_and_clips():
    out = trust.normalised_ddb([0.5, 1.5, 4.0], reference=[1.0, 3.0])
    np.testing.assert_allclose(out, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(trust.normalised([2.0, 2.0]), [0.0, 0.0])  # constant: no spread


def test_eq3_harmonic_mean_with_eps():
    t = trust.trust_score([0.5, 1.0, 0.0], [0.5, 0.25, 1.0])
    np.testing.assert_allclose(t, [2 * 0.25 / (1 + 1e-5), 2 * 0.25 / (1.25 + 1e-5), 0.0])
    with pytest.raises(ValueError, match="same length"):
        trust.trust_score([0.1], [0.1, 0.2])


def test_kmeans_flags_the_low_cluster():
    scores = np.array([0.05, 0.1, 0.08, 0.9, 0.95, 0.85, 0.92])
    flags = trust.kmeans_flags(scores, seed=0)
    assert flags.tolist() == [True, True, True, False, False, False, False]
    # fitted on a reference, applied to new samples
    assert trust.kmeans_flags([0.0, 1.0], reference=scores).tolist() == [True, False]
    assert not trust.kmeans_flags([0.3, 0.3, 0.3]).any()


def test_eq4_flagging_accuracy_and_report():
    flagged = np.array([True, True, True, False, False])
    wrong = np.array([True, True, False, True, False])
    assert trust.flagging_accuracy(flagged, wrong) == pytest.approx(200 / 3)
    assert np.isnan(trust.flagging_accuracy(np.zeros(5, bool), wrong))
    rep = trust.flagging_report([0.1, 0.2, 0.3, 0.8, 0.9], wrong, flagged=flagged)
    assert rep["recall"] == pytest.approx(200 / 3) and rep["n_flagged"] == 3 and rep["flagged_share"] == 60
    # wrong samples score 0.1, 0.2, 0.8, right ones 0.3, 0.9: 5 of the 6 (wrong, right) pairs rank the wrong one lower
    assert rep["auroc"] == pytest.approx(5 / 6)


def test_score_frame_uses_the_reference_rows_for_min_max():
    ddb = {"pgd": [1.0, 2.0, 3.0, 10.0]}
    ff = [0, 16, 32, 8]
    ref = np.array([True, True, True, False])
    frame = trust.score_frame(ddb=ddb, ff=ff, reference=ref)
    assert list(frame.columns) == ["f_hat", "d_hat_pgd", "T_pgd"]
    np.testing.assert_allclose(frame["d_hat_pgd"], [0.0, 0.5, 1.0, 1.0])  # 10 clipped to the reference max
    np.testing.assert_allclose(frame["f_hat"], [1.0, 0.5, 0.0, 0.75])
    np.testing.assert_allclose(frame["T_pgd"], trust.trust_score(frame["d_hat_pgd"], frame["f_hat"]))


def test_flagging_rows_one_per_score_with_protocol_masks():
    import pandas as pd

    scores = pd.DataFrame({"a": [0.0, 0.1, 0.9, 1.0, 0.05, 0.95], "b": [1.0, 0.9, 0.1, 0.0, 0.95, 0.05]})
    wrong = np.array([True, True, False, False, True, False])
    rows = trust.flagging_rows(scores, wrong)
    assert [r["score"] for r in rows] == ["a", "b"]
    assert rows[0]["flagging_accuracy"] == 100.0 and rows[0]["auroc"] == 1.0
    assert rows[1]["flagging_accuracy"] == 0.0 and rows[1]["auroc"] == 0.0
    half = np.array([True, True, True, True, False, False])
    rows = trust.flagging_rows(scores, wrong, reference=half, evaluate=~half)
    assert rows[0]["n"] == 2 and rows[0]["n_flagged"] == 1


def test_score_model_reports_both_protocols_for_every_score(tiny_model, test_batch):
    x, _, labels = test_batch
    calibration = np.arange(len(x)) % 2 == 0
    rows, samples = trust.score_model(tiny_model, x, labels, calibration=calibration, seed=0,
                                      attacks={"pgd": dict(eps=1.0, step_size=2 / 255, steps=40),
                                               "deepfool": dict(steps=20)},
                                      attack_batch_size=32, batch_size_eval=500)
    assert {(r["protocol"], r["score"]) for r in rows} == {
        (p, s) for p in ("calibrated", "transductive") for s in ("f_hat", "d_hat_pgd", "T_pgd", "d_hat_deepfool", "T_deepfool")}
    assert all(r["n"] == (len(x) // 2 if r["protocol"] == "calibrated" else len(x)) for r in rows)
    assert len(samples) == len(x) and samples["wrong"].tolist() == (samples["label"] != samples["prediction"]).tolist()
    assert ((samples["T_pgd"] >= 0) & (samples["T_pgd"] <= 1)).all() and (samples["ddb_pgd"] > 0).all()

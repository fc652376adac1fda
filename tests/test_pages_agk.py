"""The AGK pages (notebooks/20-24_agk_*.ipynb): their profiles pass the schema and share the chapter's
models; bad overrides fail in one line; every claim of claims.d/agk.toml names rows and evaluations the
pages produce, and decides both ways on labelled frames whose truth is known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from advbook.analysis import claims
from advbook.book import experiment, verdicts
from advbook.book.param import ParameterError
from advbook.evaluation import agk, agk_studies

PAGES = ("agk_attacks", "agk_autoattack", "agk_attention", "agk_cat", "agk_features")
CTX = claims.Context(profile="cpu", dataset="cifar10", seeds=(0,))
CLAIMS = [c for c in verdicts.load_claims() if c["id"].startswith("AGK-")]


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("page", PAGES)
def test_every_profile_passes_the_schema_and_names_known_methods(page, profile):
    p = experiment.resolve(page, profile=profile)
    for key in ("methods", "timing_methods", "knn_methods", "tsne_methods"):
        for m in p.get(key, []):
            agk.method_config(m, p)


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_the_pages_share_the_chapter_s_models(profile):
    """Same architecture, images, schedule and training attack on every page (AGK-T5's budget of 4/255
    aside), so that the AT, UM = teacher and AGKD-BML models are trained once."""
    shared = ("dataset", "seed", "model", "train_per_class", "epochs", "batch_size", "lr", "weight_decay")
    values = [{k: experiment.resolve(page, profile=profile)[k] for k in shared} for page in PAGES]
    assert all(v == values[0] for v in values)
    attacks, features = (experiment.resolve(p, profile=profile) for p in ("agk_attacks", "agk_features"))
    for m in ("at", "agkd_bml", "sml"):
        assert agk.method_config(m, attacks) == agk.method_config(m, features)
    cat = experiment.resolve("agk_cat", profile=profile)
    assert agk.teacher_config(cat) == agk.teacher_config(attacks)          # one teacher for the chapter
    assert cat["at_eps"] == cat["eval_eps"] == pytest.approx(4 / 255)    # the supplement's Table 5


def test_the_cpu_profile_keeps_t2_s_shorter_run_the_chapter_s_model():
    p = experiment.resolve("agk_autoattack", profile="cpu")
    assert p["models"][1] == p["model"] and p["epoch_points"][0] == p["epochs"]


@pytest.mark.parametrize("page, overrides, message", [
    ("agk_autoattack", {"epoch_points": "15,10"}, r"^epoch_points=\[15, 10\] must be two values, the smaller first"),
    ("agk_autoattack", {"models": "tiny_cnn,tiny_cnn"}, r"models=.* must name each item once|must be two different"),
    ("agk_features", {"knn_k": 5000}, r"^knn_k=5000 must be at most the k-NN's training set, train_per_class x "
                                      r"classes = 2000$"),
    ("agk_features", {"tsne_classes": "0,12"}, r"^tsne_classes=\[0, 12\] must be class indices below 10$"),
    ("agk_attacks", {"methods": "at,pgd"}, r"methods=.*each item must be one of um, at"),
    ("agk_attacks", {"aa_version": "fast"}, r"aa_version.*one of: standard, custom"),
    ("agk_cat", {"n_eval": 5}, r"^n_eval=5 is out of range \[10, 10000\]$"),
])
def test_a_bad_override_fails_in_one_line_before_any_work(page, overrides, message):
    with pytest.raises(ParameterError, match=message):
        experiment.resolve(page, profile="cpu", overrides=overrides)


# --- every claim can be judged on what the pages write ---------------------------------------------

EVALUATIONS = {"natural", *agk.T1_EVALUATIONS, "autoattack", *(f"transfer:{r}" for r in agk_studies.SURROGATE_ROLES)}


def test_the_claims_cover_the_seven_artifacts_and_name_what_the_pages_produce():
    assert {c["artifact"] for c in CLAIMS} == {"AGK-T1", "AGK-T2", "AGK-T3", "AGK-T4", "AGK-T5", "AGK-T6", "AGK-F1"}
    cpu = {p: experiment.resolve(p, profile="cpu") for p in PAGES}
    rows = {"AGK-T1": cpu["agk_attacks"]["methods"], "AGK-T3": cpu["agk_attention"]["methods"],
            "AGK-T4": cpu["agk_attacks"]["timing_methods"], "AGK-T5": cpu["agk_cat"]["methods"],
            "AGK-T6": cpu["agk_features"]["knn_methods"], "AGK-F1": cpu["agk_features"]["tsne_methods"]}
    for c in CLAIMS:
        named = [c.get("winner"), *c.get("rivals", []), c.get("numerator"), *np.atleast_1d(c.get("denominator", []))]
        named = [n for n in named if n is not None]
        if c["artifact"] == "AGK-T2":
            assert set(named) == {"wider", "narrower"}
        elif c.get("unit") == "classifier":
            assert set(named) == {"knn", "softmax"}
        else:
            assert set(named) <= set(rows[c["artifact"]]), c["id"]
        where = np.atleast_1d(c.get("where", {}).get("evaluation", []))
        assert set(where) <= EVALUATIONS, c["id"]


def flags(methods, evaluations, good: dict, *, n=400, seed=0, value="robust", extra=None):
    """Per-image flags: method m is right on image i with probability good[m] (default 0.3)."""
    rng = np.random.default_rng(seed)
    out = []
    for e in evaluations:
        u = rng.random(n)   # one draw per image, shared: a better method is right wherever a worse one is
        for m in methods:
            out.append(pd.DataFrame({"seed": 0, "index": np.arange(n), "method": m, "evaluation": e,
                                     value: u < good.get(m, 0.3), **(extra or {})}))
    return pd.concat(out, ignore_index=True)


def decide(claim_id, tables):
    (claim,) = [c for c in CLAIMS if c["id"] == claim_id]
    return claims.decide(claim, tables, CTX)


T1 = ["natural", *agk.T1_EVALUATIONS, "autoattack"]
METHODS = ["um", "bilateral", "feature_scatter", "at", "alp", "sml", "agkd_bml"]


def test_t1_best_under_every_attack_holds_when_true_and_fails_when_reversed():
    best = flags(METHODS, T1, {"agkd_bml": 0.6})
    assert decide("AGK-T1.1", {"samples": best}).outcome == "holds"
    assert decide("AGK-T1.3", {"samples": best}).outcome == "holds"
    worst = flags(METHODS, T1, {"agkd_bml": 0.05})
    assert decide("AGK-T1.1", {"samples": worst}).outcome == "does not hold"


def test_t1_4_at_level_with_the_one_step_methods_under_autoattack_decides_both_ways():
    level = flags(METHODS, ["autoattack"], {"at": 0.4, "bilateral": 0.4, "feature_scatter": 0.4}, n=2000)
    assert decide("AGK-T1.4", {"samples": level}).outcome == "holds"
    behind = flags(METHODS, ["autoattack"], {"at": 0.2, "bilateral": 0.4, "feature_scatter": 0.4}, n=2000)
    assert decide("AGK-T1.4", {"samples": behind}).outcome == "does not hold"


def test_t2_wider_beats_narrower_at_both_lengths():
    frames = [flags(["x"], ["autoattack"], {"x": p}, extra={"role": role, "length": length}).drop(columns="method")
              for role, p in (("narrower", 0.3), ("wider", 0.5)) for length in ("shorter", "longer")]
    samples = pd.concat(frames, ignore_index=True)
    assert decide("AGK-T2.1", {"samples": samples}).outcome == "holds"
    swapped = samples.assign(role=samples["role"].map({"narrower": "wider", "wider": "narrower"}))
    assert decide("AGK-T2.1", {"samples": swapped}).outcome == "does not hold"


def test_t3_t5_claims_follow_the_simulated_truth():
    t3 = flags(["agkd_gc_orig", "agkd_gc_false", "agkd_cam_avg", "agkd"], ["natural", "pgd:20"],
               {"agkd": 0.5, "agkd_cam_avg": 0.5}, n=1000)
    assert [decide(i, {"samples": t3}).outcome for i in ("AGK-T3.1", "AGK-T3.2", "AGK-T3.3")] == ["holds"] * 3
    t5_evals = ["natural", "pgd:20", "cw:20", "transfer:vgg", "transfer:wrn"]
    t5 = flags(["cat_ce", "cat_mix", "agkd_bml"], t5_evals, {"agkd_bml": 0.6, "cat_mix": 0.3, "cat_ce": 0.2})
    assert decide("AGK-T5.1", {"samples": t5}).outcome == "holds"
    assert decide("AGK-T5.3", {"samples": t5}).outcome == "does not hold"   # CAT-MIX is behind under CW here


def test_t6_and_f1_are_decided_on_the_classifier_flags():
    rows = []
    for clf, shift in (("knn", 0.0), ("softmax", 0.0)):
        rows.append(flags(["at", "alp", "sml", "agkd_bml"], ["natural", "pgd:20"], {"agkd_bml": 0.6}, n=3000,
                          value="correct", extra={"classifier": clf}))
    same = pd.concat(rows, ignore_index=True)
    assert decide("AGK-T6.1", {"samples": same}).outcome == "holds"
    # identical classifiers: the paired difference is exactly 0, inside both margins
    assert decide("AGK-T6.2", {"samples": same}).outcome == "holds"
    assert decide("AGK-T6.3", {"samples": same}).outcome == "holds"
    worse = same.copy()
    knn = worse["classifier"] == "knn"
    worse.loc[knn, "correct"] = worse.loc[knn, "correct"] & (np.arange(knn.sum()) % 4 != 0)   # k-NN loses a quarter
    assert decide("AGK-T6.2", {"samples": worse}).outcome == "does not hold"
    f1 = flags(["um", "sml", "bml", "agkd_bml"], ["pgd:20", "pgd:100"], {"um": 0.05, "sml": 0.3, "bml": 0.4,
                                                                         "agkd_bml": 0.6},
               value="correct", extra={"classifier": "knn"})
    assert [decide(i, {"samples": f1}).outcome for i in ("AGK-F1.1", "AGK-F1.2", "AGK-F1.3")] == ["holds"] * 3


def test_t4_time_orderings_read_seconds_per_epoch():
    rng = np.random.default_rng(4)
    base = {"bilateral": 1.0, "feature_scatter": 1.5, "at": 4.0, "sml": 6.0, "agkd_bml": 5.0}
    timings = pd.DataFrame([{"method": m, "repeat": r, "seconds_per_epoch": s * np.exp(0.01 * rng.standard_normal()),
                             "seconds_per_run": 1.0} for r in range(7) for m, s in base.items()])
    assert [decide(i, {"timings": timings}).outcome for i in ("AGK-T4.1", "AGK-T4.2", "AGK-T4.3")] == ["holds"] * 3
    cheap = timings.assign(seconds_per_epoch=np.where(timings.method == "agkd_bml", 2.0, timings.seconds_per_epoch))
    assert decide("AGK-T4.1", {"timings": cheap}).outcome == "does not hold"

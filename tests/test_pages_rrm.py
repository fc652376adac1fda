"""The RRM pages (notebooks/16-19_rrm_*.ipynb): their profiles pass the schema and share the teacher of
HOL §6; bad overrides fail in one line; the helpers they call compute what the pages show (by hand); the
claims of claims.d/rrm.toml decide both ways on labelled frames; the figures fit the column."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from advbook.analysis import claims
from advbook.book import experiment, plots, plots_rrm, verdicts
from advbook.book.param import ParameterError
from advbook.evaluation import rrm
from advbook.training.train import TrainConfig

PAGES = ("rrm_speedup", "rrm_transfer", "rrm_lambda", "rrm_capacity")
CTX = claims.Context(profile="cpu", dataset="cifar10", seeds=(0,))


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("page", PAGES)
def test_every_profile_passes_the_schema(page, profile):
    p = experiment.resolve(page, profile=profile)
    assert p["student_per_class"] <= p["teacher_per_class"]
    if page in ("rrm_speedup", "rrm_transfer"):
        rrm.check_methods(p["methods"])
        assert "rrm" in p["methods"]


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_the_teacher_is_hol_section_6s_robust_model(profile):
    """Same architecture, images, schedule and attack as hol_freq's PGD-AT model (trained_for(robust=True)),
    so the cache key is the same and the chapter trains no teacher of its own."""
    hol = experiment.resolve("hol_freq", profile=profile)
    for page in PAGES:
        p = experiment.resolve(page, profile=profile)
        assert (p["teacher_model"], p["teacher_per_class"], p["seed"]) == (hol["model"], hol["train_per_class"], hol["seed"])
        expected = TrainConfig.build(epochs=hol["epochs"], batch_size=hol["batch_size"], lr=hol["lr"],
                                     weight_decay=hol["weight_decay"], objective="pgd_at", at_eps=hol["at_eps"],
                                     at_step_size=hol["at_step_size"], at_steps=hol["at_steps"])
        assert rrm.teacher_config(p).key_fields() == expected.key_fields()


def test_the_pages_share_students_and_evaluation_within_a_profile():
    shared = [k for k in experiment.resolve("rrm_lambda", profile="cpu")]
    values = [{k: experiment.resolve(page, profile="cpu")[k] for k in shared if k != "lambdas"} for page in PAGES]
    assert all(v == values[0] for v in values)
    assert 0.005 in experiment.resolve("rrm_lambda", profile="cpu")["lambdas"]   # RRM-T1's student is on the grid


@pytest.mark.parametrize("page, overrides, message", [
    ("rrm_speedup", {"student_per_class": 2000}, r"student_per_class=2000 must be at most teacher_per_class=1000"),
    ("rrm_lambda", {"lambdas": "0.5,0.005"}, r"lambdas=\[0.5, 0.005\] must be at least two values in increasing order"),
    ("rrm_speedup", {"methods": "sat,pgd"}, r"methods=.*each item must be one of sat, fast_pgd"),
    ("rrm_transfer", {"eval_eps": 2.0}, r"eval_eps=2.0 must be at most 1 with threat=linf"),
    ("rrm_capacity", {"students": "tiny_cnn,nope"}, r"students=.*each item must be one of"),
])
def test_a_bad_override_fails_in_one_line_before_any_work(page, overrides, message):
    with pytest.raises(ParameterError, match=message):
        experiment.resolve(page, profile="cpu", overrides=overrides)


def test_an_unknown_method_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown method\(s\) 'pgd'; valid: sat, fast_pgd, fgsm_rs, free_at, rrm"):
        rrm.check_methods(["sat", "pgd"])


def test_each_method_trains_its_objective_with_its_own_schedule():
    p = experiment.resolve("rrm_speedup", profile="cpu") | {"kd_tau": 30.0}
    cfg = {m: rrm.method_config(m, p) for m in rrm.METHODS}
    assert {m: c.objective for m, c in cfg.items()} == {
        "sat": "pgd_at", "fast_pgd": "pgd_at", "fgsm_rs": "fgsm_rs", "free_at": "free_at", "rrm": "rrm",
        "kd_rrm": "kd_rrm", "kd": "kd", "rdt": "standard", "standard": "standard"}
    assert (cfg["sat"].epochs, cfg["sat"].hyper.steps) == (p["sat_epochs"], p["at_steps"])
    assert (cfg["fast_pgd"].epochs, cfg["fast_pgd"].lr, cfg["fast_pgd"].warmup, cfg["fast_pgd"].hyper.steps) == \
        (p["fast_epochs"], p["fast_lr"], 0.5, p["fast_steps"])
    assert cfg["free_at"].epochs == p["free_epochs"] and cfg["free_at"].hyper.replays == p["free_m"]
    assert cfg["rrm"].hyper.lam == p["rrm_lambda"] and cfg["rrm"].epochs == p["epochs"]
    assert cfg["kd"].hyper.lam == 0.0 and cfg["kd"].hyper.tau == cfg["kd_rrm"].hyper.tau == 30.0
    assert cfg["rdt"].key_fields() == cfg["standard"].key_fields()   # the data, not the loss, differ


def test_grid_ends_are_fixed_by_the_grid():
    assert rrm.grid_ends([0.001, 0.01, 0.1]) == {0.001: "smallest", 0.01: "", 0.1: "largest"}
    with pytest.raises(ValueError, match="increasing order"):
        rrm.grid_ends([0.1, 0.01])


def test_capacity_roles_need_the_weakest_first():
    roles = rrm.capacity_roles(["micro_cnn", "tiny_cnn", "small_cnn"], teacher_model="small_cnn", num_classes=10)
    assert roles == {"micro_cnn": "weakest", "tiny_cnn": "other", "small_cnn": "teacher's architecture"}
    with pytest.raises(ValueError, match=r"students must start with the weakest: 'small_cnn' has 145,242 parameters"):
        rrm.capacity_roles(["small_cnn", "tiny_cnn"], teacher_model="small_cnn", num_classes=10)


def timings_frame(seconds: dict[str, list[float]], epochs: dict[str, int] | None = None) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "repeat": r, "seconds_per_epoch": s / (epochs or {}).get(m, 1),
                          "seconds_per_run": s, "epochs": (epochs or {}).get(m, 1), "device": "cpu", "threads": 2}
                         for m, ss in seconds.items() for r, s in enumerate(ss)])


def accuracy_frame(acc: dict[str, tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "evaluation": e, "accuracy": v, "seed": 0}
                         for m, (nat, adv) in acc.items() for e, v in (("natural", nat), ("apgd_ce", adv))])


def test_speedup_table_uses_medians_and_adds_the_teacher():
    t = timings_frame({"sat": [100, 90, 110], "rrm": [10, 30, 20], "teacher": [200, 200, 200]})
    table = rrm.speedup_table(accuracy_frame({"sat": (80, 40), "rrm": (70, 35)}), t).set_index("method")
    assert table.loc["SAT", "seconds"] == 100 and table.loc["RRM", "ratio to SAT"] == pytest.approx(0.2)
    assert table.loc["RRM + its teacher", "seconds"] == 220 and table.loc["RRM + its teacher", "apgd_ce"] == 35
    rows = rrm.beside_rows(accuracy_frame({"sat": (80, 40), "rrm": (70, 35)}), t)
    assert rows.set_index(["method", "quantity"]).loc[("rrm", "time_pct"), "value"] == pytest.approx(20.0)


def test_accuracy_helpers():
    acc = accuracy_frame({"rrm": (70, 35), "teacher": (75, 40)})
    assert rrm.accuracy_table(acc, drop=["teacher"]).to_dict("list") == {"method": ["RRM"], "natural": [70.0],
                                                                         "apgd_ce": [35.0]}
    assert rrm.accuracy_of(acc, "teacher") == {"natural": 75, "apgd_ce": 40}


# ---------------------------------------------------------------------------------------------
# The claims of claims.d/rrm.toml on labelled frames: each can come out either way
# ---------------------------------------------------------------------------------------------

def flags(method_rates: dict[str, dict[str, float]], *, n: int = 600, seed: int = 0, **columns) -> pd.DataFrame:
    """Per-image flags with the given accuracy per (method, evaluation); the images a weaker method gets
    right are a subset of a stronger one's, so differences are all discordant in one direction."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    rows = []
    for m, rates in method_rates.items():
        for e, r in rates.items():
            rows.append(pd.DataFrame({"seed": 0, "index": np.arange(n), "method": m, "evaluation": e,
                                      "robust": u < r, **{k: v[m] for k, v in columns.items()}}))
    return pd.concat(rows, ignore_index=True)


def decide(artifact: str, tables: dict) -> dict[str, str]:
    return {c["id"]: claims.decide(c, tables, CTX).outcome for c in verdicts.load_claims(artifact)}


def test_rrm_t1_claims_decide_both_ways():
    good = {"samples": flags({"rrm": {"natural": 0.7, "apgd_ce": 0.45}, "sat": {"natural": 0.8, "apgd_ce": 0.45},
                              "fast_pgd": {"natural": 0.8, "apgd_ce": 0.46}, "free_at": {"natural": 0.5, "apgd_ce": 0.3}}),
            "timings": timings_frame({"rrm": [10, 11, 10, 9, 10], "sat": [100, 101, 99, 100, 100],
                                      "fast_pgd": [30, 31, 30, 29, 30], "free_at": [10, 10, 11, 10, 9],
                                      "teacher": [5, 5, 5, 5, 5]})}
    assert decide("RRM-T1", good) == {"RRM-T1.1": "holds", "RRM-T1.2": "holds", "RRM-T1.3": "holds",
                                      "RRM-T1.4": "holds", "RRM-T1.5": "holds"}
    bad = {"samples": flags({"rrm": {"natural": 0.5, "apgd_ce": 0.2}, "sat": {"natural": 0.8, "apgd_ce": 0.45},
                             "fast_pgd": {"natural": 0.8, "apgd_ce": 0.46}, "free_at": {"natural": 0.6, "apgd_ce": 0.3}}),
           "timings": timings_frame({"rrm": [40, 41, 40, 39, 40], "sat": [100, 101, 99, 100, 100],
                                     "fast_pgd": [30, 31, 30, 29, 30], "free_at": [10, 10, 11, 10, 9],
                                     "teacher": [200, 200, 200, 200, 200]})}
    assert decide("RRM-T1", bad) == {"RRM-T1.1": "does not hold", "RRM-T1.2": "does not hold",
                                     "RRM-T1.3": "does not hold", "RRM-T1.4": "does not hold",
                                     "RRM-T1.5": "does not hold"}


def test_rrm_t2_claims_decide_both_ways_and_ignore_the_teacher_row():
    rates = {"rrm": 0.4, "rdt": 0.05, "kd_rrm": 0.03, "kd": 0.02, "standard": 0.0, "teacher": 0.6}
    samples = flags({m: {"natural": 0.8, "apgd_ce": r} for m, r in rates.items()})
    assert decide("RRM-T2", {"samples": samples}) == {"RRM-T2.1": "holds", "RRM-T2.2": "holds"}
    rates |= {"rrm": 0.01, "kd": 0.2}
    samples = flags({m: {"natural": 0.8, "apgd_ce": r} for m, r in rates.items()})
    assert decide("RRM-T2", {"samples": samples}) == {"RRM-T2.1": "does not hold", "RRM-T2.2": "does not hold"}


def test_rrm_f3_claims_compare_the_ends_of_the_grid_only():
    lam = {"a": 0.0005, "b": 0.005, "c": 5.0}
    end = {"a": "smallest", "b": "", "c": "largest"}
    trend = flags({"a": {"natural": 0.5, "apgd_ce": 0.4}, "b": {"natural": 0.9, "apgd_ce": 0.1},
                   "c": {"natural": 0.8, "apgd_ce": 0.1}}, **{"lambda": lam, "grid_end": end})
    assert decide("RRM-F3", {"samples": trend}) == {"RRM-F3.1": "holds", "RRM-F3.2": "holds"}
    flipped = flags({"a": {"natural": 0.8, "apgd_ce": 0.1}, "b": {"natural": 0.1, "apgd_ce": 0.9},
                     "c": {"natural": 0.5, "apgd_ce": 0.4}}, **{"lambda": lam, "grid_end": end})
    assert decide("RRM-F3", {"samples": flipped}) == {"RRM-F3.1": "does not hold", "RRM-F3.2": "does not hold"}


def test_rrm_f4_claim_decides_both_ways_and_is_not_run_without_the_teachers_architecture():
    role = {"micro_cnn": "weakest", "tiny_cnn": "other", "small_cnn": "teacher's architecture", "teacher": "teacher"}
    weak = flags({"micro_cnn": {"apgd_ce": 0.1}, "tiny_cnn": {"apgd_ce": 0.2}, "small_cnn": {"apgd_ce": 0.4},
                  "teacher": {"apgd_ce": 0.5}}, role=role)
    assert decide("RRM-F4", {"samples": weak}) == {"RRM-F4.1": "holds"}
    strong = flags({"micro_cnn": {"apgd_ce": 0.4}, "tiny_cnn": {"apgd_ce": 0.2}, "small_cnn": {"apgd_ce": 0.1},
                    "teacher": {"apgd_ce": 0.5}}, role=role)
    assert decide("RRM-F4", {"samples": strong}) == {"RRM-F4.1": "does not hold"}
    without = weak[weak["method"] != "small_cnn"]
    assert decide("RRM-F4", {"samples": without}) == {"RRM-F4.1": "not run"}


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

def test_the_figures_fit_the_column_and_name_what_they_show():
    t1 = pd.DataFrame({"method": ["SAT", "RRM", "RRM + its teacher"], "seconds": [100.0, 20.0, 220.0],
                       "natural": [80.0, 70.0, 70.0], "apgd_ce": [40.0, 35.0, 35.0]})
    f3 = pd.DataFrame({"lambda": [0.001, 0.001, 1.0, 1.0], "evaluation": ["natural", "apgd_ce"] * 2,
                       "accuracy": [50.0, 30.0, 80.0, 10.0]})
    f4 = pd.DataFrame({"student": ["micro_cnn", "small_cnn"], "seconds_per_epoch": [1.0, 5.0],
                       "natural": [40.0, 70.0], "apgd_ce": [10.0, 30.0]})
    figs = [plots_rrm.time_vs_accuracy(t1, n=500, title="t"),
            plots_rrm.transfer_bars(t1[["method", "natural", "apgd_ce"]], n=500, teacher={"natural": 75, "apgd_ce": 40}),
            plots_rrm.lambda_curves(f3, n=500, reference=0.005), plots_rrm.capacity_curves(f4, n=500, teacher={"apgd_ce": 40})]
    for fig in figs:
        assert isinstance(fig, Figure) and fig.get_figwidth() <= plots.COLUMN_INCHES
    assert [t.get_text() for t in figs[0].axes[0].get_yticklabels()] == ["SAT", "RRM", "RRM + its teacher"]
    assert [t.get_text() for t in figs[0].axes[0].texts] == ["100 s", "20 s", "220 s"]
    assert figs[2].axes[0].get_xscale() == "log" and figs[3].axes[0].get_xscale() == "log"
    assert set(plots_rrm.FIGURES) <= set(plots.FIGURES)
    with pytest.raises(ValueError, match="lacks column"):
        plots_rrm.time_vs_accuracy(t1.drop(columns="seconds"), n=500)


def test_feature_agreement_of_a_copy_is_exact_and_of_a_stranger_is_lower(synth, tiny_model):
    import copy
    import types

    import torch

    from advbook import data
    from advbook.models.zoo import build_model

    teacher = types.SimpleNamespace(model=tiny_model)
    torch.manual_seed(1)
    stranger = build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std)
    x, y = data.to_float(synth.test.images), synth.test.labels
    out = rrm.feature_agreement({"copy": types.SimpleNamespace(model=copy.deepcopy(tiny_model)),
                                 "stranger": types.SimpleNamespace(model=stranger)}, teacher, x=x, y=y).set_index("model")
    assert out.loc["copy", "cosine, same image"] == pytest.approx(1.0, abs=1e-5)
    assert out.loc["copy", "teacher's head accuracy (%)"] == out.loc["teacher", "teacher's head accuracy (%)"] > 50
    assert out.loc["teacher", "cosine, different images"] < 1.0
    assert out.loc["stranger", "teacher's head accuracy (%)"] < out.loc["teacher", "teacher's head accuracy (%)"]
    small = build_model("micro_cnn", num_classes=4, mean=synth.mean, std=synth.std)
    with pytest.raises(ValueError, match=r"small: features of shape \(32,\), the teacher's are \(64,\)"):
        rrm.feature_agreement({"small": types.SimpleNamespace(model=small)}, teacher, x=x, y=y)


def test_lambda_table_has_one_row_per_lambda_in_order():
    rows = pd.DataFrame({"lambda": [5.0, 5.0, 0.001, 0.001], "evaluation": ["natural", "apgd_ce"] * 2,
                         "accuracy": [80.0, 1.0, 40.0, 3.0]})
    table = rrm.lambda_table(rows)
    assert table.index.tolist() == [0.001, 5.0] and table.columns.tolist() == ["natural", "apgd_ce"]
    assert table.loc[5.0, "natural"] == 80.0 and table.loc[0.001, "apgd_ce"] == 3.0

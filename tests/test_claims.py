"""The claims engine on simulated data whose truth is known.

Each rule of :mod:`advbook.analysis.claims` is run on data drawn from a model where we know whether
the claim is true, and the share of each outcome over many seeded draws is checked: equal models
must come out inconclusive (never "holds", rarely "does not hold"), real gaps must be found, the
intervals of :mod:`advbook.analysis.stats` must cover their true values about 95% of the time, and
the claims file and the verdict files must be well formed. Everything is seeded, so each test is
deterministic; together they run in well under a minute.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from advbook.analysis import claims, stats
from advbook.book import report, tomls, verdicts

CTX = claims.Context(profile="fast", dataset="cifar10", seeds=(0,))
EVALUATIONS = ("natural", "fgsm", "pgd", "cw", "fmn", "autoattack", "mde")
ARTIFACTS_MD = Path(__file__).resolve().parents[2] / "shared" / "ARTIFACTS.md"


# ---------------------------------------------------------------------------------------------
# Simulated models: per-image right/wrong flags with a shared per-image difficulty
# ---------------------------------------------------------------------------------------------

def correlated_flags(rng, difficulty, accuracy: float, *, shared: float = 0.5) -> np.ndarray:
    """Right (True) where a latent ``sqrt(shared) * difficulty + sqrt(1 - shared) * noise`` clears the
    threshold that makes the accuracy exactly ``accuracy``: every model sharing ``difficulty`` makes
    correlated mistakes (the same hard images), as real models do."""
    latent = math.sqrt(shared) * difficulty + math.sqrt(1 - shared) * rng.standard_normal(len(difficulty))
    return latent > st.norm.ppf(1 - accuracy)


def flags_frame(rng, n: int, accuracy: dict[str, dict[str, float]], *, unit: str = "defense",
                seeds=(0,), shared: float = 0.5) -> pd.DataFrame:
    """A wide per-sample table as the VIR pages save it: one row per (unit, seed, image), one boolean
    column per evaluation; ``accuracy[unit][evaluation]`` is that model's true accuracy."""
    evaluations = list(next(iter(accuracy.values())))
    rows = []
    for seed in seeds:
        difficulty = {e: rng.standard_normal(n) for e in evaluations}
        for u, acc in accuracy.items():
            cols = {unit: u, "seed": seed, "index": np.arange(n), "label": np.arange(n) % 10}
            cols |= {e: correlated_flags(rng, difficulty[e], acc[e], shared=shared) for e in evaluations}
            rows.append(pd.DataFrame(cols))
    return pd.concat(rows, ignore_index=True)


def best_claim(winner: str, rivals=None, **extra) -> dict:
    claim = {"id": "SIM.1", "artifact": "VIR-T1", "statement": f"{winner} is the most robust.",
             "rule": "paired_best", "view": "flags_long", "unit": "defense", "winner": winner,
             "cells": ["evaluation"]}
    if rivals:
        claim["rivals"] = rivals
    return claim | extra


def outcome_shares(outcomes) -> dict[str, float]:
    counts = Counter(outcomes)
    return {k: counts[k] / len(outcomes) for k in claims.OUTCOMES}


# ---------------------------------------------------------------------------------------------
# 1-2. paired_best: equal defenses are inconclusive, real gaps are found
# ---------------------------------------------------------------------------------------------

def test_equal_defenses_are_inconclusive_not_ranked():
    """7 defenses of identical accuracy (60% under each of 3 evaluations), 400 images, 1 seed: the
    claim "A beats all 6 others under 3 evaluations" is false but not refutable. The old rule
    (point estimates) said "does not hold" about a quarter of the time; the paired tests with Holm
    must say "inconclusive" in at least 95% of draws and "holds" essentially never."""
    defenses = "ABCDEFG"
    claim = best_claim("A")
    outcomes = []
    for draw in range(200):
        rng = np.random.default_rng(10_000 + draw)
        frame = flags_frame(rng, 400, {d: {"natural": 0.6, "fgsm": 0.6, "pgd": 0.6} for d in defenses})
        v = claims.decide(claim, {"samples": frame}, CTX)
        assert len(v.comparisons) == 18 and v.n == 400
        outcomes.append(v.outcome)
    share = outcome_shares(outcomes)
    assert share["inconclusive"] >= 0.95, share
    assert share["holds"] <= 0.01, share


@pytest.mark.parametrize("gap, expected", [(5.0, "holds"), (-5.0, "does not hold")])
def test_a_real_five_point_gap_is_found_at_2000_images(gap, expected):
    """A right with probability p + gap, B with p (60%), correlated mistakes, 2,000 images: the
    claim "A beats B" is decided the right way in at least 95% of 200 draws and never the wrong way.
    (About 32% of the images are discordant; McNemar's power here is about 97%.)"""
    claim = best_claim("A", rivals=["B"], where={"evaluation": "pgd"})
    outcomes = []
    for draw in range(200):
        rng = np.random.default_rng(20_000 + draw)
        frame = flags_frame(rng, 2000, {"A": {"pgd": 0.6 + gap / 100}, "B": {"pgd": 0.6}})
        outcomes.append(claims.decide(claim, {"samples": frame}, CTX).outcome)
    share = outcome_shares(outcomes)
    wrong = "does not hold" if expected == "holds" else "holds"
    assert share[expected] >= 0.95, share
    assert share[wrong] == 0, share


def test_paired_best_pools_seeds_and_checks_every_cell():
    rng = np.random.default_rng(1)
    acc = {"A": {"natural": 0.9, "pgd": 0.55}, "B": {"natural": 0.8, "pgd": 0.45}, "C": {"natural": 0.88, "pgd": 0.6}}
    frame = flags_frame(rng, 1000, acc, seeds=(0, 1, 2))
    ctx = claims.Context("fast", "cifar10", (0, 1, 2))
    v = claims.decide(best_claim("A"), {"samples": frame}, ctx)
    # A leads everywhere except against C under PGD, where it is 5 points behind
    assert v.outcome == "does not hold" and v.n == 3000 and v.seeds == 3
    assert v.estimate == pytest.approx(min(c["estimate"] for c in v.comparisons))
    labels = [c["label"] for c in v.comparisons]
    assert sorted(labels) == ["natural, A vs B", "natural, A vs C", "pgd, A vs B", "pgd, A vs C"]
    # loser: every rival beats B
    loser = {k: w for k, w in best_claim("A").items() if k != "winner"} | {"loser": "B"}
    v = claims.decide(loser, {"samples": frame}, ctx)
    assert v.outcome == "holds" and v.statistic == "smallest lead over B (points)", v.line()


def test_paired_best_inconclusive_says_how_many_images_per_seed():
    rng = np.random.default_rng(2)
    frame = flags_frame(rng, 300, {"A": {"pgd": 0.62}, "B": {"pgd": 0.6}}, seeds=(0, 1))
    ctx = claims.Context("fast", "cifar10", (0, 1))
    v = claims.decide(best_claim("A", where={"evaluation": "pgd"}), {"samples": frame}, ctx)
    assert v.outcome == "inconclusive"
    m = re.search(r"about ([\d,]+) paired images per seed \(2 seeds pooled\) \(now 300\)", v.why)
    assert m, v.why
    need = int(m.group(1).replace(",", ""))
    assert need > 300


def test_paired_best_refuses_duplicate_images_and_drops_missing_flags():
    rng = np.random.default_rng(3)
    frame = flags_frame(rng, 200, {"A": {"pgd": 0.7}, "B": {"pgd": 0.5}})
    with pytest.raises(ValueError, match="several rows for one image"):
        claims.decide(best_claim("A"), {"samples": pd.concat([frame, frame])}, CTX)
    holes = frame.astype({"pgd": object})
    holes.loc[holes.index[:50], "pgd"] = None            # A's first 50 images were not evaluated
    v = claims.decide(best_claim("A"), {"samples": holes}, CTX)
    assert v.n == 150                                    # missing is neither right nor wrong


def test_paired_best_not_run_reasons():
    rng = np.random.default_rng(4)
    frame = flags_frame(rng, 50, {"A": {"pgd": 0.7}, "B": {"pgd": 0.5}})
    assert claims.decide(best_claim("Z"), {"samples": frame}, CTX).why == "Z was not run in this profile"
    assert claims.decide(best_claim("A", rivals=["Q"]), {"samples": frame}, CTX).outcome == "not run"
    assert claims.decide(best_claim("A"), {}, CTX).outcome == "not run"


# ---------------------------------------------------------------------------------------------
# 3. McNemar: exact p as statsmodels, Wald interval coverage, a = b
# ---------------------------------------------------------------------------------------------

def test_mcnemar_p_value_matches_statsmodels_exact():
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(1, 400))
        a, b = rng.random(n) < rng.random(), rng.random(n) < rng.random()
        table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
        t = stats.mcnemar(a, b)
        assert t.p == pytest.approx(sm_mcnemar(table, exact=True).pvalue, abs=1e-12)
        discordant = table[0][1] + table[1][0]
        expected = st.binomtest(table[0][1], discordant).pvalue if discordant else 1.0
        assert t.p == pytest.approx(expected, abs=1e-12)
        assert t.estimate == pytest.approx(100 * (a.mean() - b.mean()))


def test_mcnemar_wald_interval_covers_the_true_difference():
    """A 65% model against a 60% one with correlated mistakes: the true difference is exactly 5 points."""
    rng = np.random.default_rng(6)
    covered = []
    for _ in range(1000):
        difficulty = rng.standard_normal(400)
        t = stats.mcnemar(correlated_flags(rng, difficulty, 0.65), correlated_flags(rng, difficulty, 0.60))
        covered.append(t.low <= 5.0 <= t.high)
    assert 0.92 <= np.mean(covered) <= 0.98, np.mean(covered)


def test_mcnemar_edge_cases():
    t = stats.mcnemar([], [])
    assert t.n == 0 and math.isnan(t.estimate)
    with pytest.raises(ValueError, match="one length"):
        stats.mcnemar([True, False], [True])
    t = stats.mcnemar([True] * 30, [False] * 30)
    assert t.estimate == 100 and t.p < 1e-8 and "30 images only A gets right, 0 only B" == t.detail


try:
    from hypothesis import given, settings
    from hypothesis import strategies as hs
except ImportError:  # pragma: no cover - hypothesis is in requirements.txt
    given = None

if given is not None:
    @settings(max_examples=60, deadline=None)
    @given(hs.lists(hs.booleans(), min_size=1, max_size=300))
    def test_mcnemar_of_a_model_with_itself_is_level(flags):
        t = stats.mcnemar(flags, flags)
        assert t.estimate == 0 and t.p == 1.0 and t.n == len(flags)
        assert not (t.low > 0 or t.high < 0)


# ---------------------------------------------------------------------------------------------
# 4. Spearman with a Fisher interval, and the correlation rule
# ---------------------------------------------------------------------------------------------

def bivariate_normal(rng, n, rho):
    x = rng.standard_normal(n)
    return x, rho * x + math.sqrt(1 - rho ** 2) * rng.standard_normal(n)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8, 0.9])
def test_spearman_fisher_interval_covers_the_population_value(rho):
    truth = 6 / math.pi * math.asin(rho / 2)        # Spearman's rho of a bivariate normal
    rng = np.random.default_rng(7)
    covered = [(t := stats.spearman(*bivariate_normal(rng, 100, rho))).low <= truth <= t.high for _ in range(600)]
    assert 0.92 <= np.mean(covered) <= 0.98, np.mean(covered)


def correlation_claim(direction="below", threshold=0.5):
    return {"id": "SIM.r", "artifact": "HOL-F2", "statement": "weakly correlated", "rule": "correlation",
            "x": "ddb", "y": "steps", "direction": direction, "threshold": threshold}


@pytest.mark.parametrize("rho, n, expected", [(0.1, 2000, "holds"), (0.9, 2000, "does not hold"),
                                              (-0.9, 2000, "does not hold"), (0.0, 2000, "holds")])
def test_correlation_below_a_threshold(rho, n, expected):
    x, y = bivariate_normal(np.random.default_rng(8), n, rho)
    v = claims.decide(correlation_claim(), {"samples": pd.DataFrame({"ddb": x, "steps": y})}, CTX)
    assert v.outcome == expected, v.line()


def test_correlation_near_the_threshold_is_inconclusive_with_a_sample_size():
    x, y = bivariate_normal(np.random.default_rng(9), 50, 0.45)
    v = claims.decide(correlation_claim(), {"samples": pd.DataFrame({"ddb": x, "steps": y})}, CTX)
    assert v.outcome == "inconclusive" and v.n == 50
    m = re.search(r"About ([\d,]+) samples would put the interval on one side of 0.5", v.why)
    assert m and int(m.group(1).replace(",", "")) > 50, v.why
    # most draws at this size cannot decide it either
    rng = np.random.default_rng(10)
    outs = [claims.decide(correlation_claim(), {"samples": pd.DataFrame(dict(zip(("ddb", "steps"),
                                                                                  bivariate_normal(rng, 50, 0.45))))},
                          CTX).outcome for _ in range(100)]
    assert outcome_shares(outs)["inconclusive"] >= 0.8


def test_correlation_above_and_degenerate():
    x, y = bivariate_normal(np.random.default_rng(11), 500, 0.8)
    frame = pd.DataFrame({"ddb": x, "steps": y})
    assert claims.decide(correlation_claim("above", 0.5), {"samples": frame}, CTX).outcome == "holds"
    assert claims.decide(correlation_claim("above", 0.9), {"samples": frame}, CTX).outcome == "does not hold"
    flat = pd.DataFrame({"ddb": x, "steps": 1.0})
    assert claims.decide(correlation_claim(), {"samples": flat}, CTX).outcome == "inconclusive"
    assert claims.decide(correlation_claim(), {"samples": frame[["ddb"]]}, CTX).outcome == "not run"


# ---------------------------------------------------------------------------------------------
# 5. Holm
# ---------------------------------------------------------------------------------------------

def test_holm_matches_statsmodels_and_keeps_nan(monkeypatch):
    import gc

    from statsmodels.stats.multitest import multipletests

    monkeypatch.setattr(gc, "collect", lambda *a: 0)   # statsmodels' Holm collects garbage on every call

    p = [0.01, 0.04, 0.03, 0.005, 0.5, 0.04, 1.0]
    ours = stats.holm(p)
    assert ours == pytest.approx(multipletests(p, method="holm")[1].tolist(), abs=1e-15)
    rng = np.random.default_rng(12)
    for _ in range(50):
        q = rng.random(int(rng.integers(1, 30))) ** 3
        assert stats.holm(q) == pytest.approx(multipletests(q, method="holm")[1].tolist(), abs=1e-15)
    with_nan = stats.holm([0.01, math.nan, 0.04])
    assert math.isnan(with_nan[1])
    assert [with_nan[0], with_nan[2]] == pytest.approx(multipletests([0.01, 0.04], method="holm")[1].tolist())
    assert all(math.isnan(v) for v in stats.holm([math.nan, math.nan])) and stats.holm([]) == []


# ---------------------------------------------------------------------------------------------
# 6. window_spread
# ---------------------------------------------------------------------------------------------

def spread_claim():
    return {"id": "SIM.w", "artifact": "HOL-F2", "statement": "different steps at the same DDB",
            "rule": "window_spread", "x": "ddb", "y": "steps", "where": {"success": True}, "bins": 10,
            "threshold": 0.5}


def test_window_spread_does_not_hold_when_steps_depend_only_on_ddb():
    rng = np.random.default_rng(13)
    ddb = rng.uniform(0.5, 1.5, 1000)
    frame = pd.DataFrame({"ddb": ddb, "steps": np.ceil(40 * ddb), "success": True})
    v = claims.decide(spread_claim(), {"samples": frame}, CTX)
    assert v.outcome == "does not hold" and v.high < 0.5 and 90 <= v.n <= 110, v.line()


def test_window_spread_holds_with_large_spread_at_equal_ddb():
    rng = np.random.default_rng(14)
    ddb = rng.uniform(0.5, 1.5, 1000)
    steps = np.ceil(40 * ddb * rng.lognormal(0, 0.6, 1000))
    frame = pd.DataFrame({"ddb": ddb, "steps": steps, "success": rng.random(1000) < 0.9})
    v = claims.decide(spread_claim(), {"samples": frame}, CTX)
    assert v.outcome == "holds" and v.low > 0.5, v.line()


def test_window_spread_needs_enough_samples_in_the_window():
    rng = np.random.default_rng(15)
    frame = pd.DataFrame({"ddb": rng.uniform(0, 1, 30), "steps": rng.integers(1, 100, 30), "success": True})
    v = claims.decide(spread_claim(), {"samples": frame}, CTX)
    assert v.outcome == "inconclusive" and v.n < 5 and re.search(r"only \d samples in the central window", v.why)


# ---------------------------------------------------------------------------------------------
# 7. group_difference
# ---------------------------------------------------------------------------------------------

def group_claim(**extra):
    return {"id": "SIM.g", "artifact": "HOL-T1", "statement": "class 3 needs more bands than class 1",
            "rule": "group_difference", "value": "bands", "group": "label", "a": 3, "b": 1} | extra


def class_frame(rng, difference: float, n: int = 100) -> pd.DataFrame:
    label = np.repeat([1, 3, 5], n)
    bands = rng.gamma(4.0, 1.0, 3 * n) + difference * (label == 3)
    return pd.DataFrame({"label": label, "bands": bands, "emptiest_prediction": rng.choice([0, 3, 8], 3 * n)})


def test_group_difference_holds_for_a_known_difference():
    v = claims.decide(group_claim(), {"samples": class_frame(np.random.default_rng(16), 2.0)}, CTX)
    assert v.outcome == "holds" and v.low > 0 and v.p < 0.05 and v.n == 200, v.line()
    v = claims.decide(group_claim(a=1, b=3), {"samples": class_frame(np.random.default_rng(16), 2.0)}, CTX)
    assert v.outcome == "does not hold", v.line()


def test_group_difference_without_a_difference_is_inconclusive():
    outs = [claims.decide(group_claim(), {"samples": class_frame(np.random.default_rng(30_000 + d), 0.0)},
                          CTX).outcome for d in range(100)]
    share = outcome_shares(outs)
    assert share["inconclusive"] >= 0.90 and share["holds"] <= 0.05, share


def test_group_difference_unless_default():
    rng = np.random.default_rng(17)
    frame = class_frame(rng, 2.0)
    frame["emptiest_prediction"] = np.where(rng.random(len(frame)) < 0.7, 3, 5)   # class 3 is the default answer
    v = claims.decide(group_claim(unless_default="emptiest_prediction"), {"samples": frame}, CTX)
    assert v.outcome == "inconclusive" and "default answer" in v.why
    frame["emptiest_prediction"] = 5                                               # an unrelated default
    v = claims.decide(group_claim(unless_default="emptiest_prediction"), {"samples": frame}, CTX)
    assert v.outcome == "holds"
    v = claims.decide(group_claim(unless_default="emptiest_prediction"), {"samples": frame.drop(
        columns="emptiest_prediction")}, CTX)
    assert v.outcome == "not run"


# ---------------------------------------------------------------------------------------------
# 8. within_model with a control
# ---------------------------------------------------------------------------------------------

def masking_claim():
    return {"id": "SIM.m", "artifact": "VIR-T5", "statement": "less robust to Square than to PGD",
            "rule": "within_model", "view": "flags_long", "where": {"defense": "gairat"},
            "a": "square", "b": "pgd", "control": "natural"}


def test_within_model_an_attack_without_power_is_too_weak():
    rng = np.random.default_rng(18)
    n = 1000
    natural = rng.random(n) < 0.6
    pgd = natural | (rng.random(n) < 0.5)                 # constructed so that pgd - square is large
    frame = pd.DataFrame({"defense": "gairat", "seed": 0, "index": np.arange(n), "natural": natural,
                          "pgd": pgd, "square": natural})
    v = claims.decide(masking_claim(), {"samples": frame}, CTX)
    assert v.estimate > 15 and v.comparisons[0]["p"] < 1e-6       # b - a looks large ...
    assert v.outcome == "inconclusive" and "too weak" in v.why, v.line()   # ... but Square did nothing


def test_within_model_a_powerful_attack_below_pgd_holds():
    rng = np.random.default_rng(19)
    difficulty = rng.standard_normal(1000)
    frame = pd.DataFrame({"defense": "gairat", "seed": 0, "index": np.arange(1000),
                          "natural": correlated_flags(rng, difficulty, 0.85, shared=0.8),
                          "pgd": correlated_flags(rng, difficulty, 0.50, shared=0.8),
                          "square": correlated_flags(rng, difficulty, 0.40, shared=0.8)})
    v = claims.decide(masking_claim(), {"samples": frame}, CTX)
    assert v.outcome == "holds" and v.estimate == pytest.approx(
        100 * (frame.pgd.mean() - frame.square.mean())), v.line()
    frame["square"], frame["pgd"] = frame["pgd"], frame["square"]       # the other way round
    assert claims.decide(masking_claim(), {"samples": frame}, CTX).outcome == "does not hold"


# ---------------------------------------------------------------------------------------------
# 9. flag_precision_best
# ---------------------------------------------------------------------------------------------

def trust_frame(rng, *, t_perfect: bool, n: int = 600) -> pd.DataFrame:
    wrong = rng.random(n) < 0.3
    perfect = np.where(wrong, 0.1, 0.9) + rng.normal(0, 0.02, n)        # low score exactly on mistakes
    frame = pd.DataFrame({"model": "resnet18", "calibration": np.arange(n) < n // 3, "wrong": wrong})
    for attack in ("pgd", "deepfool"):
        frame[f"T_{attack}"] = perfect if t_perfect else rng.random(n)
        frame[f"d_hat_{attack}"] = rng.random(n) if t_perfect else perfect
    frame["f_hat"] = rng.random(n) if t_perfect else perfect
    return frame


FLAG_CLAIM = {"id": "SIM.t", "artifact": "HOL-T2", "statement": "T flags mistakes best",
              "rule": "flag_precision_best", "cells": ["model"], "rivals": ["d_hat_{attack}", "f_hat"]}


def test_flag_precision_best_holds_when_t_flags_exactly_the_mistakes():
    v = claims.decide(FLAG_CLAIM, {"samples": trust_frame(np.random.default_rng(20), t_perfect=True)}, CTX)
    assert v.outcome == "holds" and len(v.comparisons) == 4 and v.n == 400, v.line()
    assert v.low > 0


def test_flag_precision_best_does_not_hold_the_other_way_round():
    frame = trust_frame(np.random.default_rng(21), t_perfect=False)
    v = claims.decide(FLAG_CLAIM, {"samples": frame}, CTX)
    assert v.outcome == "does not hold" and v.high < 0, v.line()
    one = FLAG_CLAIM | {"attacks": ["pgd"], "rivals": ["d_hat_{attack}"], "at_least": True}
    assert claims.decide(one, {"samples": frame}, CTX).outcome == "does not hold"
    level = frame.assign(d_hat_pgd=frame["T_pgd"])      # the same flags: a gap of exactly 0
    assert claims.decide(one, {"samples": level}, CTX).outcome == "inconclusive"   # no margin: cannot show >=
    assert claims.decide(one | {"margin": 5.0}, {"samples": level}, CTX).outcome == "holds"


def test_flag_precision_best_is_deterministic():
    frame = trust_frame(np.random.default_rng(22), t_perfect=True)
    one = FLAG_CLAIM | {"attacks": ["pgd"]}
    assert claims.decide(one, {"samples": frame}, CTX) == claims.decide(one, {"samples": frame}, CTX)


# ---------------------------------------------------------------------------------------------
# 10. The verdict line
# ---------------------------------------------------------------------------------------------

def test_verdict_line_states_everything():
    v = claims.Verdict(claim="VIR-T1.1", artifact="VIR-T1", statement="s", outcome="holds",
                       statistic="smallest lead of vir_at (points)", estimate=3.214, low=1.049, high=5.371,
                       p=0.0123, n=2000, seeds=3, profile="fast", dataset="cifar10", rule="paired_best",
                       why="significant in all 3 comparisons after Holm correction.")
    line = v.line()
    for part in ("**holds**", "smallest lead of vir_at (points) 3.21", "95% CI 1.05, 5.37", "p = 0.012",
                 "n = 2000", "3 seeds", "fast profile", "`cifar10`", "after Holm correction"):
        assert part in line, (part, line)
    tiny = claims.Verdict(**{**v.to_dict(), "p": 1e-9, "seeds": 1, "outcome": "does not hold"}).line()
    assert "p < 0.0001" in tiny and "1 seed," in tiny and "**does not hold**" in tiny


def test_verdict_line_of_a_decided_claim_and_of_not_run():
    rng = np.random.default_rng(23)
    frame = flags_frame(rng, 500, {"A": {"pgd": 0.7}, "B": {"pgd": 0.5}})
    line = claims.decide(best_claim("A"), {"samples": frame}, CTX).line()
    assert line.startswith("**holds** — smallest lead of A (points) ") and "n = 500, 1 seed, fast profile" in line
    assert re.search(r"\[95% CI -?\d+\.\d\d, -?\d+\.\d\d\], p [=<] ", line), line
    nr = claims.decide(best_claim("A") | {"not_run": "needs the WideResNet checkpoints"}, {"samples": frame}, CTX)
    assert nr.outcome == "not run" and nr.line() == "**not run** — needs the WideResNet checkpoints"
    with pytest.raises(ValueError, match="unknown rule 'best_guess'"):
        claims.decide(best_claim("A") | {"rule": "best_guess"}, {}, CTX)


# ---------------------------------------------------------------------------------------------
# 11. The claims file
# ---------------------------------------------------------------------------------------------

def raw_claims() -> list[dict]:
    return tomls.load("claims")["claim"]


def test_claims_file_is_well_formed():
    raw = raw_claims()
    ids = [c["id"] for c in raw]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    for c in raw:
        assert c["rule"] in claims.RULES, c["id"]
        assert c["statement"].strip() and c["artifact"].strip(), c["id"]
        assert c["id"].split(".")[0] == c["artifact"], c["id"]
        assert "view" not in c or c["view"] in claims.VIEWS, c["id"]
    expanded = verdicts.load_claims()
    assert len({c["id"] for c in expanded}) == len(expanded)
    for c in expanded:   # every claim's settings parse: with no data each is "not run", none raises
        assert claims.decide(c, {}, CTX).outcome == "not run", c["id"]


@pytest.mark.skipif(not ARTIFACTS_MD.exists(), reason="shared/ARTIFACTS.md is not beside this checkout")
def test_every_claim_names_a_catalogued_artifact():
    catalogue = set(re.findall(r"^\| ([A-Z]{3}-[TF]\d+) \|", ARTIFACTS_MD.read_text(), flags=re.M))
    missing = sorted({c["artifact"] for c in raw_claims()} - catalogue)
    assert not missing, missing


def test_paper_best_claims_expand_into_the_papers_winners():
    for c in (c for c in raw_claims() if c["rule"] == "paper_best"):
        expanded = verdicts.load_claims(c["artifact"])
        mine = [e for e in expanded if e["id"].startswith(c["id"] + ".")]
        assert mine, c["id"]
        paper = report.paper_result(c["artifact"])
        rows = pd.DataFrame(paper["rows"], columns=paper["columns"])
        for e in mine:
            evaluation = e["id"][len(c["id"]) + 1:]
            scores = rows[rows["evaluation"] == evaluation].set_index(rows.columns[0])["mean"]
            assert e["rule"] == "paired_best" and e["winner"] == scores.idxmax(), e["id"]
            assert (scores == scores.max()).sum() == 1
            assert e["where"]["evaluation"] == evaluation.rpartition(":")[2]
            assert e["winner"] in e["statement"]


# ---------------------------------------------------------------------------------------------
# 12. Verdict files round trip
# ---------------------------------------------------------------------------------------------

DEFENSES = ("at", "trades", "mart", "gairat", "mail_at", "vir_trades", "vir_at", "vir_at_mean", "vir_at_norm",
            "vir_trades_mean")


def write_fake_vir_t1(folder: Path) -> None:
    rng = np.random.default_rng(24)
    acc = {d: {e: 0.5 for e in EVALUATIONS} for d in DEFENSES}
    acc["vir_at"] |= {"natural": 0.75, "fgsm": 0.7, "pgd": 0.65}      # VIR-T1.1 holds
    acc["gairat"] |= {"cw": 0.65}                                     # VIR-T1.2 and 1.3 do not hold
    acc["vir_at_norm"] |= {"natural": 0.95, "fgsm": 0.95, "pgd": 0.95}  # a control: no rival of the paper's claims
    acc["vir_trades_mean"] |= {"cw": 0.8}                             # VIR-T1.5 (ours) does not hold
    flags = flags_frame(rng, 600, acc, seeds=(0, 1))
    flags.to_csv(folder / "VIR-T1.samples.csv", index=False)
    (folder / "VIR-T1.provenance.json").write_text(json.dumps(
        {"profile": "fast", "dataset": {"name": "cifar10"}, "seeds": {"seed": 0}, "params": {}}))
    seal(folder, "VIR-T1", {"samples": "VIR-T1.samples.csv", "provenance": "VIR-T1.provenance.json"})


def seal(folder: Path, artifact_id: str, files: dict[str, str]) -> None:
    """The manifest write_artifact writes last: without it a set is refused as unfinished."""
    import hashlib
    sums = {k: {"name": n, "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest()} for k, n in files.items()}
    (folder / f"{artifact_id}.manifest.json").write_text(json.dumps({"artifact": artifact_id, "files": sums}))


def test_decide_artifact_round_trip(tmp_path):
    write_fake_vir_t1(tmp_path)
    first = verdicts.decide_artifact(tmp_path, "VIR-T1")
    saved = json.loads((tmp_path / "VIR-T1.claims.json").read_text())
    assert [v["claim"] for v in saved] == ["VIR-T1.1", "VIR-T1.2", "VIR-T1.3", "VIR-T1.4", "VIR-T1.5"]
    assert [v["outcome"] for v in saved] == [v.outcome for v in first] == ["holds", "does not hold", "does not hold",
                                                                           "holds", "does not hold"]
    assert all(v["seeds"] == 2 and v["n"] == 1200 and v["profile"] == "fast" and v["dataset"] == "cifar10"
               for v in saved)
    second = verdicts.decide_artifact(tmp_path, "VIR-T1", write=False)
    assert [v.to_dict() for v in second] == [v.to_dict() for v in first]     # deterministic
    table = verdicts.claims_table(tmp_path)
    assert table["claim"].tolist() == ["VIR-T1.1", "VIR-T1.2", "VIR-T1.3", "VIR-T1.4", "VIR-T1.5"]
    assert table["verdict"].tolist() == ["holds", "does not hold", "does not hold", "holds", "does not hold"]
    assert set(table["section"]) == {"vir-main"} and (table["seeds"] == 2).all()
    assert len(verdicts.comparisons(first)) == 3 * 6 + 4 * 6 + 4 * 2 + 3 + 4   # T1.1-T1.3, then one rival each for T1.4 and T1.5


def test_a_mixed_or_unfinished_artifact_is_never_judged(tmp_path):
    write_fake_vir_t1(tmp_path)
    (tmp_path / "VIR-T1.samples.csv").write_text("natural,defense,seed,index\nTrue,vir_at,0,1\n")  # a later run, killed
    out = verdicts.decide_artifact(tmp_path, "VIR-T1")
    assert [v.outcome for v in out] == ["not run"] * 5 and all("does not match" in v.why for v in out)
    (tmp_path / "VIR-T1.manifest.json").unlink()
    assert all("did not finish" in v.why for v in verdicts.decide_artifact(tmp_path, "VIR-T1"))


def test_decide_artifact_not_run_status(tmp_path):
    (tmp_path / "VIR-T1.json").write_text(json.dumps({"status": "not run", "reason": "needs 7 trained defenses"}))
    seal(tmp_path, "VIR-T1", {"data": "VIR-T1.json"})
    out = verdicts.decide_artifact(tmp_path, "VIR-T1")
    assert [v.outcome for v in out] == ["not run"] * 5 and all(v.why == "needs 7 trained defenses" for v in out)
    assert set(verdicts.claims_table(tmp_path)["verdict"]) == {"not run"}

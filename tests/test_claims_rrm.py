"""The RRM chapter's two claim rules on simulated data whose truth is known.

``noninferior``: a winner not worse than its rivals by more than a declared margin, on the same
images (paired flags drawn from a 2x2 table with an exact true difference). ``time_ratio``: one
method's median time over another's, from repeats drawn from log-normal timings with known
medians. Every outcome of each rule is reached; everything is seeded.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from advbook.analysis import claims, stats

CTX = claims.Context(profile="fast", dataset="cifar10", seeds=(0,))
Z95 = st.norm.ppf(0.975)


# ---------------------------------------------------------------------------------------------
# noninferior: paired flags with a known difference
# ---------------------------------------------------------------------------------------------

def rival_flags(rng, winner: np.ndarray, *, gap: float, accuracy: float, discordant: float) -> np.ndarray:
    """A rival's flags beside ``winner``'s (accuracy ``accuracy``): the winner alone is right on a
    share (discordant + gap) / 2 of the images, the rival alone on (discordant - gap) / 2, so the true
    difference winner minus rival is exactly ``gap`` (a share) and a share ``discordant`` disagree."""
    only_w, only_r = (discordant + gap) / 2, (discordant - gap) / 2
    u = rng.random(len(winner))
    return np.where(winner, u >= only_w / accuracy, u < only_r / (1 - accuracy))


def paired_frame(rng, n: int, gaps: dict, *, cells=("pgd",), seeds=(0,), accuracy: float = 0.6,
                 discordant: float = 0.3) -> pd.DataFrame:
    """Long per-sample rows (defense, evaluation, seed, index, robust): the winner ``W`` and one rival
    per key of ``gaps``; ``gaps[rival]`` is the true difference W minus rival in points, one number
    for every cell or a dict cell -> number."""
    rows = []
    for seed in seeds:
        for cell in cells:
            w = rng.random(n) < accuracy
            flags = {"W": w} | {r: rival_flags(rng, w, gap=(g[cell] if isinstance(g, dict) else g) / 100,
                                               accuracy=accuracy, discordant=discordant) for r, g in gaps.items()}
            rows += [pd.DataFrame({"defense": d, "evaluation": cell, "seed": seed, "index": np.arange(n),
                                   "robust": f}) for d, f in flags.items()]
    return pd.concat(rows, ignore_index=True)


def margin_claim(**extra) -> dict:
    return {"id": "SIM.n", "artifact": "RRM-T1", "statement": "W is not worse than its rivals by 5 points.",
            "rule": "noninferior", "unit": "defense", "winner": "W", "cells": ["evaluation"], "margin": 5.0} | extra


def shares(outcomes) -> dict[str, float]:
    counts = Counter(outcomes)
    return {k: counts[k] / len(outcomes) for k in claims.OUTCOMES}


def test_noninferiority_interval_and_p_are_agresti_min_by_hand():
    """98 images, 10 only the winner gets right, 6 only the rival: adding 1/2 to each cell gives the
    centre 4/100 and the standard error sqrt(17 - 16/100) / 100 (Agresti and Min 2005), so the 95%
    interval is 4 -/+ 1.96 * 4.1037 points and z = (0.04 + 0.05) / 0.041037 against a 5-point margin."""
    a = np.r_[np.ones(10, bool), np.zeros(6, bool), np.ones(40, bool), np.zeros(42, bool)]
    b = np.r_[np.zeros(10, bool), np.ones(6, bool), np.ones(40, bool), np.zeros(42, bool)]
    t = stats.noninferiority(a, b, margin=5.0)
    se = math.sqrt(16.84) / 100
    assert t.estimate == pytest.approx(400 / 98) and t.n == 98
    assert (t.low, t.high) == pytest.approx((4 - 100 * Z95 * se, 4 + 100 * Z95 * se), abs=1e-9)
    assert (t.low, t.high) == pytest.approx((-4.04302, 12.04302), abs=1e-5)
    assert t.p == pytest.approx(st.norm.sf(0.09 / se), rel=1e-12) and t.p == pytest.approx(0.0141477, abs=1e-7)
    assert t.detail == "10 images only A gets right, 6 only B"
    # the test and the interval agree: low > -margin exactly when the one-sided p < (1 - level) / 2
    for margin in np.linspace(0.5, 12, 47):
        t = stats.noninferiority(a, b, margin=margin)
        assert (t.low > -margin) == (t.p < 0.025), margin


def test_no_discordant_image_proves_no_margin():
    """10 images both models get right: the plain Wald interval of mcnemar is [0, 0] (it would
    "prove" any margin), the adjusted one keeps a half-width of 1.96 * 100 / 12 points."""
    same = np.ones(10, bool)
    wald = stats.mcnemar(same, same)
    assert (wald.low, wald.high) == (0.0, 0.0)
    t = stats.noninferiority(same, same, margin=5.0)
    assert (t.low, t.high) == pytest.approx((-100 * Z95 / 12, 100 * Z95 / 12))
    frame = pd.DataFrame({"defense": np.repeat(["W", "R"], 10), "evaluation": "pgd", "seed": 0,
                          "index": np.tile(np.arange(10), 2), "robust": True})
    v = claims.decide(margin_claim(), {"samples": frame}, CTX)
    assert v.outcome == "inconclusive", v.line()


def test_a_winner_equal_to_its_rival_holds_at_2000_images():
    """True difference 0, margin 5, 2,000 images of which 30% disagree: the interval's half-width is
    about 2.4 points, so "holds" in nearly every draw and "does not hold" in none."""
    outcomes = []
    for draw in range(100):
        frame = paired_frame(np.random.default_rng(40_000 + draw), 2000, {"R": 0.0})
        v = claims.decide(margin_claim(), {"samples": frame}, CTX)
        assert v.n == 2000 and v.level == 0.95
        outcomes.append(v.outcome)
    share = shares(outcomes)
    assert share["holds"] >= 0.95 and share["does not hold"] == 0, share


def test_a_winner_exactly_at_the_margin_rarely_holds():
    """True difference exactly -5 points against a margin of 5: H0 is true, so "holds" (low > -5)
    is a false claim of non-inferiority and must come out in at most the one-sided 2.5% (+ noise)."""
    outcomes = [claims.decide(margin_claim(), {"samples": paired_frame(np.random.default_rng(50_000 + d), 2000,
                                                                        {"R": -5.0})}, CTX).outcome
                for d in range(300)]
    share = shares(outcomes)
    assert share["holds"] <= 0.05 and share["inconclusive"] >= 0.9, share


def test_a_winner_fifteen_points_worse_does_not_hold():
    frame = paired_frame(np.random.default_rng(60), 2000, {"R": -15.0})
    v = claims.decide(margin_claim(), {"samples": frame}, CTX)
    assert v.outcome == "does not hold" and v.high < -5 and v.estimate == pytest.approx(-15, abs=3), v.line()
    assert v.statistic == "smallest difference of W (points)"
    assert v.why.startswith("Margin 5 points, fixed in advance: the interval lies below -5 points in 1 of 1")
    assert re.search(r"\[95% CI -\d+\.\d\d, -\d+\.\d\d\], p = ", v.line()), v.line()


def test_ten_images_are_inconclusive_with_a_sample_size():
    frame = paired_frame(np.random.default_rng(61), 10, {"R": 0.0})
    v = claims.decide(margin_claim(), {"samples": frame}, CTX)
    assert v.outcome == "inconclusive" and v.n == 10, v.line()
    m = re.search(r"about ([\d,]+) paired images \(now 10\) would put its interval (above|below) -5", v.why)
    assert m and int(m.group(1).replace(",", "")) > 10, v.why
    # two seeds pooled: the count is per seed, as the run's size is
    frame = paired_frame(np.random.default_rng(62), 10, {"R": 0.0}, seeds=(0, 1))
    v = claims.decide(margin_claim(), {"samples": frame}, claims.Context("fast", "cifar10", (0, 1)))
    assert v.outcome == "inconclusive" and v.n == 20
    assert re.search(r"about [\d,]+ paired images per seed \(2 seeds pooled\) \(now 10\)", v.why), v.why


def test_the_hint_is_a_normal_approximation_that_decides():
    """The hint assumes the observed difference and disagreement are the truth: drawing fresh data
    from exactly that truth at the size it names decides the claim (for it) in about 80% of draws,
    its power; at the current size the claim was not decided."""
    v = claims.decide(margin_claim(), {"samples": paired_frame(np.random.default_rng(63), 200, {"R": -2.0})}, CTX)
    assert v.outcome == "inconclusive", v.line()
    need = int(re.search(r"about ([\d,]+) paired images \(now 200\)", v.why).group(1).replace(",", ""))
    only_w, only_r = map(int, re.findall(r"\d+", v.comparisons[0]["detail"]))
    assert need > 200 and v.estimate == pytest.approx(100 * (only_w - only_r) / 200)
    outs = [claims.decide(margin_claim(), {"samples": paired_frame(
        np.random.default_rng(64_000 + d), need, {"R": v.estimate}, discordant=(only_w + only_r) / 200)}, CTX).outcome
        for d in range(150)]
    assert 0.68 <= shares(outs)["holds"] <= 0.92, shares(outs)


def test_several_cells_and_rivals_are_simultaneous_and_holm_adjusted():
    """2 evaluations x 2 rivals: each interval at 1 - 0.05/4, the p-values Holm-adjusted over the 4;
    one rival 15 points ahead under PGD makes the claim fail, and the verdict names that comparison."""
    frame = paired_frame(np.random.default_rng(65), 1500, {"R1": 0.0, "R2": {"natural": 1.0, "pgd": -15.0}},
                         cells=("natural", "pgd"))
    v = claims.decide(margin_claim(), {"samples": frame}, CTX)
    assert v.level == pytest.approx(1 - 0.05 / 4) and v.outcome == "does not hold", v.line()
    assert "[98.75% CI" in v.line()
    labels = [c["label"] for c in v.comparisons]
    assert labels == ["natural, W vs R1", "natural, W vs R2", "pgd, W vs R1", "pgd, W vs R2"]
    raw = []
    for c in v.comparisons:
        cell, pair = c["label"].split(", ")
        rival = pair.split(" vs ")[1]
        g = frame[frame.evaluation == cell].set_index(["seed", "index", "defense"])["robust"].unstack()
        t = stats.noninferiority(g["W"].to_numpy(), g[rival].to_numpy(), margin=5.0, level=1 - 0.05 / 4)
        assert (c["estimate"], c["low"], c["high"]) == pytest.approx((t.estimate, t.low, t.high))
        raw.append(t.p)
    assert [c["p"] for c in v.comparisons] == pytest.approx(stats.holm(raw))
    assert v.estimate == min(c["estimate"] for c in v.comparisons) and v.estimate < -10
    # without the losing comparison the rest holds
    v = claims.decide(margin_claim(rivals=["R1"]), {"samples": frame}, CTX)
    assert v.outcome == "holds" and len(v.comparisons) == 2 and v.level == pytest.approx(0.975), v.line()


@pytest.mark.parametrize("margin", [None, 0, -1.0, "5", True, math.nan])
def test_a_bad_margin_is_refused_before_any_work(margin):
    claim = {k: v for k, v in margin_claim(margin=margin).items() if not (k == "margin" and margin is None)}
    with pytest.raises(ValueError, match=r"^claim 'SIM.n': margin must be a number of points above 0, got "):
        claims.decide(claim, {}, CTX)     # no table at all: the claim is judged wrong first


def test_noninferior_needs_a_winner_and_says_what_was_not_run():
    with pytest.raises(ValueError, match=r"^claim 'SIM.n': noninferior needs a winner$"):
        claims.decide({k: v for k, v in margin_claim().items() if k != "winner"}, {}, CTX)
    frame = paired_frame(np.random.default_rng(66), 50, {"R": 0.0})
    assert claims.decide(margin_claim(), {}, CTX).why == "not run in this profile"
    assert claims.decide(margin_claim(winner="Z"), {"samples": frame}, CTX).why == "Z was not run in this profile"
    assert claims.decide(margin_claim(rivals=["Q"]), {"samples": frame}, CTX).why == \
        "none of the rivals was run in this profile"


# ---------------------------------------------------------------------------------------------
# time_ratio: log-normal timings with known medians
# ---------------------------------------------------------------------------------------------

def timings(rng, spec: dict[str, tuple[float, float]], *, repeats: int = 10) -> pd.DataFrame:
    """One row per (method, repeat): seconds drawn log-normal with median ``spec[m][0]`` and log-sd
    ``spec[m][1]``, so the true ratio of two methods' medians is the ratio of their first numbers."""
    return pd.DataFrame([{"method": m, "repeat": r, "seconds_per_run": med * math.exp(sd * rng.standard_normal())}
                         for m, (med, sd) in spec.items() for r in range(repeats)])


def ratio_claim(**extra) -> dict:
    claim = {"id": "SIM.t", "artifact": "RRM-T2", "statement": "The student trains in a tenth of the time.",
             "rule": "time_ratio", "numerator": "student", "denominator": "madry", "below": 0.5,
             "paired": False}   # the simulated timings below are independent draws, not interleaved rounds
    return {k: v for k, v in claim.items() if not (("between" in extra or "above" in extra) and k == "below")} | extra


def test_paired_rounds_cancel_a_load_shared_by_every_method():
    """Interleaved timing: a round slowed by another job slows every method by the same factor. The
    paired interval (the default) sees through it, the independent one cannot; both contain the truth."""
    load = np.exp(1.2 * np.random.default_rng(5).standard_normal(8))   # a common factor per round
    frame = pd.DataFrame([{"method": m, "repeat": r, "seconds_per_run": base * load[r] * (1 + 0.01 * (r % 3))}
                          for m, base in (("student", 1.0), ("madry", 4.0)) for r in range(8)])
    paired = claims.decide(ratio_claim(paired=True), {"timings": frame}, CTX)
    independent = claims.decide(ratio_claim(), {"timings": frame}, CTX)
    assert paired.outcome == "holds" and paired.high < 0.3 and paired.low <= 0.25 <= paired.high, paired.line()
    assert independent.outcome == "inconclusive" and independent.high > 0.5, independent.line()
    with pytest.raises(ValueError, match="paired must be true or false"):
        claims.decide(ratio_claim(paired="yes"), {"timings": frame}, CTX)


TIGHT = {"student": (1.0, 0.02), "teacher": (3.0, 0.02), "madry": (10.0, 0.02)}


def test_a_tenth_of_the_time_holds_below_half():
    frame = timings(np.random.default_rng(70), TIGHT)
    v = claims.decide(ratio_claim(), {"timings": frame}, CTX)
    by = frame.groupby("method")["seconds_per_run"].median()
    assert v.outcome == "holds" and v.estimate == pytest.approx(by["student"] / by["madry"]), v.line()
    assert v.low < v.estimate < v.high < 0.12 and v.n == 10 and math.isnan(v.p)
    assert "p =" not in v.line() and "p <" not in v.line()      # the decision is by the interval
    assert v.statistic == "ratio of median seconds_per_run (student / madry)"


def test_twice_the_time_does_not_hold():
    frame = timings(np.random.default_rng(71), {"student": (20.0, 0.05), "madry": (10.0, 0.05)})
    v = claims.decide(ratio_claim(), {"timings": frame}, CTX)
    assert v.outcome == "does not hold" and v.low > 0.5 and v.estimate == pytest.approx(2, rel=0.1), v.line()


def test_wildly_spread_repeats_are_inconclusive_with_a_count():
    frame = timings(np.random.default_rng(72), {"student": (4.0, 1.5), "madry": (10.0, 1.5)}, repeats=5)
    v = claims.decide(ratio_claim(), {"timings": frame}, CTX)
    assert v.outcome == "inconclusive" and v.low < 0.5 < v.high, v.line()
    m = re.search(r"About ([\d,]+) repeats of each method \(now 5\) would decide student / madry, "
                  r"(for|against) the claim, if the spread stays \(approximate", v.why)
    assert m and int(m.group(1).replace(",", "")) > 5, v.why


def test_add_sums_the_teacher_repeat_by_repeat():
    """The student's and the teacher's times are added per repeat: median of (1+9, 2+1, 9+2) = 10,
    not the sum of the medians (2 + 2); repeat 3, which the teacher lacks, is dropped."""
    frame = pd.DataFrame({"method": ["student"] * 4 + ["teacher"] * 3 + ["madry"] * 4,
                          "repeat": [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3],
                          "seconds_per_run": [1, 2, 9, 100, 9, 1, 2, 20, 20, 20, 20]})
    v = claims.decide(ratio_claim(add=["teacher"], below=0.9), {"timings": frame}, CTX)
    assert v.estimate == 0.5 and v.n == 3, v.line()
    assert [c["label"] for c in v.comparisons] == ["student + teacher / madry"]
    alone = claims.decide(ratio_claim(below=0.9), {"timings": frame}, CTX)
    assert alone.estimate == pytest.approx(5.5 / 20)      # median of 1, 2, 9, 100


def test_between_holds_fails_and_stays_open():
    frame = timings(np.random.default_rng(73), TIGHT)
    decide = lambda lo, hi: claims.decide(ratio_claim(between=[lo, hi]), {"timings": frame}, CTX)
    assert decide(0.05, 0.2).outcome == "holds"
    assert decide(0.5, 1.0).outcome == "does not hold" and decide(0.0, 0.05).outcome == "does not hold"
    v = decide(0.05, 0.1)                   # the true ratio sits on the upper edge
    assert v.outcome == "inconclusive" and "repeats of each method" in v.why, v.line()
    assert "Ratio claimed between 0.05 and 0.1, fixed in advance" in v.why


def test_above_holds_fails_and_stays_open():
    """``above``: the mirror of ``below`` (AGK-T4: a method takes more time than another)."""
    frame = timings(np.random.default_rng(76), TIGHT)          # true ratios: teacher / student 3, student / madry 0.1
    decide = lambda a, num, den: claims.decide(ratio_claim(above=a, numerator=num, denominator=den),
                                               {"timings": frame}, CTX)
    v = decide(2.0, "teacher", "student")
    assert v.outcome == "holds" and 2.0 < v.low < 3.0 < v.high, v.line()
    assert "Ratio claimed above 2, fixed in advance" in v.why
    assert decide(1.0, "student", "madry").outcome == "does not hold"
    open_ = decide(3.0, "teacher", "student")                # the truth on the edge
    assert open_.outcome == "inconclusive" and "repeats of each method" in open_.why, open_.line()


def test_a_missing_method_is_not_run_and_named():
    frame = timings(np.random.default_rng(74), TIGHT)
    v = claims.decide(ratio_claim(add=["ghost"], denominator=["madry", "trades"]), {"timings": frame}, CTX)
    assert v.outcome == "not run" and v.why == "ghost, trades were not timed in this run"
    assert claims.decide(ratio_claim(denominator="trades"), {"timings": frame}, CTX).why == \
        "trades was not timed in this run"
    assert claims.decide(ratio_claim(), {"samples": frame}, CTX).outcome == "not run"    # default table: timings
    assert claims.decide(ratio_claim(table="samples"), {"samples": frame}, CTX).outcome == "holds"
    assert claims.decide(ratio_claim(value="gpu_seconds"), {"timings": frame}, CTX).why == \
        "gpu_seconds was not measured in this run"


def test_one_repeat_is_inconclusive_not_a_crash():
    frame = timings(np.random.default_rng(75), TIGHT, repeats=1)
    v = claims.decide(ratio_claim(), {"timings": frame}, CTX)
    assert v.outcome == "inconclusive" and math.isnan(v.low) and v.n == 1, v.line()
    assert "Fewer than 2 repeats of student (1), madry (1): no interval." in v.why
    assert v.estimate == pytest.approx(frame.seconds_per_run[0] / frame.seconds_per_run[2])


def test_several_denominators_are_simultaneous_and_any_outside_fails():
    frame = timings(np.random.default_rng(76), TIGHT | {"fast_at": (1.5, 0.02)})
    v = claims.decide(ratio_claim(denominator=["madry", "fast_at"]), {"timings": frame}, CTX)
    assert v.level == 0.975 and len(v.comparisons) == 2 and v.outcome == "does not hold", v.line()
    assert v.statistic == "ratio of median seconds_per_run, least favourable of 2 (student / fast_at)"
    assert v.estimate == pytest.approx(2 / 3, rel=0.05)
    v = claims.decide(ratio_claim(denominator=["madry", "teacher"]), {"timings": frame}, CTX)
    assert v.outcome == "holds" and "student / teacher" in v.statistic


def test_time_ratio_is_seeded_and_reproducible():
    frame = timings(np.random.default_rng(77), {"student": (4.0, 0.3), "madry": (10.0, 0.3)})
    a = claims.decide(ratio_claim(), {"timings": frame}, CTX)
    assert claims.decide(ratio_claim(), {"timings": frame}, CTX) == a
    b = claims.decide(ratio_claim(seed=1), {"timings": frame}, CTX)
    assert b.estimate == a.estimate and (b.low, b.high) != (a.low, a.high)
    wider = claims.decide(ratio_claim(denominator=["madry", "madry"]), {"timings": frame}, CTX)
    assert wider.low <= a.low and wider.high >= a.high       # 97.5% intervals hold the 95% one


def test_ratio_of_medians_covers_the_true_ratio():
    """20 repeats each, log-sd 0.3: the 95% percentile interval covers the true ratio of medians 0.4
    in about 95% of draws (97.5% in 400 draws; a bootstrap of medians at this size is not exact:
    0.88 to 0.99 is accepted)."""
    rng = np.random.default_rng(78)
    covered = []
    for _ in range(200):
        student, madry = 4 * np.exp(0.3 * rng.standard_normal(20)), 10 * np.exp(0.3 * rng.standard_normal(20))
        t = stats.ratio_of_medians(student, madry, n_resamples=1000, seed=int(rng.integers(1 << 30)))
        covered.append(t.low <= 0.4 <= t.high)
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)


@pytest.mark.parametrize("extra, message", [
    ({"between": [0.1, 0.3], "below": 0.5}, "time_ratio needs exactly one of below, above, between; got below, between"),
    ({"below": None}, "below must be a ratio above 0, got None"),
    ({"below": 0}, "below must be a ratio above 0, got 0"),
    ({"above": -1}, "above must be a ratio above 0, got -1"),
    ({"between": [0.3, 0.1]}, r"between must be \[low, high\] with 0 <= low < high, got \[0.3, 0.1\]"),
    ({"between": [0.1]}, r"between must be \[low, high\] with 0 <= low < high, got \[0.1\]"),
    ({"denominator": []}, r"denominator must be a method name or a list of them, got \[\]"),
    ({"add": [3]}, r"add must be a method name or a list of them, got \[3\]"),
    ({"n_resamples": 0}, "n_resamples must be an integer of at least 1, got 0"),
    ({"seed": 1.5}, "seed must be an integer of at least 0, got 1.5"),
])
def test_time_ratio_refuses_bad_settings_in_one_line(extra, message):
    with pytest.raises(ValueError, match=rf"^claim 'SIM.t': {message}$"):
        claims.decide(ratio_claim(**extra), {}, CTX)      # no table at all: the claim is judged wrong first
    neither = {k: v for k, v in ratio_claim().items() if k != "below"}
    with pytest.raises(ValueError, match=r"^claim 'SIM.t': time_ratio needs exactly one of below, above, between; "
                                         r"got neither$"):
        claims.decide(neither, {}, CTX)


def test_time_ratio_refuses_two_rows_for_one_repeat():
    frame = timings(np.random.default_rng(79), TIGHT, repeats=3)
    with pytest.raises(ValueError, match=r"several rows for one repeat of a method \(\{'method': 'student'"):
        claims.decide(ratio_claim(), {"timings": pd.concat([frame, frame.iloc[:1]])}, CTX)

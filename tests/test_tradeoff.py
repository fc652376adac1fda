"""LEC-T1, the trade-off: the gap_trend rule on simulated flags with a known truth, its point
estimate by hand, and a tiny end-to-end run of tradeoff_models and tradeoff_flags on the synthetic
set (shapes, booleans per image, a rerun served bit-identically from the cache)."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as st

from advbook.analysis import claims, stats
from advbook.evaluation import tradeoff

CTX = claims.Context(profile="cpu", dataset="cifar10", seeds=(0,))
EPS = 4 / 255
SMALL, LARGE = 500, 2000


# ---------------------------------------------------------------------------------------------
# Simulated flags: four models (standard and AT at two sizes) on the same test images
# ---------------------------------------------------------------------------------------------

def simulated(rng, images: int, accuracy: dict[tuple[int, float], float], *, shared: float = 0.5,
              robust: dict[tuple[int, float], float] | None = None) -> pd.DataFrame:
    """A flags frame as tradeoff_flags writes it. Every model is right where a latent
    ``sqrt(shared) * difficulty + sqrt(1 - shared) * noise`` clears the threshold that makes its
    accuracy exactly ``accuracy[(n, train_eps)]``; the difficulty is shared, so the models err on
    the same hard images, as real ones do. ``robust`` adds PGD flags (robust only where clean)."""
    difficulty = rng.standard_normal(images)
    parts = []
    for (n, eps), acc in accuracy.items():
        latent = math.sqrt(shared) * difficulty + math.sqrt(1 - shared) * rng.standard_normal(images)
        clean = latent > st.norm.ppf(1 - acc)
        parts.append(pd.DataFrame({"n": n, "train_eps": eps, "eval_eps": 0.0, "evaluation": "natural",
                                   "index": np.arange(images), "correct": clean}))
        if robust and (n, eps) in robust:   # robust: the share robust/acc of the clean-correct, hardest lost first
            keep = latent > st.norm.ppf(1 - robust[(n, eps)])
            parts.append(pd.DataFrame({"n": n, "train_eps": eps, "eval_eps": eps, "evaluation": "pgd",
                                       "index": np.arange(images), "correct": clean & keep}))
    return pd.concat(parts, ignore_index=True)


def truth(gap_small: float, gap_large: float) -> dict[tuple[int, float], float]:
    """Accuracies with standard-error gaps (AT minus standard, in points) at the two sizes."""
    return {(SMALL, 0.0): 0.60, (SMALL, EPS): 0.60 - gap_small / 100,
            (LARGE, 0.0): 0.75, (LARGE, EPS): 0.75 - gap_large / 100}


def claim(**extra) -> dict:
    return {"id": "SIM.T1", "artifact": "LEC-T1", "statement": "The gap shrinks as the training set grows.",
            "rule": "gap_trend", "table": "flags", "n_resamples": 1000} | extra


def outcomes(seed: int, draws: int, images: int, accuracy, **extra) -> Counter:
    rng = np.random.default_rng(seed)
    return Counter(claims.decide(claim(**extra), {"flags": simulated(rng, images, accuracy)}, CTX).outcome
                   for _ in range(draws))


# ---------------------------------------------------------------------------------------------
# gap_trend on a known truth
# ---------------------------------------------------------------------------------------------

def test_a_gap_shrinking_by_ten_points_is_found():
    """Gap 15 points at n=500, 5 at n=2000, 2,000 test images: "holds" in at least 90 of 100 draws."""
    counts = outcomes(1, 100, 2000, truth(15, 5))
    assert counts["holds"] >= 90, counts
    assert counts["does not hold"] == 0, counts


def test_a_constant_gap_rarely_holds():
    """Gap 10 points at both sizes (the claim is false): "holds" in at most 5% of 100 draws plus
    Monte Carlo error (2.5% expected: one side of a 95% interval); "does not hold" as rarely."""
    counts = outcomes(2, 100, 2000, truth(10, 10))
    assert counts["holds"] <= 7 and counts["does not hold"] <= 7, counts
    assert counts["inconclusive"] >= 86, counts


def test_a_growing_gap_does_not_hold():
    """Gap 5 points at n=500, 15 at n=2000: "does not hold" in at least 90 of 100 draws, never "holds"."""
    counts = outcomes(3, 100, 2000, truth(5, 15))
    assert counts["does not hold"] >= 90 and counts["holds"] == 0, counts


def shrink_per_image(flags: pd.DataFrame) -> np.ndarray:
    """(standard - AT at n=500) - (standard - AT at n=2000) per image, in points."""
    wide = flags.pivot_table(index="index", columns=["n", "train_eps"], values="correct").astype(float)
    return 100 * ((wide[(SMALL, 0.0)] - wide[(SMALL, EPS)]) - (wide[(LARGE, 0.0)] - wide[(LARGE, EPS)])).to_numpy()


def test_the_sample_size_gives_the_power_it_promises():
    """The images mean_sample_size asks for, for a true 4-point shrink and the per-image spread of
    the simulated models, find it ("holds") in about 80% of 100 draws."""
    accuracy = truth(8, 4)
    sd = float(np.std(shrink_per_image(simulated(np.random.default_rng(4), 50_000, accuracy)), ddof=1))
    need = stats.mean_sample_size(difference=4.0, sd=sd)
    assert 500 < need < 5000, need
    counts = outcomes(5, 100, need, accuracy)
    assert 65 <= counts["holds"] <= 93, (need, counts)


def test_an_inconclusive_verdict_says_how_many_images_would_decide_it():
    """The hint is mean_sample_size at the verdict's own estimate and per-image spread."""
    flags = simulated(np.random.default_rng(9), 400, truth(8, 4))
    v = claims.decide(claim(), {"flags": flags}, CTX)
    assert v.outcome == "inconclusive", v.line()
    d = shrink_per_image(flags)
    assert v.estimate == pytest.approx(d.mean())
    need = stats.mean_sample_size(difference=v.estimate, sd=float(np.std(d, ddof=1)))
    assert f"about {need:,} test images (now 400)" in v.why, v.why


def test_the_estimate_is_the_hand_computed_difference_in_differences():
    """Four images. n=500: standard right on 3, AT on 1 (gap 75 - 25 = 50 points); n=2000: standard
    right on 4, AT on 3 (gap 25 - 0 = 25): the shrink is 25 points, and gap_table says the same."""
    flags = pd.DataFrame([
        *[{"n": SMALL, "train_eps": 0.0, "index": i, "correct": c} for i, c in enumerate([1, 1, 1, 0])],
        *[{"n": SMALL, "train_eps": EPS, "index": i, "correct": c} for i, c in enumerate([1, 0, 0, 0])],
        *[{"n": LARGE, "train_eps": 0.0, "index": i, "correct": c} for i, c in enumerate([1, 1, 1, 1])],
        *[{"n": LARGE, "train_eps": EPS, "index": i, "correct": c} for i, c in enumerate([1, 1, 1, 0])],
    ]).assign(eval_eps=0.0, evaluation="natural").astype({"correct": bool})
    v = claims.decide(claim(), {"flags": flags}, CTX)
    assert v.estimate == pytest.approx(25.0) and v.n == 4
    assert "gap +50.0 at n = 500, +25.0 at n = 2000" in v.why
    table = tradeoff.gap_table(flags).set_index("n")
    assert table.loc[SMALL, ["std_err_standard", "std_err_at", "gap"]].tolist() == pytest.approx([25, 75, 50])
    assert table.loc[LARGE, ["std_err_standard", "std_err_at", "gap"]].tolist() == pytest.approx([0, 25, 25])
    assert table["rob_err_at"].isna().all()


def test_the_robust_gap_is_the_at_models_robust_minus_clean_error():
    """gap = "robust": the AT model's error under PGD at its eps minus its clean error; by hand on a
    simulated frame, against gap_table's rob_minus_std."""
    rng = np.random.default_rng(6)
    flags = simulated(rng, 1000, truth(10, 5), robust={(SMALL, EPS): 0.2, (LARGE, EPS): 0.4})
    v = claims.decide(claim(gap="robust"), {"flags": flags}, CTX)
    table = tradeoff.gap_table(flags).set_index("n")
    assert v.estimate == pytest.approx(table.loc[SMALL, "rob_minus_std"] - table.loc[LARGE, "rob_minus_std"])
    assert table.loc[SMALL, "rob_minus_std"] == pytest.approx(table.loc[SMALL, "rob_err_at"]
                                                              - table.loc[SMALL, "std_err_at"])
    standard = claims.decide(claim(), {"flags": flags}, CTX)
    assert standard.estimate == pytest.approx(table.loc[SMALL, "gap"] - table.loc[LARGE, "gap"])


def test_several_eps_need_every_one_and_widen_the_intervals():
    """Two budgets, one with a shrinking gap and one without: not "holds"; Bonferroni level 97.5%,
    Holm p-values, one comparison per eps. With both shrinking: holds."""
    rng = np.random.default_rng(7)
    e2 = 2 / 255
    mixed = pd.concat([simulated(rng, 2000, truth(15, 5)),
                       simulated(rng, 2000, {(SMALL, e2): 0.5, (LARGE, e2): 0.65}).query("train_eps > 0")])
    v = claims.decide(claim(), {"flags": mixed}, CTX)
    assert v.outcome != "holds" and v.level == pytest.approx(0.975) and len(v.comparisons) == 2
    one = claims.decide(claim(eps=EPS), {"flags": mixed}, CTX)
    assert one.outcome == "holds" and one.level == pytest.approx(0.95) and len(one.comparisons) == 1
    both = pd.concat([simulated(rng, 2000, truth(15, 5)),
                      simulated(rng, 2000, {(SMALL, e2): 0.45, (LARGE, e2): 0.70}).query("train_eps > 0")])
    assert claims.decide(claim(eps=[EPS, e2]), {"flags": both}, CTX).outcome == "holds"


def test_what_was_not_run_is_said_and_bad_settings_fail():
    flags = simulated(np.random.default_rng(8), 100, truth(10, 5))
    assert claims.decide(claim(large=50000), {"flags": flags}, CTX).outcome == "not run"
    assert "eps 0.0313725" in claims.decide(claim(eps=8 / 255), {"flags": flags}, CTX).why
    assert claims.decide(claim(), {}, CTX).outcome == "not run"
    with pytest.raises(ValueError, match="unknown gap 'clean'; valid: standard, robust"):
        claims.decide(claim(gap="clean"), {"flags": flags}, CTX)
    with pytest.raises(ValueError, match="small must be below large"):
        claims.decide(claim(small=LARGE, large=SMALL), {"flags": flags}, CTX)
    assert "gap_trend" in claims.RULES


def test_mean_sample_size_closed_form():
    """((z_0.975 + z_0.8) * sd / d)^2, rounded up: 7.849 * (0.5 / 0.1)^2 = 196.2 -> 197."""
    assert stats.mean_sample_size(difference=0.1, sd=0.5) == 197
    assert stats.mean_sample_size(difference=-0.1, sd=0.5) == 197
    assert stats.mean_sample_size(difference=0.0, sd=0.5) == -1


# ---------------------------------------------------------------------------------------------
# The library on the synthetic set
# ---------------------------------------------------------------------------------------------

def test_subsets_are_nested_and_balanced(synth):
    subsets = tradeoff.training_subsets(synth.train.labels, sizes=[200, 40, 80], seed=0)
    assert list(subsets) == [40, 80, 200]
    assert set(subsets[40].tolist()) < set(subsets[80].tolist()) < set(subsets[200].tolist())
    assert all(torch.bincount(synth.train.labels[i]).tolist() == [n // 4] * 4 for n, i in subsets.items())
    with pytest.raises(ValueError, match="multiples of the 4 classes"):
        tradeoff.training_subsets(synth.train.labels, sizes=[30], seed=0)


def test_configs_take_equal_steps_and_a_step_proportional_to_eps():
    params = dict(epochs=3, batch_size=50, lr=0.05, weight_decay=5e-4, at_steps=4)
    small = tradeoff.tradeoff_config(params, n=500, largest=2000, eps=8 / 255)
    assert small.objective == "pgd_at" and small.epochs == 12
    assert small.hyper.step_size == pytest.approx(2.5 * (8 / 255) / 4) and small.hyper.steps == 4
    standard = tradeoff.tradeoff_config(params, n=2000, largest=2000, eps=0.0)
    assert standard.objective == "standard" and standard.epochs == 3


def test_models_and_flags_end_to_end_and_from_the_cache(synth, fresh_cache):
    params = dict(model="tiny_cnn", epochs=1, batch_size=20, lr=0.05, weight_decay=5e-4, at_steps=2, seed=0)
    run = dict(dataset=synth, sizes=[40, 80], eps_list=[8 / 255], params=params, seed=0, device="cpu")
    seen = []
    models = tradeoff.tradeoff_models(**run, on_model=seen.append)
    assert sorted(models) == [(40, 0.0), (40, 8 / 255), (80, 0.0), (80, 8 / 255)] and len(seen) == 4
    assert not any(m.from_cache for m in models.values())
    assert models[(40, 0.0)].meta["n_train"] == 40 and models[(40, 0.0)].meta["config"]["epochs"] == 2
    index = torch.arange(40)
    x, y = synth.test.images[index].float() / 255, synth.test.labels[index]
    evals = dict(x=x, y=y, index=index, eval_eps_list=[4 / 255, 8 / 255], steps=2, batch_size=25)
    flags = tradeoff.tradeoff_flags(models, **evals)
    assert list(flags.columns) == list(tradeoff.FLAG_COLUMNS) and flags["correct"].dtype == bool
    # every model: natural, PGD at 4/255 and at 8/255 (the AT model's own budget counted once), 40 images each
    assert len(flags) == 4 * 3 * 40
    assert (flags.groupby(["n", "train_eps", "evaluation", "eval_eps"]).size() == 40).all()
    wide = flags.pivot_table(index=["n", "train_eps", "index"], columns=["evaluation", "eval_eps"], values="correct")
    assert (wide[("pgd", 8 / 255)] <= wide[("natural", 0.0)]).all()   # only clean-correct images are robust
    table = tradeoff.gap_table(flags)
    assert table[["n", "eps", "images"]].values.tolist() == [[40, 8 / 255, 40], [80, 8 / 255, 40]]
    clean = tradeoff.tradeoff_flags(models, x=x, y=y, index=index, own_eps=False)   # no attack at all
    assert (clean["evaluation"] == "natural").all() and len(clean) == 4 * 40
    pd.testing.assert_frame_equal(clean, flags[flags["evaluation"] == "natural"].reset_index(drop=True))
    again = tradeoff.tradeoff_models(**run)
    assert all(m.from_cache for m in again.values())
    for key, m in models.items():
        a, b = m.model.state_dict(), again[key].model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(tradeoff.tradeoff_flags(again, **evals), flags)
    with pytest.raises(ValueError, match="eps_list must hold budgets > 0"):
        tradeoff.tradeoff_models(**{**run, "eps_list": [0.0]})

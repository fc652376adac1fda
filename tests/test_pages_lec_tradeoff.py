"""LEC-T1's page (notebooks/15_lec_tradeoff.ipynb): its profiles pass the schema; the helpers it calls
(robust_flags attacks exactly what the page shows, label_models' ranks, gap_summary and accuracy_grid
by hand, training_summary's equal steps); its claims decide both ways on labelled frames and say
"not run" where a profile has one budget; the figure's panels and labels; WRN-40-2's size."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from advbook.analysis import claims
from advbook.book import experiment, plots, plots_lec_tradeoff as tplots, verdicts
from advbook.book.param import ParameterError
from advbook.evaluation import tradeoff

E2, E4 = 2 / 255, 4 / 255
CTX = claims.Context(profile="cpu", dataset="cifar10", seeds=(0,))


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_profile_passes_the_schema_and_fits_the_page(profile):
    p = experiment.resolve("lec_tradeoff", profile=profile)
    assert all(n % 10 == 0 for n in p["sizes"]) and max(p["sizes"]) <= 50000 and len(p["sizes"]) >= 2
    assert p["n_pgd"] <= p["n_clean"] and p["n_clean"] % 10 == 0 and p["n_pgd"] % 10 == 0
    assert len(p["train_eps"]) >= 2   # LEC-T1.2 compares the smallest and the largest training eps
    assert all(any(math.isclose(e, g) for g in p["eval_eps"]) for e in p["train_eps"])   # ringed in panel (a)


def test_a_bad_override_names_the_parameter_and_its_range():
    with pytest.raises(ParameterError, match=r"train_eps=.*out of range \[1e-06, 1\]"):
        experiment.resolve("lec_tradeoff", profile="cpu", overrides={"train_eps": "4/255,300/255"})
    assert experiment.resolve("lec_tradeoff", profile="cpu", overrides={"train_eps": "1/255,4/255"})["train_eps"] \
        == [1 / 255, 4 / 255]


# ---------------------------------------------------------------------------------------------
# Frames by hand
# ---------------------------------------------------------------------------------------------

def rows(n, train_eps, flags, *, evaluation="natural", eval_eps=0.0):
    return [{"n": n, "train_eps": train_eps, "eval_eps": eval_eps, "evaluation": evaluation, "index": i,
             "correct": bool(c)} for i, c in enumerate(flags)]


def test_label_models_ranks_budgets_and_sizes():
    flags = pd.DataFrame(rows(100, 0.0, [1]) + rows(100, E2, [1]) + rows(100, 3 / 255, [1]) + rows(100, E4, [1])
                         + rows(300, E4, [1]) + rows(200, E4, [1]))
    out = tradeoff.label_models(flags)
    assert out["model"].tolist() == ["standard", "AT 2/255", "AT 3/255", "AT 4/255", "AT 4/255", "AT 4/255"]
    assert out["budget"].tolist() == ["standard", "smallest eps", "middle eps", "largest eps", "largest eps",
                                      "largest eps"]
    assert out["size"].tolist() == ["smallest n", "smallest n", "smallest n", "smallest n", "largest n", "middle n"]
    assert list(out.columns[:6]) == list(tradeoff.FLAG_COLUMNS) and "model" not in flags   # a copy
    alone = tradeoff.label_models(pd.DataFrame(rows(100, 0.0, [1]) + rows(100, E4, [1])))
    assert alone["budget"].tolist() == ["standard", "only eps"] and alone["size"].tolist() == ["only n", "only n"]
    assert tradeoff.eps_label(0.5 / 255) == "0.5/255" and tradeoff.eps_label(8 / 255) == "8/255"


def hand_frames():
    """Four clean test images at n = 100 and 200, and on the first two of them PGD at 4/255.
    Clean errors: standard 25 / 0 %, AT 75 / 25 %: gaps 50 and 25 points. PGD subset (images 0, 1):
    AT at n = 100 right on image 0 only, robust on none: clean error 50, robust 100, gap 50; at
    n = 200 right on both, robust on image 0: clean 0, robust 50, gap 50."""
    clean = pd.DataFrame(rows(100, 0.0, [1, 1, 1, 0]) + rows(100, E4, [1, 0, 0, 0])
                         + rows(200, 0.0, [1, 1, 1, 1]) + rows(200, E4, [1, 1, 1, 0]))
    robust = pd.DataFrame(rows(100, 0.0, [1, 1]) + rows(100, E4, [1, 0]) + rows(100, E4, [0, 0], evaluation="pgd",
                                                                                  eval_eps=E4)
                          + rows(200, 0.0, [1, 1]) + rows(200, E4, [1, 1]) + rows(200, E4, [1, 0], evaluation="pgd",
                                                                                  eval_eps=E4)
                          + rows(200, 0.0, [0, 0], evaluation="pgd", eval_eps=E4))
    return clean, robust


def test_gap_summary_puts_both_gaps_of_a_size_and_eps_in_one_row():
    clean, robust = hand_frames()
    s = tradeoff.gap_summary(clean, robust).set_index("n")
    assert list(s.index) == [100, 200] and s["eps_255"].tolist() == pytest.approx([4, 4])
    assert s[["clean_images", "pgd_images"]].values.tolist() == [[4, 2], [4, 2]]
    assert s["std_err_standard"].tolist() == pytest.approx([25, 0]) and s["std_err_at"].tolist() == pytest.approx([75, 25])
    assert s["gap"].tolist() == pytest.approx([50, 25])
    assert s["std_err_at_pgd"].tolist() == pytest.approx([50, 0]) and s["rob_err_at"].tolist() == pytest.approx([100, 50])
    assert s["rob_minus_std"].tolist() == pytest.approx([50, 50])


def test_accuracy_grid_is_the_largest_sets_clean_and_pgd_accuracy():
    _, robust = hand_frames()
    grid = tradeoff.accuracy_grid(robust)
    assert list(grid.index) == ["standard", "AT 4/255"] and list(grid.columns) == ["clean", "PGD 4/255", "images"]
    assert grid.loc["standard"].tolist() == pytest.approx([100, 0, 2])
    assert grid.loc["AT 4/255"].tolist() == pytest.approx([100, 50, 2])


# ---------------------------------------------------------------------------------------------
# The claims of LEC-T1 on labelled frames
# ---------------------------------------------------------------------------------------------

def simulated(rng, images, accuracy, *, shared=0.5):
    """Clean flags of models with exact accuracies, erring on shared hard images (as in test_tradeoff)."""
    from scipy import stats as st

    difficulty = rng.standard_normal(images)
    parts = []
    for (n, eps), acc in accuracy.items():
        latent = math.sqrt(shared) * difficulty + math.sqrt(1 - shared) * rng.standard_normal(images)
        parts.append(pd.DataFrame(rows(n, eps, latent > st.norm.ppf(1 - acc))))
    return tradeoff.label_models(pd.concat(parts, ignore_index=True))


def decide(claim_id, frame):
    claim = next(c for c in verdicts.load_claims("LEC-T1") if c["id"] == claim_id)
    return claims.decide(claim, {"samples": frame, "pgd": frame}, CTX)


def test_the_claims_are_the_four_of_the_page():
    found = verdicts.load_claims("LEC-T1")
    assert [c["id"] for c in found] == ["LEC-T1.1", "LEC-T1.2", "LEC-T1.3", "LEC-T1.4"]
    assert {c["rule"] for c in found} <= set(claims.RULES)


def test_a_larger_eps_costing_clean_accuracy_is_found_and_its_reverse_refuted():
    rng = np.random.default_rng(0)
    costs = {(500, 0.0): 0.6, (500, E2): 0.55, (500, E4): 0.5, (2000, 0.0): 0.75, (2000, E2): 0.72, (2000, E4): 0.64}
    v = decide("LEC-T1.2", simulated(rng, 3000, costs))
    assert v.outcome == "holds" and v.n == 3000 and v.estimate == pytest.approx(8, abs=2.5)
    helps = {**costs, (2000, E4): 0.80}
    assert decide("LEC-T1.2", simulated(rng, 3000, helps)).outcome == "does not hold"
    one = simulated(rng, 300, {(500, 0.0): 0.6, (500, E4): 0.5, (2000, 0.0): 0.7, (2000, E4): 0.6})
    assert decide("LEC-T1.2", one).outcome == "not run"


def test_the_standard_model_must_win_at_every_size_and_eps():
    rng = np.random.default_rng(1)
    acc = {(500, 0.0): 0.6, (500, E2): 0.5, (500, E4): 0.45, (2000, 0.0): 0.75, (2000, E2): 0.65, (2000, E4): 0.6}
    v = decide("LEC-T1.4", simulated(rng, 3000, acc))
    assert v.outcome == "holds" and len(v.comparisons) == 4   # 2 sizes x 2 AT models
    level = decide("LEC-T1.4", simulated(rng, 3000, {**acc, (2000, E2): 0.75}))
    assert level.outcome != "holds" and len(level.comparisons) == 4


def test_the_gap_claim_reads_the_clean_table():
    rng = np.random.default_rng(2)
    shrinking = {(500, 0.0): 0.6, (500, E2): 0.5, (500, E4): 0.45, (2000, 0.0): 0.75, (2000, E2): 0.73,
                 (2000, E4): 0.72}
    assert decide("LEC-T1.1", simulated(rng, 3000, shrinking)).outcome == "holds"


# ---------------------------------------------------------------------------------------------
# The library on the synthetic set: what robust_flags attacks, what training_summary says
# ---------------------------------------------------------------------------------------------

def test_robust_flags_attack_only_what_the_page_shows(synth, fresh_cache):
    params = dict(model="tiny_cnn", epochs=1, batch_size=20, lr=0.05, weight_decay=5e-4, at_steps=1, seed=0)
    models = tradeoff.tradeoff_models(dataset=synth, sizes=[40, 80], eps_list=[E4, 8 / 255], params=params, seed=0,
                                      device="cpu")
    summary = tradeoff.training_summary(models)
    assert summary[["n", "model", "epochs", "steps"]].values.tolist() == [
        [40, "standard", 2, 4], [40, "AT 4/255", 2, 4], [40, "AT 8/255", 2, 4],
        [80, "standard", 1, 4], [80, "AT 4/255", 1, 4], [80, "AT 8/255", 1, 4]]
    assert not summary["from cache"].any()
    index = torch.arange(30)
    x, y = synth.test.images[index].float() / 255, synth.test.labels[index]
    flags = tradeoff.robust_flags(models, x=x, y=y, index=index, eval_eps_list=[2 / 255, E4], steps=1, batch_size=16)
    cells = flags.groupby(["n", "train_eps", "evaluation", "eval_eps"]).size()
    assert (cells == 30).all() and not flags.duplicated(["n", "train_eps", "evaluation", "eval_eps", "index"]).any()
    got = sorted((n, round(255 * t), ev, round(255 * e)) for n, t, ev, e in cells.index)
    assert got == sorted([   # the largest set: every model at 2/255, 4/255 and its own eps; the rest: AT at own eps
        (80, 0, "natural", 0), (80, 0, "pgd", 2), (80, 0, "pgd", 4),
        (80, 4, "natural", 0), (80, 4, "pgd", 2), (80, 4, "pgd", 4),
        (80, 8, "natural", 0), (80, 8, "pgd", 8), (80, 8, "pgd", 2), (80, 8, "pgd", 4),
        (40, 0, "natural", 0), (40, 4, "natural", 0), (40, 4, "pgd", 4), (40, 8, "natural", 0), (40, 8, "pgd", 8)])
    table = tradeoff.gap_table(flags)
    assert table["rob_minus_std"].notna().all() and (table["rob_minus_std"] >= 0).all()
    with pytest.raises(ValueError, match="models is empty"):
        tradeoff.robust_flags({}, x=x, y=y, index=index, eval_eps_list=[E4])


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------

def test_the_figure_has_the_three_panels_and_the_papers_axis():
    clean, robust = hand_frames()
    fig = tplots.tradeoff_figure(tradeoff.accuracy_table(robust), tradeoff.gap_summary(clean, robust), title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    a, b, c = fig.axes
    assert a.get_xlabel().startswith("PGD budget") and a.get_ylabel() == "accuracy (%)"
    assert b.get_ylabel() == "Std Err(AT) − Std Err(Std) (%)" and b.get_xscale() == "log"
    assert c.get_ylabel() == "Rob Err(AT) − Std Err(AT) (%)" and "lecture" in c.get_title()
    assert [t.get_text() for t in b.get_legend().get_texts()] == ["ε = 4/255"]
    assert [t.get_text() for t in a.get_legend().get_texts()] == ["standard", "AT 4/255"]
    np.testing.assert_allclose(b.lines[0].get_ydata(), [50, 25])
    np.testing.assert_allclose(a.lines[0].get_ydata(), [100, 0])   # standard: clean, then PGD at 4/255
    texts = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels())]
    assert min(t.get_fontsize() for t in texts) >= plots.MIN_FONT
    assert fig.get_figwidth() <= plots.COLUMN_INCHES
    assert "LEC-T1" in plots.FIGURES and plots.FIGURES["LEC-T1"] == tplots.FIGURES["LEC-T1"]
    with pytest.raises(ValueError, match="unknown gap column 'clean'; valid: gap, rob_minus_std"):
        tplots.gap_panel(b, tradeoff.gap_summary(clean, robust), column="clean", colours={0.0: "black"})


def test_wrn40_2_has_the_papers_2_2_million_parameters():
    from advbook.models import build_model

    model = build_model("wrn40_2", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert sum(p.numel() for p in model.parameters()) == 2_243_546   # Zagoruyko & Komodakis: WRN-40-2, 2.2M

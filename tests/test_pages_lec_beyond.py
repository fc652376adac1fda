"""The LEC page on attacks beyond L_p and white-box access (LEC-F9, LEC-F10): advbook.analysis.lec_beyond's
per-image tables against the attacks they run (flow, colour, ZOO, OPT's search, Square), the nested ZOO
trace against zoo_gradient at every budget, the claims rule median_threshold on simulated truths,
the figures and the page's profiles."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from advbook.analysis import claims, lec_beyond
from advbook.attacks import boundary, colour, flow, square_trace, zoo
from advbook.attacks.core import margin
from advbook.book import experiment, plots, plots_lec_beyond
from advbook.evaluation import evaluate
from conftest import Counting   # with the smooth_net fixture, shared by the LEC black-box tests


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than a parallel region on a loaded machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)




# ---------------------------------------------------------------- the claims rule median_threshold

CTX = claims.Context(profile="test", dataset="synthetic", seeds=(0,))


def median_claim(direction="above", threshold=1.0, **extra):
    return {"id": "T.1", "artifact": "LEC-F9", "statement": "s", "rule": "median_threshold", "value": "v",
            "direction": direction, "threshold": threshold, **extra}


def test_median_test_interval_is_the_order_statistics_the_binomial_gives_and_covers_at_small_n():
    from advbook.analysis import stats

    assert math.isnan(stats.median_test([1, 2, 3, 4, 5], threshold=0).low)          # [min, max] covers 93.75 %
    six = stats.median_test([6, 1, 5, 2, 4, 3], threshold=0.5)
    assert (six.low, six.high, six.estimate, six.n) == (1.0, 6.0, 3.5, 6)            # [min, max] covers 96.9 %
    assert six.p == pytest.approx(2 / 2 ** 6) and six.detail == "6 above and 0 below 0.5"
    twenty = stats.median_test(np.arange(1.0, 21.0), threshold=100)
    assert (twenty.low, twenty.high) == (6.0, 15.0)          # P(B <= 5) = 0.0207 <= 0.025 < P(B <= 6), n = 20
    rng = np.random.default_rng(1)
    covered = [(t.low <= math.log(2) <= t.high) for t in
               (stats.median_test(rng.exponential(size=12), threshold=1.0) for _ in range(400))]
    assert np.mean(covered) >= 0.94                          # exact: >= 95 % for any continuous distribution


def test_median_threshold_holds_fails_and_stays_open_as_the_truth_says():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"v": rng.normal(1.0, 0.1, 400)})   # true median 1
    decide = lambda c: claims.decide(c, {"samples": frame}, CTX)  # noqa: E731
    assert decide(median_claim("above", 0.9)).outcome == "holds"
    assert decide(median_claim("above", 1.1)).outcome == "does not hold"
    assert decide(median_claim("below", 1.1)).outcome == "holds"
    assert decide(median_claim("below", 0.9)).outcome == "does not hold"
    assert decide(median_claim("above", 1.0)).outcome == "inconclusive"
    v = decide(median_claim("above", 0.9, label="my value"))
    assert v.statistic == "median my value" and v.n == 400 and v.low < np.median(frame.v) < v.high and v.p < 1e-4
    assert v.why.startswith("threshold 0.9 (above) fixed in advance; ") and " above and " in v.why


def test_median_threshold_keeps_its_rows_drops_non_finite_values_and_says_when_nothing_is_left():
    frame = pd.DataFrame({"v": [5.0, 6.0, 7.0, np.inf, 8.0, 9.0, 10.0, 0.0, 0.1],
                          "keep": [True] * 7 + [False] * 2})
    v = claims.decide(median_claim("above", 1.0, where={"keep": True}), {"samples": frame}, CTX)
    assert v.estimate == 7.5 and v.n == 6 and v.outcome == "holds"
    none = claims.decide(median_claim(where={"keep": "never"}, empty="the full budget was not run"),
                         {"samples": frame}, CTX)
    assert none.outcome == "not run" and none.why == "the full budget was not run"
    missing = claims.decide(median_claim(value="w"), {"samples": frame}, CTX)
    assert missing.outcome == "not run" and missing.why == "w was not measured in this run"
    few = claims.decide(median_claim(), {"samples": frame.iloc[:5]}, CTX)
    assert few.outcome == "inconclusive" and few.why == ("too few values for a 95% interval of the median (n = 4; "
                                                         "at least 6 are needed).")
    with pytest.raises(ValueError, match=r"^claim 'T.1': direction must be one of: above, below; got 'over'$"):
        claims.decide(median_claim("over"), {"samples": frame}, CTX)


def test_the_pages_claims_use_known_rules_and_columns_the_page_writes():
    from advbook.book import verdicts

    written = {"LEC-F9": {"samples": {"natural", "flow", "colour", "flow_fooled", "flow_linf"}},
               "LEC-F10": {"samples": {"natural", "square", "model"}, "zoo": {"cosine", "estimator", "full"},
                           "boundary": {"ratio", "success_random", "success_gradient"}}}
    found = [c for c in verdicts.load_claims() if c["id"].startswith(("LEC-F9.", "LEC-F10."))]
    assert len(found) == 7
    for c in found:
        assert c["rule"] in claims.RULES
        columns = written[c["artifact"]][c.get("table", "samples")]
        if "view" not in c:
            assert {c["value"], *c.get("where", {})} <= columns, c["id"]
        else:
            assert {c.get("a"), c.get("b"), c.get("winner"), *c.get("rivals", [])} - {None} <= columns | {"at", "standard"}


# ---------------------------------------------------------------- test images

def test_test_images_are_balanced_nested_and_drawn_below_one_per_class(synth):
    idx, x, y = lec_beyond.test_images(synth, n=8, seed=3, device="cpu")
    assert torch.equal(torch.bincount(y, minlength=4), torch.full((4,), 2)) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and torch.equal(idx, idx.sort().values)
    small, _, _ = lec_beyond.test_images(synth, n=4, seed=3, device="cpu")
    assert set(small.tolist()) <= set(idx.tolist())
    few, _, y_few = lec_beyond.test_images(synth, n=3, seed=3, device="cpu")
    assert len(few) == 3 and len(set(y_few.tolist())) == 3 and set(few.tolist()) <= set(small.tolist())
    with pytest.raises(ValueError, match=r"^n must be >= 1, got 0$"):
        lec_beyond.test_images(synth, n=0, seed=3, device="cpu")


# ---------------------------------------------------------------- LEC-F9: flow and colour

def test_nonlp_samples_flags_and_sizes_are_those_of_the_returned_attacks(smooth_net):
    net, x, _ = smooth_net
    y = (net(x).argmax(1) + torch.tensor([0, 1] * 6)) % 4        # half of the labels the model gets wrong
    idx = torch.arange(100, 112)
    samples, fr, cr = lec_beyond.nonlp_samples(net, x, y, index=idx, seed=7, batch_size=5,
                                           flow_settings=dict(tau=5e-4, steps=20, lr=0.05),
                                           colour_settings=dict(eps=0.1, steps=10))
    with torch.no_grad():
        after_flow, after_colour = net(fr.x_adv).argmax(1), net(cr.x_adv).argmax(1)
    assert samples["index"].tolist() == idx.tolist() and (samples["seed"] == 7).all()
    assert samples["natural"].tolist() == (net(x).argmax(1) == y).tolist()
    assert samples["flow"].tolist() == (after_flow == y).tolist()
    assert samples["colour"].tolist() == (after_colour == y).tolist()
    assert (samples["flow_fooled"] == (samples["natural"] & ~samples["flow"])).all()
    np.testing.assert_allclose(samples["flow_loss"], flow.flow_loss(fr.flow).numpy(), rtol=1e-6)
    np.testing.assert_allclose(samples["flow_linf"], (fr.x_adv - x).flatten(1).abs().amax(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(samples["flow_shift_max"], fr.flow.norm(dim=1).flatten(1).amax(1).numpy(), rtol=1e-6)
    assert samples["colour_linf"].max() <= 0.1 + 1e-6 and samples["flow_fooled"].any()
    whole, fr1, _ = lec_beyond.nonlp_samples(net, x, y, index=idx, seed=7, batch_size=12,
                                         flow_settings=dict(tau=5e-4, steps=20, lr=0.05),
                                         colour_settings=dict(eps=0.1, steps=10))
    torch.testing.assert_close(fr1.flow, fr.flow)       # Adam: each image on its own, whatever the batch
    summary = lec_beyond.nonlp_summary(samples)
    flow_row = summary.set_index("attack").loc["flow"]
    assert flow_row["fooled"] == samples["flow_fooled"].sum() and flow_row["clean_correct"] == samples["natural"].sum()
    assert flow_row["success_pct"] == pytest.approx(100 * flow_row["fooled"] / flow_row["clean_correct"])
    assert flow_row["linf_median_255"] == pytest.approx(255 * samples.loc[samples.flow_fooled, "flow_linf"].median())
    assert math.isnan(summary.set_index("attack").loc["colour", "flow_loss_mean"])


def test_nonlp_samples_wants_an_eval_model(smooth_net):
    net, x, y = smooth_net
    net.train()
    try:
        with pytest.raises(ValueError, match=r"^the model must be in eval mode"):
            lec_beyond.nonlp_samples(net, x, y, index=torch.arange(12), seed=0, flow_settings={}, colour_settings={})
    finally:
        net.eval()


def test_example_rows_take_images_both_attacks_fooled_first():
    samples = pd.DataFrame({"flow_fooled": [False, True, True, True, False],
                            "colour_fooled": [True, False, True, True, False]})
    assert plots_lec_beyond.example_rows(samples, n=2) == [2, 3]
    assert plots_lec_beyond.example_rows(samples, n=4) == [2, 3, 1, 0]


# ---------------------------------------------------------------- LEC-F10 (1): the nested ZOO trace

def quadratic(n: int = 3, d: int = 12):
    """f_i(x) = 1/2 x_i^T A x_i + b . x_i per sample, float64, and its exact gradient A x + b."""
    g = torch.Generator().manual_seed(3)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    a, b = m @ m.T, torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.rand(n, 3, 2, 2, generator=g, dtype=torch.float64)

    def loss_fn(batch, *, repeat):
        z = batch.flatten(1)
        return 0.5 * ((z @ a) * z).sum(1) + z @ b
    return loss_fn, x, (x.flatten(1) @ a + b).view_as(x)


@pytest.mark.parametrize("estimator", ["coordinate", "gaussian"])
def test_zoo_trace_is_zoo_gradient_at_every_budget_for_the_cost_of_the_largest(estimator):
    loss_fn, x, grad = quadratic()
    seen = []

    def counting(batch, *, repeat):
        seen.append(len(batch))
        return loss_fn(batch, repeat=repeat)

    budgets = [2, 6, 10, 24]
    trace = lec_beyond.zoo_trace(counting, x, h=1e-3, budgets=budgets, generator=torch.Generator().manual_seed(5),
                             estimator=estimator, max_batch=8)
    assert sum(seen) == budgets[-1] * len(x)
    for est, q in zip(trace, budgets):
        alone, _ = zoo.zoo_gradient(loss_fn, x, h=1e-3, queries=q, generator=torch.Generator().manual_seed(5),
                                    estimator=estimator)
        torch.testing.assert_close(est, alone, rtol=1e-12, atol=1e-12)
    if estimator == "coordinate":                      # all 12 coordinates: the exact gradient of a quadratic
        torch.testing.assert_close(trace[-1], grad, rtol=1e-9, atol=1e-9)


def test_zoo_trace_bad_budgets_fail_in_one_line():
    loss_fn, x, _ = quadratic()
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"^budgets must be increasing even numbers >= 2 \(two queries per "
                                         r"coordinate or direction\), got \[4, 3\]$"):
        lec_beyond.zoo_trace(loss_fn, x, h=1e-3, budgets=[4, 3], generator=g)
    with pytest.raises(ValueError, match=r"^unknown estimator 'spsa'; valid: coordinate, gaussian$"):
        lec_beyond.zoo_trace(loss_fn, x, h=1e-3, budgets=[4], generator=g, estimator="spsa")


def test_zoo_cosines_recover_the_gradient_with_every_coordinate_on_a_smooth_net(smooth_net):
    net, x, _ = smooth_net
    xs, d = x[:4], x[0].numel()
    rows = lec_beyond.zoo_cosines(net, xs, index=torch.arange(10, 14), seed=0, budgets=[8, 64, 2 * d], h=1e-3,
                              estimators=["coordinate", "gaussian"])
    assert len(rows) == 2 * 3 * 4 and set(rows.columns) >= {"estimator", "queries", "index", "cosine", "full"}
    assert rows.loc[rows.full, "queries"].eq(2 * d).all() and rows.full.sum() == 8
    full = rows[(rows.estimator == "coordinate") & rows.full]
    assert (full["cosine"] > 0.999).all()
    med = rows.groupby(["estimator", "queries"])["cosine"].median()
    assert med["coordinate"].is_monotonic_increasing and med["gaussian"].iloc[-1] > med["gaussian"].iloc[0]
    with pytest.raises(ValueError, match=rf"^the coordinate estimator has {d} coordinates per sample "
                                         rf"\(queries <= {2 * d}\), got budgets up to {2 * d + 2}$"):
        lec_beyond.zoo_cosines(net, xs, index=torch.arange(4), seed=0, budgets=[2 * d + 2], h=1e-3,
                           estimators=["gaussian", "coordinate"])


# ---------------------------------------------------------------- LEC-F10 (2): the hard-label search

def test_boundary_samples_are_hard_label_attack_direction_by_direction(smooth_net):
    net, x, pred = smooth_net
    search = dict(step=0.25, tol=1e-3, max_distance=6.0)
    counted = Counting(net).eval()
    per_image, per_direction = lec_beyond.boundary_samples(counted, x, index=torch.arange(12), seed=4, directions=5,
                                                       max_batch=24, **search)   # two directions per call
    attack = boundary.hard_label_attack(net, x, pred, directions=5, seed=4, **search)
    assert per_image["success_random"].tolist() == attack.success.tolist()
    assert per_image["queries_random"].tolist() == attack.queries.tolist()
    assert per_image["first_direction"].tolist() == attack.steps.tolist()
    np.testing.assert_allclose(per_image["l2_random"], attack.l2.numpy(), rtol=1e-6)
    assert per_image.loc[per_image.success_random, "adv_fooled"].all() and attack.success.any()
    best = per_direction.groupby("index")["distance"].min()
    np.testing.assert_allclose(per_image["dist_random"], best.to_numpy())
    assert (per_direction.groupby("index")["queries"].sum().to_numpy() == per_image["queries_random"]).all()
    along = boundary.boundary_distance(net, x, pred, direction=-gradient_of_margin(net, x, pred), **search)
    np.testing.assert_allclose(per_image["dist_gradient"], along.distance.numpy())
    assert per_image["queries_gradient"].tolist() == along.queries.tolist()
    both = per_image.success_random & per_image.success_gradient
    np.testing.assert_allclose(per_image.loc[both, "ratio"], (per_image.dist_random / per_image.dist_gradient)[both])
    assert per_image.loc[~both, "ratio"].isna().all()
    # one forward for the predictions, one for the gradient, the searches, one to read the attack back
    assert counted.rows == 12 * 3 + per_image["queries_random"].sum() + per_image["queries_gradient"].sum()


def gradient_of_margin(net, x, pred):
    xr = x.clone().requires_grad_(True)
    return torch.autograd.grad(margin(net(xr), pred).sum(), xr)[0]


def test_boundary_along_the_gradient_of_a_two_class_affine_model_is_its_closed_form(affine):
    """Logits (0, w.x + c): the margin of class 0 is -(w.x + c), its gradient -w; along w the label
    changes at distance (w.x + c ... = margin) / |w| exactly."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(48, generator=g)
    x = 0.5 + 0.01 * torch.randn(6, 3, 4, 4, generator=g)
    model = affine(torch.stack([torch.zeros_like(w), w]), torch.tensor([0.0, -0.5 * w.sum().item() - 0.3])).eval()
    pred = model(x).argmax(1)
    assert (pred == 0).all()
    per_image, _ = lec_beyond.boundary_samples(model, x, index=torch.arange(6), seed=0, directions=2, step=0.05,
                                           tol=1e-4, max_distance=2.0)
    exact = margin(model(x), pred) / w.norm()
    assert ((per_image["dist_gradient"] - exact.detach().numpy()) >= -1e-5).all()
    assert ((per_image["dist_gradient"] - exact.detach().numpy()) <= 1e-4 + 1e-6).all()


# ---------------------------------------------------------------- LEC-F10 (3): Square

def test_square_samples_are_square_trace_per_model(smooth_net):
    net, x, pred = smooth_net
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4)).eval()
    torch.manual_seed(1)
    y = pred.clone()
    y[:3] = (y[:3] + 1) % 4                                          # three clean mistakes
    per_image, trace = lec_beyond.square_samples({"standard": net, "at": other}, x, y, index=torch.arange(12), seed=0,
                                             eps=0.1, budgets=[2, 10])
    assert per_image.groupby("model").size().to_dict() == {"at": 12, "standard": 12}
    assert len(trace) == 2 * 2 * 12
    std = per_image[per_image.model == "standard"]
    reference = square_trace.square_trace(net, x, y, eps=0.1, budgets=[2, 10], seed=0)
    assert std["square"].tolist() == (~reference.success[-1]).tolist()
    assert std["square"].tolist() == evaluate._square(net, x, y, eps=0.1, n_queries=10, seed=0).tolist()
    assert std["natural"].tolist() == (net(x).argmax(1) == y).tolist() and not std["natural"][:3].any()
    summary = lec_beyond.blackbox_summary(pd.DataFrame({"estimator": ["coordinate"], "queries": [2], "cosine": [0.5]}),
                                      pd.DataFrame({"success_random": [True, False], "success_gradient": [True, True],
                                                    "dist_random": [2.0, np.inf], "dist_gradient": [1.0, 3.0],
                                                    "queries_random": [10, 20], "queries_gradient": [5, 7]}),
                                      per_image, trace)
    acc = summary[(summary.panel == "square") & (summary.series == "standard")].set_index("x")["value"]
    assert acc[0] == pytest.approx(100 * std["natural"].mean())
    assert acc[10] == pytest.approx(100 * std["square"].mean())
    dist = summary[(summary.panel == "boundary") & (summary.statistic == "median distance (L2)")]
    assert dist.set_index("series")["value"].to_dict() == {"random": 2.0, "gradient": 2.0}


# ---------------------------------------------------------------- figures and profiles

def test_the_figures_draw_and_say_what_they_show(smooth_net):
    net, x, y = smooth_net
    samples, fr, cr = lec_beyond.nonlp_samples(net, x, y, index=torch.arange(12), seed=0,
                                           flow_settings=dict(tau=5e-4, steps=3, lr=0.05),
                                           colour_settings=dict(eps=0.1, steps=3))
    fig = plots_lec_beyond.nonlp_examples(x, fr, cr, samples, classes=list("abcd"), n_examples=2, title="t")
    assert len(fig.axes) == 10 and "amplified ×" in fig._suptitle.get_text()
    assert fig.get_size_inches()[0] <= plots.COLUMN_INCHES
    assert {"LEC-F9", "LEC-F10"} <= set(plots.FIGURES)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])   # gpu: HOL pages only so far
def test_the_profiles_settings_are_valid_for_the_attacks(profile):
    params = experiment.resolve("lec_beyond", profile=profile)
    settings = lec_beyond.settings(params)
    assert lec_beyond._check_budgets(settings["zoo"]["budgets"]) == params["zoo_budgets"]
    assert max(params["zoo_budgets"]) <= 2 * 3 * 32 * 32            # CIFAR-10's 2 d: the coordinate estimator's cap
    assert params["square_budgets"] == sorted(set(params["square_budgets"]))
    assert params["flow_optimizer"] in flow.OPTIMIZERS
    assert experiment.resolve("vir_main", profile=profile)["dataset"] == "cifar10"

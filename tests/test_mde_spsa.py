"""MD / MDE and SPSA: closed forms on a linear model, schedules, bounds and seeds."""
from __future__ import annotations

import math

import pytest
import torch

from advbook.evaluation import evaluate
from advbook.attacks import mde
from advbook.attacks import spsa

EPS = 8 / 255


@pytest.fixture(scope="module")
def linear():
    """A linear 5-class model on 3x4x4 inputs, with inputs in [0, 1] and labels it gets right."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(400, 3, 4, 4)
    y = model(x).argmax(1)
    return model, x, y


def closed_form_robust(model, x, y, eps):
    """Robust iff for every other class j the minimum of z_y - z_j over the feasible box
    [max(0, x - eps), min(1, x + eps)] is positive: each coordinate sits at the end of its
    interval that lowers (w_y - w_j) . x."""
    w, b = model[1].weight, model[1].bias
    lo, hi = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    robust = torch.ones(len(x), dtype=torch.bool)
    for j in range(w.shape[0]):
        d = w[y] - w[j]                       # (N, 48)
        worst = torch.where(d > 0, lo, hi)
        m = (d * worst).sum(1) + b[y] - b[j]
        robust &= (m > 0) | (y == j)
    return robust


def test_the_step_schedule_follows_the_reference():
    sizes = mde.step_sizes(eps=EPS, steps=50, change_point=20)
    assert len(sizes) == 50 and min(sizes) > 0
    assert sizes[0] == pytest.approx(EPS * (1 + math.cos(-math.pi / 30)))   # k = -1: about 2 eps
    assert sizes[21] == pytest.approx(2 * EPS)                              # restarts after the change point
    assert sizes[20] == pytest.approx(EPS * (1 + math.cos(19 * math.pi / 30)))
    assert sizes[49] < sizes[21] and sizes[19] < sizes[1]
    with pytest.raises(ValueError, match="change_point must be in \\(0, steps=10\\), got 10"):
        mde.step_sizes(eps=EPS, steps=10, change_point=10)


def test_md_multi_target_matches_the_closed_form_on_a_linear_model(linear):
    model, x, y = linear
    eps = 0.05
    expected = closed_form_robust(model, x, y, eps)
    assert 0.2 < expected.float().mean() < 0.8  # a budget that splits the set
    got = evaluate._mde(model, x, y, eps=eps, parts=["mdmt"], steps=20, change_point=8, n_targets=4)
    assert torch.equal(got, expected)
    untargeted = mde.md_attack(model, x, y, eps=eps, steps=20, change_point=8)
    assert not (expected & ~untargeted).any()  # no attack breaks a provably robust sample


def test_md_targets_skip_the_true_class_and_rank_by_logit(linear):
    model, x, y = linear
    t = mde.md_targets(model, x[:20], y[:20], n_targets=4)
    assert t.shape == (20, 4) and not (t == y[:20, None]).any()
    logits = model(x[:20])
    assert (logits.gather(1, t).diff(dim=1) <= 0).all()
    with pytest.raises(ValueError, match="n_targets must be in \\[1, 4\\], got 5"):
        mde.md_targets(model, x, y, n_targets=5)


def test_spsa_gradient_estimates_the_true_gradient_on_a_linear_model(linear):
    model, x, y = linear
    xs, ys = x[:8], y[:8]
    g = torch.Generator().manual_seed(0)
    est = spsa.spsa_gradient(lambda b, *, repeat: spsa.margin(model(b), ys.repeat(repeat)), xs, delta=1e-3,
                             samples=4000, generator=g)
    xr = xs.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(spsa.margin(model(xr), ys).sum(), xr)
    cos = torch.nn.functional.cosine_similarity(est.flatten(1), true.flatten(1))
    assert (cos > 0.95).all(), cos


def test_spsa_breaks_what_the_closed_form_allows_and_nothing_else(linear):
    model, x, y = linear
    eps = 0.05
    expected = closed_form_robust(model, x, y, eps)
    got = spsa.spsa_attack(model, x, y, eps=eps, steps=60, samples=32, lr=0.01, seed=0)
    assert not (expected & ~got).any()
    breakable = ~expected
    assert (~got & breakable).sum() >= 0.9 * breakable.sum()
    again = spsa.spsa_attack(model, x, y, eps=eps, steps=60, samples=32, lr=0.01, seed=0)
    assert torch.equal(got, again)


def test_the_suite_runs_spsa_and_mde_within_the_natural_flags(tiny_model, test_batch):
    x, _, y = test_batch
    res = evaluate.evaluate(tiny_model, x, y, attacks={
        "pgd": dict(eps=EPS, step_size=2 / 255, steps=10),
        "spsa": dict(eps=EPS, steps=10, samples=16),
        "mde": dict(eps=EPS, parts=["md", "mdmt"], steps=10, change_point=4, n_targets=2)})
    r = res.robust
    assert not (r["spsa"] & ~r["natural"]).any() and not (r["mde"] & ~r["natural"]).any()
    acc = res.accuracy()
    assert acc["mde"] < acc["natural"] and acc["spsa"] < acc["natural"]

"""Attacks: budgets, ranges, closed forms on affine models, reference agreement with foolbox."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from advbook import attacks
from advbook.attacks import threats


def binary_affine(affine, w: torch.Tensor, margin: float):
    """Two logits, f1 - f0 = w.x + c, with c set so that f1 - f0 = -margin at x = 0.5."""
    d = w.numel()
    weight = torch.stack([torch.zeros(d), w])
    c = -margin - 0.5 * w.sum().item()
    return affine(weight, torch.tensor([0.0, c]))


@pytest.fixture
def half():
    return torch.full((1, 3, 4, 4), 0.5)


def test_pgd_linf_steps_to_flip_matches_closed_form(affine, half):
    torch.manual_seed(0)
    w = torch.randn(48)
    s = 0.002
    margin = 3.5 * s * w.abs().sum().item()  # flips during step 4: -m + t s |w|_1 > 0 first at t = 4
    model = binary_affine(affine, w, margin)
    res = attacks.pgd(model, half, torch.tensor([0]), norm="linf", eps=0.1, step_size=s, steps=20)
    assert res.success.item() and res.steps.item() == 4
    expected = half + 4 * s * w.sign().view_as(half)
    torch.testing.assert_close(res.x_adv, expected)
    assert res.linf.item() == pytest.approx(4 * s, rel=1e-5)
    assert res.l2.item() == pytest.approx(4 * s * math.sqrt(48), rel=1e-5)


def test_pgd_l2_steps_to_flip_matches_closed_form(affine, half):
    torch.manual_seed(1)
    w = torch.randn(48)
    s = 0.01
    margin = 6.5 * s * w.norm().item()
    model = binary_affine(affine, w, margin)
    res = attacks.pgd(model, half, torch.tensor([0]), norm="l2", eps=1.0, step_size=s, steps=20)
    assert res.steps.item() == 7
    assert res.l2.item() == pytest.approx(7 * s, rel=1e-4)


def test_pgd_budget_too_small_never_flips_and_stays_in_ball(affine, half):
    w = torch.ones(48)
    model = binary_affine(affine, w, margin=1.0)  # needs linf >= 1/48 ~ 0.021
    res = attacks.pgd(model, half, torch.tensor([0]), norm="linf", eps=0.01, step_size=0.004, steps=30)
    assert not res.success.item() and res.steps.item() == -1
    assert res.linf.item() <= 0.01 + 1e-7


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_ball_and_image_range(tiny_model, test_batch, norm, random_start):
    x, pred, _ = test_batch
    eps = 8 / 255 if norm == "linf" else 0.5
    res = attacks.pgd(tiny_model, x, pred, norm=norm, eps=eps, step_size=eps / 4, steps=10,
                      random_start=random_start, stop_on_success=False)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    size = res.linf if norm == "linf" else res.l2
    assert (size <= eps + 1e-5).all()
    assert ((res.steps == -1) | (res.steps <= 10)).all()


def test_a_wrong_sample_counts_as_flipped_at_step_zero_and_pgd_lowers_accuracy(tiny_model, test_batch):
    x, _, labels = test_batch
    with torch.no_grad():
        correct = tiny_model(x).argmax(1) == labels
    assert 0.5 < correct.float().mean() < 1  # the fixture model learned something, and gets some wrong
    res = attacks.pgd(tiny_model, x, labels, eps=8 / 255, step_size=2 / 255, steps=10, stop_on_success=False)
    assert (res.steps[~correct] == 0).all() and (res.steps[correct] != 0).all()
    assert (~res.success).float().mean() < correct.float().mean()


def test_pgd_fixed_seed_is_deterministic(tiny_model, test_batch):
    x, pred, _ = test_batch
    kw = dict(eps=8 / 255, step_size=1 / 255, steps=5, random_start=True, stop_on_success=False)
    a = attacks.pgd(tiny_model, x, pred, seed=3, **kw)
    b = attacks.pgd(tiny_model, x, pred, seed=3, **kw)
    c = attacks.pgd(tiny_model, x, pred, seed=4, **kw)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.steps, b.steps)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_pgd_stop_on_success_freezes_at_first_flip(tiny_model, test_batch):
    x, pred, _ = test_batch
    kw = dict(eps=16 / 255, step_size=1 / 255, steps=16)
    frozen = attacks.pgd(tiny_model, x, pred, stop_on_success=True, **kw)
    full = attacks.pgd(tiny_model, x, pred, stop_on_success=False, **kw)
    assert torch.equal(frozen.steps, full.steps)  # same path, same first flip
    flipped = frozen.steps > 0
    assert flipped.any()
    # a frozen sample took exactly `steps` steps of 1/255: its linf is at most steps/255
    assert (frozen.linf[flipped] <= frozen.steps[flipped] / 255 + 1e-6).all()
    assert (frozen.l2[flipped] <= full.l2[flipped] + 1e-6).all()


def test_deepfool_binary_affine_closed_form(affine, half):
    torch.manual_seed(2)
    w = torch.randn(48)
    margin = 0.3
    model = binary_affine(affine, w, margin)
    res = attacks.deepfool(model, half, torch.tensor([0]), steps=10, overshoot=0.02)
    dist = margin / w.norm().item()
    assert res.success.item() and res.steps.item() == 1
    assert res.l2.item() == pytest.approx(1.02 * (dist + 1e-4), rel=1e-4)


def test_deepfool_multiclass_affine_finds_the_nearest_boundary(affine):
    torch.manual_seed(3)
    n, d, k = 16, 48, 6
    weight, bias = torch.randn(k, d), torch.randn(k) * 0.1
    model = affine(weight, bias)
    x = 0.5 + 0.01 * torch.randn(n, 3, 4, 4)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    # exact distance from a point inside a convex polyhedron to its boundary: the nearest face
    fy = logits.gather(1, y[:, None])
    gaps = (fy - logits) / (weight[y][:, None, :] - weight[None]).norm(dim=2)
    gaps[torch.arange(n), y] = float("inf")
    exact = gaps.min(dim=1).values
    assert (exact < 0.4).all()  # near enough that clipping to [0, 1] never matters
    res = attacks.deepfool(model, x, y, steps=10, overshoot=0.0)
    assert res.success.all() and (res.steps == 1).all()
    torch.testing.assert_close(res.l2, exact + 1e-4, rtol=1e-3, atol=1e-5)


def test_deepfool_agrees_with_foolbox(tiny_model, test_batch):
    fb = pytest.importorskip("foolbox")
    x, pred, _ = test_batch
    ours = attacks.deepfool(tiny_model, x, pred, steps=50, overshoot=0.02)
    fmodel = fb.PyTorchModel(tiny_model, bounds=(0, 1))
    raw, _, success = fb.attacks.L2DeepFoolAttack(steps=50, candidates=None, overshoot=0.02)(
        fmodel, x, pred, epsilons=None)
    theirs = (raw - x).flatten(1).norm(dim=1)
    assert torch.equal(ours.success, success)
    rel = ((ours.l2 - theirs).abs() / theirs.clamp_min(1e-8))[success]
    assert rel.max().item() < 1e-3, rel.max().item()


def test_pgd_agrees_with_foolbox(tiny_model, test_batch):
    fb = pytest.importorskip("foolbox")
    x, _, labels = test_batch
    eps, s, steps = 8 / 255, 2 / 255, 7
    ours = attacks.pgd(tiny_model, x, labels, eps=eps, step_size=s, steps=steps, stop_on_success=False)
    fmodel = fb.PyTorchModel(tiny_model, bounds=(0, 1))
    _, clipped, success = fb.attacks.LinfPGD(abs_stepsize=s, steps=steps, random_start=False)(
        fmodel, x, labels, epsilons=eps)
    torch.testing.assert_close(ours.x_adv, clipped, atol=1e-6, rtol=0)
    assert torch.equal(ours.success, success)


def test_attack_rejects_inputs_outside_unit_range(tiny_model, test_batch):
    x, pred, _ = test_batch
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\]"):
        attacks.pgd(tiny_model, x * 255, pred, eps=0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\]"):
        attacks.deepfool(tiny_model, x - 1, pred)


def test_unknown_names_list_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown threat model 'l3'; valid: linf, l2"):
        threats.get_threat("l3", eps=0.1, step_size=0.01)
    with pytest.raises(ValueError, match=r"unknown attack 'cw'; valid: pgd, deepfool"):
        attacks.get_attack("cw")


def test_bad_budget_and_shapes_fail_before_work(tiny_model, test_batch):
    x, pred, _ = test_batch
    with pytest.raises(ValueError, match="eps must be > 0"):
        attacks.pgd(tiny_model, x, pred, eps=0, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, ...\) and y of shape \(N,\)"):
        attacks.pgd(tiny_model, x, pred[:3], eps=0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match=r"candidates must be in \[2, 4\]"):
        attacks.deepfool(tiny_model, x, pred, candidates=7)


def test_run_batched_equals_one_batch(tiny_model, test_batch):
    x, pred, _ = test_batch
    one = attacks.deepfool(tiny_model, x, pred, steps=20)
    many = attacks.run_batched(attacks.deepfool, tiny_model, x, pred, batch_size=10, steps=20)
    assert torch.equal(one.steps, many.steps)
    torch.testing.assert_close(one.l2, many.l2, rtol=1e-4, atol=1e-6)


def test_threat_projection_is_idempotent_and_within_ball():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 4, 4, generator=g)
    for name, eps in (("linf", 0.05), ("l2", 0.3)):
        t = threats.get_threat(name, eps=eps, step_size=0.01)
        far = (x + torch.randn(x.shape, generator=g)).clamp(0, 1)
        p = t.project(far, x=x)
        torch.testing.assert_close(t.project(p, x=x), p)
        size = (p - x).flatten(1).abs().amax(1) if name == "linf" else (p - x).flatten(1).norm(dim=1)
        assert (size <= eps + 1e-6).all()
        start = t.init(x, generator=g)
        assert start.min() >= 0 and start.max() <= 1
        size = (start - x).flatten(1).abs().amax(1) if name == "linf" else (start - x).flatten(1).norm(dim=1)
        assert (size <= eps + 1e-6).all()


def test_same_shaped_arguments_are_taken_by_name(affine, half):
    """sign_ascent's start and a threat's clean input or gradient are keyword-only: each has the shape
    of the tensor beside it, and a swap would centre the ball (or step) on the wrong one."""
    model = binary_affine(affine, torch.ones(48), margin=1.0)
    y = torch.tensor([0])
    start = (half + 0.01).clamp(0, 1)
    kw = dict(objective=lambda logits: logits[:, 1].sum(), eps=0.05, step_size=0.01, steps=3)
    with pytest.raises(TypeError):
        attacks.sign_ascent(model, half, start, **kw)
    out = attacks.sign_ascent(model, half, x_start=start, **kw)
    assert (out - half).abs().max() <= 0.05 + 1e-7                     # projected around x, not the start
    torch.testing.assert_close(out, half + 0.04)                        # 0.01 + 3 steps of 0.01 upwards
    t = threats.get_threat("linf", eps=0.05, step_size=0.01)
    with pytest.raises(TypeError):
        t.project(start, half)
    with pytest.raises(TypeError):
        t.step(half, torch.ones_like(half))
    assert attacks.pgd(model, half, y, eps=0.05, step_size=0.01, steps=2).x_adv.shape == half.shape

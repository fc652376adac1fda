"""The AGK chapter's baselines (training/agk_baselines.py): Bilateral AT, Feature Scattering, CAT-CE and
CAT-MIX, and the loop's run-level state that keeps CAT's per-sample budgets across epochs and resumes."""
from __future__ import annotations

import copy
import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from advbook import data
from advbook.attacks.core import linf_start
from advbook.core import cache
from advbook.models import build_model
from advbook.training import agk_baselines as agk
from advbook.training import objectives, train
from advbook.training.framework import StepContext
from advbook.training.registry import OBJECTIVES

INDEX = torch.arange(0, 400, 4)  # 100 synthetic training images: 25 per class


@pytest.fixture(scope="module")
def batch(synth):
    x = data.to_float(synth.train.images[:32]).contiguous(memory_format=torch.channels_last)
    return x, synth.train.labels[:32]


def net(synth, seed=0):
    torch.manual_seed(seed)
    return build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std)


def run_objective(synth, batch, name, *, seed, **settings):
    """The objective's ``(loss, logits, record)`` on the batch for a fresh train-mode net, and an untouched
    copy of that net (the objective's train-mode pass moves the batch-norm statistics)."""
    model = net(synth).train()
    copied = copy.deepcopy(model)
    cfg = train.TrainConfig.build(name, **settings)
    return OBJECTIVES[name].loss(model, *batch, cfg, ctx_for(seed=seed)), copied


def ctx_for(seed=1, index=None, run_state=None):
    return StepContext(seed=seed, epoch=0, index=torch.arange(32) if index is None else index,
                       run_state={} if run_state is None else run_state)


# --- soft labels -----------------------------------------------------------------------------------------

def test_uniform_smoothing_keeps_one_minus_delta_on_the_true_class():
    got = agk.uniform_smoothing(torch.tensor([2, 0]), num_classes=4, delta=0.5)
    want = torch.tensor([[1 / 6, 1 / 6, 0.5, 1 / 6], [0.5, 1 / 6, 1 / 6, 1 / 6]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    logits = torch.tensor([[0.0, math.log(2.0), 0.0, 0.0]])  # softmax (1/5, 2/5, 1/5, 1/5)
    ce = agk.soft_cross_entropy(logits, torch.tensor([[0.0, 0.5, 0.5, 0.0]]))
    assert ce.item() == pytest.approx(-(0.5 * math.log(0.4) + 0.5 * math.log(0.2)), rel=1e-6)


def _reference_adv_labels(nat_prob, y_batch, multi, gamma=0.01):
    """Bilateral AT's train.py adv_labels (l.208-225), numpy, FLAGS.num_classes and FLAGS.multi as arguments."""
    num_classes = nat_prob.shape[1]
    L = -np.log(nat_prob + 1e-8)
    LL = np.copy(L)
    LL[np.arange(y_batch.shape[0]), y_batch] = 1e4
    minval = np.min(LL, axis=1)
    LL[np.arange(y_batch.shape[0]), y_batch] = -1e4
    maxval = np.max(LL, axis=1)
    denom = np.sum(L, axis=1) - L[np.arange(y_batch.shape[0]), y_batch] - (num_classes - 1) * (minval - gamma)
    delta = 1 / (1 + multi * (maxval - minval + gamma) / denom)
    alpha = delta / denom
    out = np.reshape(alpha, [-1, 1]) * (L - np.reshape(minval, [-1, 1]) + gamma)
    out[np.arange(y_batch.shape[0]), y_batch] = 1.0 - delta
    return out


def test_bilateral_labels_closed_form_on_uniform_probabilities_and_the_reference_elsewhere():
    y = torch.tensor([3, 7])
    got = agk.bilateral_labels(torch.full((2, 10), 0.1), y, multi=9.0)
    want = torch.full((2, 10), 0.5 / 9).scatter(1, y[:, None], 0.5)  # delta = 1 / (1 + 9/9)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    probs = F.softmax(3 * torch.randn(16, 10, generator=torch.Generator().manual_seed(0)), dim=1)
    y = torch.arange(16) % 10
    got = agk.bilateral_labels(probs, y, multi=9.0)
    want = _reference_adv_labels(probs.double().numpy(), y.numpy(), 9.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(16))
    wrong = got.scatter(1, y[:, None], -1.0)  # the least likely wrong class gets the most mass
    assert torch.equal(wrong.argmax(1), probs.scatter(1, y[:, None], 2.0).argmin(1))


def test_bilateral_targets_are_the_most_confusing_or_a_random_wrong_class():
    logits = torch.tensor([[5.0, 4.0, 1.0, 2.0], [0.0, 1.0, 3.0, 2.0]])
    y = torch.tensor([0, 2])
    g = torch.Generator().manual_seed(0)
    assert agk.most_confusing_target(logits, y, generator=g).tolist() == [1, 3]
    y = torch.arange(4000) % 4
    drawn = agk.random_target(torch.zeros(4000, 4), y, generator=torch.Generator().manual_seed(0))
    assert not (drawn == y).any()
    counts = torch.bincount((drawn - y) % 4, minlength=4)  # the offsets 1, 2, 3 equally often
    assert counts[0] == 0 and (counts[1:] - 4000 / 3).abs().max() < 150


def test_bilateral_example_steps_down_the_target_cross_entropy_from_the_seeded_start(synth, batch):
    x, y = batch
    model = net(synth).eval()
    target = (y + 1) % 4
    eps = 8 / 255
    got = agk.bilateral_example(model, x, target, eps=eps, step_size=eps, steps=1, seed=3)
    start = linf_start(x, eps=eps, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(start), target, reduction="sum"), start)
    want = torch.min(torch.max(start - eps * grad.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.equal(got, want.detach())
    assert (got - x).abs().max() <= eps + 1e-6


def test_bilateral_trains_on_its_example_with_the_adversarial_labels(synth, batch):
    x, y = batch
    (loss, logits, record), copied = run_objective(synth, batch, "bilateral", seed=5, bilateral_multi=4.0)
    copied.eval()
    with torch.no_grad():
        clean = copied(x)
    x_adv = agk.bilateral_example(copied, x, agk.most_confusing_target(clean, y, generator=None), eps=8 / 255,
                                  step_size=8 / 255, steps=1, seed=5)
    want_logits = copied.train()(x_adv.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(logits, want_logits)
    labels = agk.bilateral_labels(F.softmax(clean, dim=1), y, multi=4.0)
    assert record is None and loss.item() == pytest.approx(agk.soft_cross_entropy(logits, labels).item(), rel=1e-6)


# --- Feature Scattering ------------------------------------------------------------------------------------

def test_cosine_cost_is_one_minus_cosine_clamped():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    want = torch.tensor([[0.0, 1.0, 2.0], [1 - 2 ** -0.5, 1 - 2 ** -0.5, 1 + 2 ** -0.5]])
    torch.testing.assert_close(agk.cosine_cost(a, b), want)


@pytest.mark.parametrize("reg", [0.01, 0.05])
def test_sinkhorn_at_convergence_is_pots_plan_and_cost(reg):
    """POT's log-domain Sinkhorn (torch backend) at convergence; the reference's 1e-6 guard leaves its row
    sums 1e-6 short, so the plans agree to about 1e-6."""
    cost = torch.rand(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = torch.full((5,), 1 / 5, dtype=torch.float64), torch.full((7,), 1 / 7, dtype=torch.float64)
    plan = agk.sinkhorn_plan(cost, reg=reg, iters=20000, tol=0.0)
    pot_plan = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", numItermax=100000, stopThr=1e-14)
    torch.testing.assert_close(plan, pot_plan, rtol=0, atol=3e-6)
    pot_cost = ot.sinkhorn2(a, b, cost, reg, method="sinkhorn_log", numItermax=100000, stopThr=1e-14)
    assert (plan * cost).sum().item() == pytest.approx(pot_cost.item(), rel=1e-4)
    assert (plan * cost).sum().item() != pytest.approx(cost.mean().item(), rel=1e-2)  # not the independent plan


def test_sinkhorn_stops_when_the_dual_moves_less_than_tol_and_is_differentiable():
    cost = torch.rand(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(agk.sinkhorn_plan(cost, reg=0.05, iters=100, tol=1e9),
                       agk.sinkhorn_plan(cost, reg=0.05, iters=1, tol=0.0))  # stops after the first iteration
    assert not torch.equal(agk.sinkhorn_plan(cost, reg=0.05, iters=100, tol=0.0),
                           agk.sinkhorn_plan(cost, reg=0.05, iters=1, tol=0.0))
    a = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: agk.transport_cost(b, z, reg=0.05, iters=5, tol=0.0),
                                    (a,), eps=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match=r"^cost must be an \(m, n\) matrix, got shape \(3,\)$"):
        agk.sinkhorn_plan(torch.ones(3), reg=0.1, iters=1, tol=0.0)


def test_feature_scatter_example_steps_up_the_transport_cost_from_the_seeded_start(synth, batch):
    x, y = batch
    model = net(synth).eval()
    eps = 8 / 255
    got = agk.feature_scatter_example(model, x, eps=eps, step_size=eps, steps=1, seed=4)
    with torch.no_grad():
        clean = model(x)
    start = linf_start(x, eps=eps, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    (grad,) = torch.autograd.grad(agk.transport_cost(clean, model(start)), start)
    want = torch.min(torch.max(start + eps * grad.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.equal(got, want.detach())
    assert grad.abs().sum() > 0


def test_feature_scatter_trains_on_its_example_with_smoothed_labels(synth, batch):
    x, y = batch
    (loss, logits, record), copied = run_objective(synth, batch, "feature_scatter", seed=6, fs_smoothing=0.3)
    x_adv = agk.feature_scatter_example(copied.eval(), x, eps=8 / 255, step_size=8 / 255, steps=1, seed=6)
    torch.testing.assert_close(logits, copied.train()(x_adv.contiguous(memory_format=torch.channels_last)))
    want = -(agk.uniform_smoothing(y, num_classes=4, delta=0.3) * F.log_softmax(logits, 1)).sum(1).mean()
    assert record is None and loss.item() == pytest.approx(want.item(), rel=1e-6)


# --- CAT ---------------------------------------------------------------------------------------------------

def test_dirichlet_smoothing_has_the_closed_form_expectation_and_is_seeded():
    n, k, c = 20000, 4, 10.0
    y = torch.full((n,), 1)
    eps = torch.full((n,), 0.03)
    labels = agk.dirichlet_smoothing(y, eps, c=c, num_classes=k, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(labels.sum(1), torch.ones(n))
    assert (labels[:, 1] >= 1 - c * 0.03 - 1e-6).all() and (labels >= 0).all()
    want = torch.full((k,), c * 0.03 / k) + torch.eye(k)[1] * (1 - c * 0.03)  # (1 - c eps) onehot + c eps / K
    assert (labels.mean(0) - want).abs().max() < 0.005  # standard error 0.3 * sqrt(3/80) / sqrt(n) ~ 4e-4
    # each sample's Dirichlet part has variance (1/K)(1 - 1/K)/(K + 1) per coordinate: a flat Dirichlet
    part = (labels[:, 0] / (c * 0.03))
    assert part.var().item() == pytest.approx((1 / k) * (1 - 1 / k) / (k + 1), rel=0.05)
    again = agk.dirichlet_smoothing(y, eps, c=c, num_classes=k, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels, again)
    zero = agk.dirichlet_smoothing(y[:3], torch.zeros(3), c=c, num_classes=k, generator=torch.Generator())
    assert torch.equal(zero, F.one_hot(y[:3], k).float())


def test_cat_budget_grows_per_visit_shrinks_back_when_fooled_and_stops_at_the_cap():
    eta, cap = 0.0025, 0.035
    eps = torch.zeros(1, dtype=torch.float64)
    fooled_at = {2, 3, 7}
    seen = []
    for visit in range(20):
        eps = agk.cat_next_eps(eps, fooled=torch.tensor([visit in fooled_at]), eta=eta, eps_max=cap)
        seen.append(eps.item())
    grown = [sum(v not in fooled_at for v in range(t + 1)) for t in range(20)]  # visits the model survived
    assert seen == pytest.approx([min(g * eta, cap) for g in grown], abs=1e-15)
    assert seen[-1] == cap and seen[3] == pytest.approx(2 * eta)
    half = agk.cat_next_eps(torch.tensor([0.01, 0.034, 0.035]), fooled=torch.tensor([False, False, True]),
                            eta=eta, eps_max=cap)
    torch.testing.assert_close(half, torch.tensor([0.0125, 0.035, 0.035]))


def test_cw_hinge_is_the_logit_margin_of_the_best_wrong_class_floored_at_minus_kappa():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [20.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    assert agk.cw_hinge(logits, y, kappa=10.0).tolist() == [-2.0, 3.0, -10.0]


def test_cat_example_stays_in_each_samples_ball_and_ascends_the_soft_loss(synth, batch):
    x, y = batch
    model = net(synth).eval()
    eps = torch.linspace(0.0, 0.04, 32)
    labels = F.one_hot(y, 4).float()
    x_adv = agk.cat_example(model, x, y, labels, eps=eps, step_size=2 / 255, steps=5)
    dist = (x_adv - x).flatten(1).abs().amax(1)
    assert (dist <= eps + 1e-6).all() and dist[0] == 0 and (dist[eps > 0] > 0).all()
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    one = agk.cat_example(model, x, y, labels, eps=eps, step_size=2 / 255, steps=1)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    r = eps.view(-1, 1, 1, 1)
    torch.testing.assert_close(one, torch.min(torch.max(x + 2 / 255 * grad.sign(), x - r), x + r).clamp(0, 1))


def test_cat_objective_keeps_budgets_in_the_run_state_by_index(synth, batch):
    x, y = batch
    model = net(synth).train()
    cfg = train.TrainConfig.build("cat_ce", cat_eta=0.01)
    run_state = {}
    index = torch.arange(100, 132)
    loss, logits, record = OBJECTIVES["cat_ce"].loss(model, x, y, cfg, ctx_for(index=index, run_state=run_state))
    eps = run_state["cat_eps"]
    assert eps.dtype == torch.float64 and len(eps) == 132 and (eps[:100] == 0).all()
    fooled = logits.argmax(1) != y
    assert fooled.any() and not fooled.all()  # both branches of the update
    torch.testing.assert_close(eps[100:], torch.where(fooled, 0.0, 0.01).double())
    torch.testing.assert_close(record["cat_eps"], eps[100:].float())
    # the loss is the soft CE with labels drawn second from the batch seed, smoothed with the new budget
    g = torch.Generator().manual_seed(1)
    agk.dirichlet_smoothing(y, torch.zeros(32), c=10.0, num_classes=4, generator=g)  # the attack's draw
    labels = agk.dirichlet_smoothing(y, eps[100:], c=10.0, num_classes=4, generator=g)
    assert loss.item() == pytest.approx(agk.soft_cross_entropy(logits, labels).item(), rel=1e-6)


def test_cat_mix_adds_the_hinge_to_the_same_visit(synth, batch):
    x, y = batch
    results = {}
    for name in ("cat_ce", "cat_mix"):
        model = net(synth).train()
        results[name] = OBJECTIVES[name].loss(model, x, y, train.TrainConfig.build(name), ctx_for(run_state={}))
    (ce, logits_ce, rec_ce), (mix, logits_mix, rec_mix) = results["cat_ce"], results["cat_mix"]
    # at the first visit the attack's labels are one-hot (budget 0), and the hinge changes the example
    assert not torch.equal(logits_ce, logits_mix)
    g = torch.Generator().manual_seed(1)
    agk.dirichlet_smoothing(y, torch.zeros(32), c=10.0, num_classes=4, generator=g)
    labels = agk.dirichlet_smoothing(y, rec_mix["cat_eps"], c=10.0, num_classes=4, generator=g)
    want = agk.soft_cross_entropy(logits_mix, labels) + agk.cw_hinge(logits_mix, y, kappa=10.0).mean()
    assert mix.item() == pytest.approx(want.item(), rel=1e-6)


def die(epoch, row):
    raise InterruptedError(f"killed after epoch {epoch}")


def test_cat_run_killed_mid_run_resumes_bit_identically_with_its_budgets(synth, fresh_cache):
    cfg = train.TrainConfig.build("cat_ce", epochs=3, batch_size=32, lr=0.05, at_steps=2, cat_eta=0.005)
    reference = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=1, train_index=INDEX)
    records = reference.records()
    assert sorted(records) == [1, 2, 3]
    budgets = records[3]["cat_eps"]
    assert budgets.max().item() == pytest.approx(3 * 0.005)  # carried over the epochs: survived every visit
    fresh_cache("killed")
    with pytest.raises(InterruptedError):
        train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=1, train_index=INDEX, on_epoch_end=die)
    last = next(cache.cache_dir("models").glob("*/last.pt"))
    saved = cache.load_checkpoint(last)["run_state"]["cat_eps"]
    # keyed by the position in the training split (INDEX[i] = 4 i), as the first epoch's record says
    assert len(saved) == len(INDEX) and torch.equal(saved[records[1]["index"] // 4].float(), records[1]["cat_eps"])
    resumed = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=1, train_index=INDEX)
    assert resumed.checkpoint.read_bytes() == reference.checkpoint.read_bytes()
    assert resumed.meta["history"] == reference.meta["history"]
    assert torch.equal(resumed.records()[3]["cat_eps"], budgets)


def test_objectives_without_run_state_save_checkpoints_without_it(synth, fresh_cache):
    cfg = train.TrainConfig.build("bilateral", epochs=2, batch_size=50, lr=0.05)
    with pytest.raises(InterruptedError):
        train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=0, train_index=INDEX, on_epoch_end=die)
    state = cache.load_checkpoint(next(cache.cache_dir("models").glob("*/last.pt")))
    assert set(state) == {"model", "optimizer", "epoch", "seconds", "forked_from", "history"}


# --- configurations and registry -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(objective="bilateral", bilateral_target="mosa"), r"^bilateral_target must be one of mc, random, got 'mosa'$"),
    (dict(objective="bilateral", bilateral_multi=0.0), r"^bilateral_multi must be > 0, got 0.0$"),
    (dict(objective="bilateral", at_steps=0), r"^at_steps must be an int >= 1, got 0$"),
    (dict(objective="bilateral", at_eps=0.0), r"^at_eps must be > 0, got 0.0$"),
    (dict(objective="feature_scatter", fs_smoothing=1.0), r"^fs_smoothing must be in \[0, 1\), got 1.0$"),
    (dict(objective="feature_scatter", at_step_size=-1.0), r"^at_step_size must be > 0, got -1.0$"),
    (dict(objective="cat_ce", cat_eta=0.0), r"^cat_eta must be > 0, got 0.0$"),
    (dict(objective="cat_ce", cat_eps_max=0.2), r"^cat_c \* cat_eps_max must be in \(0, 1\] \(the smoothing weight\), "
                                                r"got 10.0 \* 0.2 = 2.0$"),
    (dict(objective="cat_mix", cat_kappa=-1.0), r"^cat_kappa must be >= 0, got -1.0$"),
    (dict(objective="cat_ce", cat_kappa=1.0), r"^objective 'cat_ce' takes no 'cat_kappa' \(a setting of cat_mix\)"),
    (dict(objective="cat_ce", at_eps=0.1), r"^objective 'cat_ce' takes no 'at_eps'"),
    (dict(objective="bilateral", at_norm="l2"), r"^objective 'bilateral' takes no 'at_norm' \(a setting of pgd_at\)"),
])
def test_a_bad_setting_fails_with_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        train.TrainConfig.build(**kwargs)
    assert "\n" not in str(info.value)


def test_the_chapter_registers_its_baselines_with_the_references_defaults():
    assert {k: OBJECTIVES[k] for k in agk.OBJECTIVES} == agk.OBJECTIVES
    assert list(agk.OBJECTIVES) == ["bilateral", "feature_scatter", "cat_ce", "cat_mix"]
    assert not any(o.needs_teacher or o.match_features or o.base for o in agk.OBJECTIVES.values())
    assert objectives.hyper_keywords(agk.BilateralConfig()) == dict(
        at_norm="linf", at_eps=8 / 255, at_step_size=8 / 255, at_steps=1, bilateral_target="mc", bilateral_multi=9.0,
        bilateral_gamma=0.01)
    assert objectives.hyper_keywords(agk.FeatureScatterConfig()) == dict(
        at_norm="linf", at_eps=8 / 255, at_step_size=8 / 255, at_steps=1, fs_smoothing=0.5, fs_sinkhorn_reg=0.01,
        fs_sinkhorn_iters=100, fs_sinkhorn_tol=0.1)
    cat = dict(at_norm="linf", at_step_size=2 / 255, at_steps=10, cat_eta=0.0025, cat_eps_max=0.035, cat_c=10.0)
    assert objectives.hyper_keywords(agk.CATConfig()) == cat
    assert objectives.hyper_keywords(agk.CATMixConfig()) == {**cat, "cat_kappa": 10.0}

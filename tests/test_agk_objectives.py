"""The AGK chapter's objectives (training/agk.py): the losses' closed forms and their agreement with the
reference codes' formulas, the most confusing class and the per-class pool, the AGKD-BML batch (who
is attacked toward what), the configurations' one-line errors, the registry, and training on tiny data."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from advbook import data, models
from advbook.training import agk, objectives, train
from advbook.training.framework import StepContext
from advbook.training.registry import OBJECTIVES


# --------------------------------------------------------------------------------------------------
# The reference codes' formulas, transcribed literally to compare with

def ref_angular_distance(l1, l2):  # hongw579/AGKD-BML utils.py l.44-53
    numerator = l1.mul(l2).sum(1)
    denominator = l1.mul(l1).sum(1).sqrt().mul(l2.mul(l2).sum(1).sqrt())
    numerator = torch.minimum(numerator, denominator)
    return 1.0 - torch.abs(numerator / denominator)


def ref_triplet(a, p, n, margin, lam2):  # utils.py l.55-66
    trip = torch.clamp_min(margin + ref_angular_distance(a, p) - ref_angular_distance(a, n), 0).mean()
    return trip + lam2 * (a.mul(a).mean() + p.mul(p).mean() + n.mul(n).mean())


def ref_mart(logits, logits_adv, y, beta=6.0):  # utils.py l.83-93
    kl = torch.nn.KLDivLoss(reduction="none")
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_bce = F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1)).squeeze()
    robust = torch.sum(torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return loss_bce + beta * robust / len(logits)


def ref_label_smooth(pred, targets, eps):  # utils.py l.12-23
    one_hot = torch.zeros_like(pred).scatter(1, targets.unsqueeze(1), 1)
    one_hot = one_hot * (1 - eps) + (1 - one_hot) * eps / (pred.size(1) - 1)
    return -(one_hot * F.log_softmax(pred, dim=1)).sum(dim=1).mean()


def ref_attention(feature):  # utils.py l.74-81
    att = torch.sum(feature, 1)
    flat = att.view(att.size(0), -1).clone()
    flat -= flat.min(1, keepdim=True)[0]
    flat /= flat.max(1, keepdim=True)[0]
    return flat.view(att.shape)


# --------------------------------------------------------------------------------------------------
# Losses

def test_angular_distance_closed_forms():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [-2.0, 0.0], [0.0, 5.0], [0.5, math.sqrt(3) / 2]])
    torch.testing.assert_close(agk.angular_distance(a, b), torch.tensor([0.0, 0.0, 1.0, 0.5]))


def test_triplet_is_zero_when_the_anchor_is_the_positive_and_the_negative_is_orthogonal():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    n = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    assert agk.angular_triplet(anchor=a, positive=a.clone(), negative=n, margin=0.03, reg=0.0).item() == 0.0
    # the norm term alone: 1e-3 * (mean a^2 + mean p^2 + mean n^2) = 1e-3 * (5/6 + 5/6 + 10/6)
    torch.testing.assert_close(agk.angular_triplet(anchor=a, positive=a, negative=n, margin=0.03, reg=1e-3),
                               torch.tensor(1e-3 * 20 / 6))


def test_triplet_hinge_is_margin_plus_one_when_the_anchor_is_the_negative_and_orthogonal_to_the_positive():
    a, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(agk.angular_triplet(anchor=a, positive=p, negative=-a, margin=0.03, reg=0.0),
                               torch.tensor(1.03))


def test_triplet_agrees_with_the_reference_code():
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(16, 20, generator=g) for _ in range(3))
    torch.testing.assert_close(agk.angular_triplet(anchor=a, positive=p, negative=n, margin=0.03, reg=1e-3),
                               ref_triplet(a, p, n, 0.03, 1e-3))
    torch.testing.assert_close(agk.angular_distance(a, p), ref_angular_distance(a, p))


def test_attention_l1_is_zero_for_identical_maps_and_the_mean_gap_otherwise():
    m = torch.rand(3, 4, 4)
    assert agk.attention_l1(student_map=m, teacher_map=m.clone()).item() == 0.0
    torch.testing.assert_close(agk.attention_l1(student_map=m, teacher_map=m + 0.25), torch.tensor(0.25))
    with pytest.raises(ValueError, match=r"^attention maps differ in shape: \(3, 4, 4\) and \(3, 2, 2\)$"):
        agk.attention_l1(student_map=m, teacher_map=torch.rand(3, 2, 2))


def test_attention_l1_does_not_move_the_teacher():
    s, t = torch.rand(2, 3, 3, requires_grad=True), torch.rand(2, 3, 3, requires_grad=True)
    agk.attention_l1(student_map=s, teacher_map=t).backward()
    assert s.grad is not None and t.grad is None


def test_label_smoothing_puts_the_rest_on_the_other_classes_only():
    logits, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 5
    torch.testing.assert_close(agk.label_smoothed_ce(logits, y, smoothing=0.5), ref_label_smooth(logits, y, 0.5))
    torch.testing.assert_close(agk.label_smoothed_ce(logits, y, smoothing=0.0), F.cross_entropy(logits, y))
    # two classes, s = 0.5, logits (0, log 3): p = (1/4, 3/4), loss = -(0.5 log 1/4 + 0.5 log 3/4)
    two = torch.tensor([[0.0, math.log(3)]])
    torch.testing.assert_close(agk.label_smoothed_ce(two, torch.tensor([0]), smoothing=0.5),
                               torch.tensor(-0.5 * (math.log(0.25) + math.log(0.75))))
    assert not torch.isclose(agk.label_smoothed_ce(logits, y, smoothing=0.5),
                             F.cross_entropy(logits, y, label_smoothing=0.5))
    with pytest.raises(ValueError, match=r"^smoothing must be in \[0, 1\), got 1.0$"):
        agk.label_smoothed_ce(logits, y, smoothing=1.0)


def test_mart_regulariser_agrees_with_the_reference_code():
    g = torch.Generator().manual_seed(2)
    nat, adv, y = torch.randn(32, 10, generator=g) * 3, torch.randn(32, 10, generator=g) * 3, torch.arange(32) % 10
    torch.testing.assert_close(agk.mart_regulariser(logits_nat=nat, logits_adv=adv, labels=y, beta=6.0),
                               ref_mart(nat, adv, y, 6.0), rtol=1e-5, atol=1e-6)


def test_mart_regulariser_plus_the_cross_entropy_is_the_projects_mart(monkeypatch):
    """objectives' ``mart`` = CE(x') + this, on the same x' (its attack replaced by a fixed one)."""
    torch.manual_seed(0)
    model = models.build_model("tiny_cnn", num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6) % 4
    x_adv = (x + 0.03).clamp(0, 1)
    monkeypatch.setattr(objectives, "train_attack", lambda *a, **k: (x_adv, None))
    cfg = train.TrainConfig.build(objective="mart", mart_beta=6.0)
    loss, _, _ = OBJECTIVES["mart"].loss(model, x, y, cfg, StepContext(seed=0, epoch=0, index=torch.arange(6)))
    with torch.no_grad():
        logits, logits_adv = model(x), model(x_adv)
        expected = F.cross_entropy(logits_adv, y) + agk.mart_regulariser(logits_nat=logits, logits_adv=logits_adv,
                                                                         labels=y, beta=6.0)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# The most confusing class and the pool

def test_most_confusing_is_the_best_wrong_class_among_the_allowed_ones():
    logits = torch.tensor([[5.0, 4.0, 1.0, 3.0], [0.0, 9.0, 2.0, 8.0]])
    y = torch.tensor([0, 1])
    assert agk.most_confusing(logits, y).tolist() == [1, 3]
    allowed = torch.tensor([True, True, True, False])
    assert agk.most_confusing(logits, y, allowed=allowed).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"^the pool holds no image of a class other than some sample's label; "
                                         r"AGKD-BML needs images of at least two classes$"):
        agk.most_confusing(logits, y, allowed=torch.tensor([True, False, False, False]))


def test_the_pool_is_the_batch_then_each_class_most_recent_images():
    state: dict = {}
    x1, y1 = torch.arange(4.0).view(4, 1), torch.tensor([0, 0, 0, 1])
    pool = agk.ClassPool.of(x1, y1, state=state, key="p", per_class=2, num_classes=3)
    assert pool.x.flatten().tolist() == [0, 1, 2, 3]
    x2, y2 = torch.arange(10.0, 13.0).view(3, 1), torch.tensor([2, 0, 1])
    pool = agk.ClassPool.of(x2, y2, state=state, key="p", per_class=2, num_classes=3)
    assert pool.x.flatten().tolist() == [10, 11, 12, 1, 2, 3]  # the batch, then class 0's last two and class 1
    assert pool.classes(3).tolist() == [True, True, True]
    assert sorted(state["p"].x.flatten().tolist()) == [2, 3, 10, 11, 12]  # class 0: 2 and 11; 1: 3, 12; 2: 10


def test_the_pool_draws_uniformly_within_the_class_and_avoids_the_excluded_image():
    pool = agk.ClassPool(torch.arange(6.0), torch.tensor([0, 1, 0, 1, 0, 2]))
    g = torch.Generator().manual_seed(0)
    picks = pool.draw(torch.zeros(3000, dtype=torch.long), generator=g)
    counts = torch.bincount(picks, minlength=6)
    assert counts[[1, 3, 5]].sum() == 0 and (counts[[0, 2, 4]] - 1000).abs().max() < 100
    assert pool.draw(torch.tensor([3]), generator=g).tolist() == [-1]
    # excluding the image itself: another of its class, or itself when it is the only one
    picks = pool.draw(torch.tensor([0, 2]), generator=g, exclude=torch.tensor([0, 5]))
    assert picks[0].item() in (2, 4) and picks[1].item() == 5


# --------------------------------------------------------------------------------------------------
# The objectives on a tiny model

STATS = dict(mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def synth16():
    return data.synthetic(n_train=200, n_test=100, num_classes=4, size=16, seed=0)


@pytest.fixture(scope="module")
def teacher16(synth16):
    """A naturally trained tiny CNN on 16-pixel images (2 x 2 last feature maps)."""
    return train.train_model(model_name="tiny_cnn", dataset=synth16, seed=0,
                             cfg=train.TrainConfig(epochs=4, batch_size=50, lr=0.05))


def _batch(synth16, n=16):
    return data.to_float(synth16.train.images[:n]), synth16.train.labels[:n]


def _student(seed=1):
    torch.manual_seed(seed)
    return models.build_model("tiny_cnn", num_classes=4, **STATS).eval()  # eval: no batch-norm updates


def _ctx(teacher=None, seed=3):
    return StepContext(seed=seed, epoch=0, index=torch.arange(16), teacher=teacher, state={})


def test_registry_holds_the_four_objectives_with_their_teachers():
    assert {n: OBJECTIVES[n].needs_teacher for n in ("sml", "bml", "agkd", "agkd_bml")} == \
        {"sml": False, "bml": False, "agkd": True, "agkd_bml": True}
    assert OBJECTIVES["agkd_bml"].config is agk.AGKDBMLConfig and OBJECTIVES["sml"].config is agk.SMLConfig


def test_defaults_are_the_references_converted_to_unit_range():
    h = agk.AGKDBMLConfig()
    assert (h.eps, h.step_size, h.steps, h.smoothing, h.mart, h.beta) == (8 / 255, 2 / 255, 10, 0.5, True, 6.0)
    assert (h.margin, h.lam, h.reg, h.reverse) == (0.03, 2.0, 1e-3, False)
    s = agk.SMLConfig()
    assert (s.eps, s.step_size, s.steps, s.margin, s.lam, s.reg, s.noise) == (8 / 255, 2 / 255, 7, 0.03, 2.0, 1e-3,
                                                                               8 / 255)


@pytest.mark.parametrize("objective,kwargs,message", [
    ("agkd_bml", dict(at_steps=0), r"^at_steps must be an int >= 1, got 0$"),
    ("agkd_bml", dict(at_eps=0.0), r"^at_eps and at_step_size must be > 0, got 0.0, 0.00784"),
    ("agkd_bml", dict(agk_smoothing=1.0), r"^agk_smoothing must be in \[0, 1\), got 1.0$"),
    ("agkd", dict(agk_mart="yes"), r"^agk_mart must be True or False, got 'yes'$"),
    ("agkd", dict(mart_beta=-1.0), r"^mart_beta must be >= 0, got -1.0$"),
    ("bml", dict(bml_margin=-0.1), r"^bml_margin must be >= 0, got -0.1$"),
    ("bml", dict(bml_reverse=1), r"^bml_reverse must be True or False, got 1$"),
    ("sml", dict(sml_lambda=-2.0), r"^sml_lambda must be >= 0, got -2.0$"),
    ("sml", dict(sml_noise=-1.0), r"^sml_noise must be >= 0, got -1.0$"),
    ("sml", dict(pool_per_class=1.5), r"^pool_per_class must be an int >= 0, got 1.5$"),
    ("agkd", dict(bml_margin=0.1), r"^objective 'agkd' takes no 'bml_margin' \(a setting of bml, agkd_bml\)"),
])
def test_configs_reject_bad_values_in_one_line(objective, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        train.TrainConfig.build(objective=objective, **kwargs)
    assert "\n" not in str(info.value)


def test_the_agkd_bml_batch_attacks_toward_the_most_confusing_class_and_back(synth16, teacher16, monkeypatch):
    """x1' is aimed at t = most_confusing(student's clean logits), x2 is of class t, x2' is aimed at y1."""
    model, (x, y) = _student(), _batch(synth16)
    calls = []
    real = agk._targeted
    monkeypatch.setattr(agk, "_targeted", lambda m, xs, target, **k: calls.append((xs, target)) or real(m, xs, target, **k))
    cfg = train.TrainConfig.build(objective="agkd_bml", at_steps=2)
    OBJECTIVES["agkd_bml"].loss(model, x, y, cfg, _ctx(teacher16.model))
    with torch.no_grad():
        t = agk.most_confusing(model(x), y)
    (x1, t1), (x2, t2) = calls
    assert torch.equal(x1, x) and torch.equal(t1, t) and torch.equal(t2, y)
    same = (x2[:, None] == x[None, :]).flatten(2).all(2)  # x2[i] is batch image j (the pool is the batch)
    assert same.any(1).all() and torch.equal(y[same.float().argmax(1)], t)  # ... of class t


def test_the_targeted_attack_moves_toward_its_target_within_the_ball(synth16):
    model, (x, y) = _student(), _batch(synth16)
    target = (y + 1) % 4
    cfg = agk.AGKDConfig(steps=5)
    x_adv = agk._targeted(model, x, target, cfg=cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = F.cross_entropy(model(x), target), F.cross_entropy(model(x_adv), target)
    assert after < before
    assert (x_adv - x).abs().max() <= cfg.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def _loss(name, model, x, y, teacher, **kw):
    cfg = train.TrainConfig.build(objective=name, at_steps=2, **kw)
    return OBJECTIVES[name].loss(model, x, y, cfg, _ctx(teacher))[0].detach()


def _examples(model, x, y, seed=3):
    """x1', x2 and x2' rebuilt by hand as the objectives draw them (a first batch: the pool is the batch)."""
    g, h = torch.Generator().manual_seed(seed), agk.BMLConfig(steps=2)
    with torch.no_grad():
        t = agk.most_confusing(model(x), y)
    x1a = agk._targeted(model, x, t, cfg=h, generator=g)
    x2 = x[agk.ClassPool(x, y).draw(t, generator=g)]
    return x1a, x2, agk._targeted(model, x2, y, cfg=h, generator=g)


def test_agkd_bml_is_bml_plus_the_attention_terms_and_agkd_plus_the_triplet(synth16, teacher16):
    """Same seed, same batch, a model in eval mode: the three objectives share x1', x2 and x2'."""
    model, (x, y) = _student(), _batch(synth16)
    full, bml, agkd = (_loss(n, model, x, y, teacher16.model) for n in ("agkd_bml", "bml", "agkd"))
    assert torch.equal(full, _loss("agkd_bml", model, x, y, teacher16.model))  # a rerun is bit-identical
    x1a, x2, x2a = _examples(model, x, y)  # rebuild the terms by hand from the same examples
    with torch.no_grad():
        att = (F.l1_loss(ref_attention(model.feature_map(x1a)), ref_attention(teacher16.model.feature_map(x)))
               + F.l1_loss(ref_attention(model.feature_map(x2a)), ref_attention(teacher16.model.feature_map(x2))))
        trip = ref_triplet(model.features(x1a), model.features(x), model.features(x2a), 0.03, 1e-3)
        base = ref_label_smooth(model(x1a), y, 0.5) + ref_mart(model(x), model(x1a), y, 6.0)
    torch.testing.assert_close(full - bml, att, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full - agkd, 2.0 * trip, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full, base + att + 2.0 * trip, rtol=1e-4, atol=1e-5)


def test_without_mart_the_base_is_the_label_smoothed_cross_entropy(synth16):
    model, (x, y) = _student(), _batch(synth16)
    with_mart, without = _loss("bml", model, x, y, None), _loss("bml", model, x, y, None, agk_mart=False)
    x1a, _, _ = _examples(model, x, y)
    with torch.no_grad():
        mart = agk.mart_regulariser(logits_nat=model(x), logits_adv=model(x1a), labels=y, beta=6.0)
    torch.testing.assert_close(with_mart - without, mart, rtol=1e-4, atol=1e-5)


def test_the_reverse_triplet_adds_the_other_direction(synth16):
    model, (x, y) = _student(), _batch(synth16)
    one, both = _loss("bml", model, x, y, None), _loss("bml", model, x, y, None, bml_reverse=True)
    x1a, x2, x2a = _examples(model, x, y)
    with torch.no_grad():
        reverse = ref_triplet(model.features(x2a), model.features(x2), model.features(x1a), 0.03, 1e-3)
    torch.testing.assert_close(both - one, 2.0 * reverse, rtol=1e-4, atol=1e-5)


def test_sml_mines_the_hardest_negative_of_another_class(synth16, monkeypatch):
    model, (x, y) = _student(), _batch(synth16)
    seen = []
    real = agk.angular_triplet
    monkeypatch.setattr(agk, "angular_triplet", lambda **k: seen.append(k) or real(**k))
    cfg = train.TrainConfig.build(objective="sml", at_steps=2)
    loss, logits, _ = OBJECTIVES["sml"].loss(model, x, y, cfg, _ctx())
    x_adv = objectives.pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=2, random_start=True,
                           stop_on_success=False, seed=3).x_adv
    with torch.no_grad():
        fa, fx = F.normalize(model.features(x_adv), dim=1), F.normalize(model.features(x), dim=1)
        cos = (fa @ fx.T).masked_fill(y[None, :] == y[:, None], float("-inf"))
        hardest = model.features(x[cos.argmax(1)])
        torch.testing.assert_close(logits, model(x_adv))
    first, second = seen
    torch.testing.assert_close(first["negative"], hardest, rtol=1e-4, atol=1e-5)
    assert torch.equal(first["anchor"], second["anchor"]) and torch.equal(first["negative"], second["negative"])
    expected = F.cross_entropy(logits, y) + 2.0 * (real(**first) + real(**second))
    torch.testing.assert_close(loss.detach(), expected.detach())


@pytest.mark.parametrize("name", ["sml", "bml", "agkd", "agkd_bml"])
def test_a_step_in_train_mode_reruns_bit_identically(synth16, teacher16, name):
    (x, y), teacher = _batch(synth16), teacher16.model if OBJECTIVES[name].needs_teacher else None
    losses = [_loss(name, _student().train(), x, y, teacher) for _ in range(2)]
    assert torch.isfinite(losses[0]) and torch.equal(losses[0], losses[1])


def test_sml_trains_on_tiny_data(synth16):
    cfg = train.TrainConfig.build(objective="sml", epochs=4, batch_size=50, lr=0.05, at_steps=2)
    trained = train.train_model(model_name="tiny_cnn", dataset=synth16, seed=0, cfg=cfg)
    history = trained.meta["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    x, y = data.to_float(synth16.test.images), synth16.test.labels
    assert (train.predict(trained.model, x).argmax(1) == y).float().mean() > 0.5  # chance is 0.25


def _robust_accuracy(model, x, y):
    model.eval()
    x_adv = objectives.pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=5, random_start=True,
                           stop_on_success=False, seed=0).x_adv
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item(), (model(x_adv).argmax(1) == y).float().mean().item()


def test_agkd_bml_from_the_teacher_raises_its_robust_accuracy(synth16, teacher16):
    """The reference's recipe (``--nat_init``): the student starts from the teacher's weights. Three
    epochs of 4 batches (lr 0.01; at 0.05 the MART term, on examples aimed at the most confusing
    class, makes this tiny network collapse to one class) raise the PGD accuracy, clean stays high."""
    x_train, y_train = data.to_float(synth16.train.images), synth16.train.labels
    model = _student()
    model.load_state_dict(teacher16.model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    cfg = train.TrainConfig.build(objective="agkd_bml", at_steps=3)
    for epoch in range(3):
        model.train()
        state: dict = {}  # one per epoch, as the loop gives
        for b in range(4):
            idx = torch.arange(b * 50, (b + 1) * 50)
            ctx = StepContext(seed=10 * epoch + b, epoch=epoch, index=idx, teacher=teacher16.model, state=state)
            loss = OBJECTIVES["agkd_bml"].loss(model, x_train[idx], y_train[idx], cfg, ctx)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
    x, y = data.to_float(synth16.test.images), synth16.test.labels
    (clean_t, robust_t), (clean, robust) = _robust_accuracy(teacher16.model, x, y), _robust_accuracy(model, x, y)
    assert robust >= robust_t + 0.05 and clean >= 0.8, (clean_t, robust_t, clean, robust)

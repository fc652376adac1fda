"""Adversarial-training objectives: weight functions against their formulas on hand cases,
every objective on a real batch, and the shared burn-in that reweighting runs fork from."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advbook import data
from advbook.training import reweight
from advbook.training import train
from advbook.training.objectives import StepContext, train_attack
from advbook.training.registry import OBJECTIVES


def test_gair_weights_follow_vir_eq2_then_are_normalised_to_mean_one():
    kappa = torch.tensor([0, 5, 10, 3])
    w = reweight.gair_weights(kappa, steps=10, lam=-1.0)
    raw = np.array([(1 + math.tanh(-1.0 + 5 * (1 - 2 * k / 10))) / 2 for k in (0, 5, 10, 3)])
    assert w.numpy() == pytest.approx(raw / raw.mean(), rel=1e-5, abs=1e-7)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert w[0] > w[3] > w[1] > w[2]  # fewer steps to the boundary -> more weight


def test_probability_margin_and_mail_weights_on_a_hand_case():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    y = torch.tensor([0, 2])
    pm = reweight.probability_margin(logits, y)
    assert pm.numpy() == pytest.approx([0.5, -0.6], abs=1e-6)
    w = reweight.mail_weights(logits, y, bias=-1.5, slope=1.0)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert w.numpy() == pytest.approx([3 * sig(-0.5 - 1.5), 3 * sig(0.6 - 1.5)], rel=1e-6)
    # the paper's form, sigmoid(-gamma (PM - beta)), is the same with beta = bias, gamma = slope
    assert w.numpy() == pytest.approx([3 * sig(-1.0 * (m + 1.5)) for m in (0.5, -0.6)], rel=1e-6)


def test_vir_parts_follow_eq5_to_7_on_a_hand_case():
    p_nat = np.array([0.6, 0.3, 0.1])
    p_adv = np.array([0.2, 0.5, 0.3])
    parts = reweight.vir_parts(logits_nat=torch.log(torch.from_numpy(p_nat[None])),
                               logits_adv=torch.log(torch.from_numpy(p_adv[None])), y=torch.tensor([0]),
                               alpha=7.0, gamma=10.0, beta=0.007)
    s_v = 7.0 * math.exp(-10.0 * 0.6)
    s_d = float((p_nat * np.log(p_nat / p_adv)).sum())
    assert parts["p_y"].item() == pytest.approx(0.6, rel=1e-6)
    assert parts["S_v"].item() == pytest.approx(s_v, rel=1e-5)
    assert parts["S_d"].item() == pytest.approx(s_d, rel=1e-5)
    assert parts["w"].item() == pytest.approx(s_v * s_d + 0.007, rel=1e-5)


def test_vulnerable_and_disturbed_samples_get_the_largest_vir_weight():
    nat = torch.log(torch.tensor([[0.9, 0.1], [0.55, 0.45], [0.55, 0.45]]))
    adv = torch.log(torch.tensor([[0.85, 0.15], [0.5, 0.5], [0.1, 0.9]]))
    w = reweight.vir_parts(logits_nat=nat, logits_adv=adv, y=torch.zeros(3, dtype=torch.long), alpha=7.0, gamma=10.0,
                           beta=0.0)["w"]
    assert w[2] > w[1] and w[2] > w[0]


def test_kl_and_vir_parts_take_their_two_logits_by_name_only():
    p, q = torch.log(torch.tensor([[0.6, 0.3, 0.1]])), torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    y = torch.tensor([0])
    with pytest.raises(TypeError):
        reweight.kl_per_sample(p, q)
    with pytest.raises(TypeError):
        reweight.vir_parts(p, q, y, alpha=7.0, gamma=10.0, beta=0.0)
    # the swaps the keywords rule out would change the values silently
    assert reweight.kl_per_sample(logits_p=p, logits_q=q).item() != pytest.approx(
        reweight.kl_per_sample(logits_p=q, logits_q=p).item(), rel=1e-3)
    kw = dict(y=y, alpha=7.0, gamma=10.0, beta=0.0)
    assert reweight.vir_parts(logits_nat=p, logits_adv=q, **kw)["w"].item() != pytest.approx(
        reweight.vir_parts(logits_nat=q, logits_adv=p, **kw)["w"].item(), rel=1e-3)


SETTINGS = dict(epochs=4, batch_size=50, lr=0.05, at_eps=8 / 255, at_step_size=2 / 255, at_steps=3)


def cfg_for(objective: str, **changes) -> train.TrainConfig:
    """``objective``'s configuration with the SETTINGS it has, and ``changes``."""
    owned = train.TrainConfig.keywords(objective)
    return train.TrainConfig.build(objective=objective, **{k: v for k, v in SETTINGS.items() if k in owned}, **changes)


CFG = cfg_for("trades")  # an L-inf training attack's settings, for train_attack


@pytest.fixture(scope="module")
def batch(synth):
    return data.to_float(synth.train.images[:32]), synth.train.labels[:32]


@pytest.mark.parametrize("loss,start", [("ce", "gauss"), ("kl", "gauss"), ("ce", "uniform")])
def test_train_attack_stays_in_the_ball_and_in_the_unit_cube(tiny_model, batch, loss, start):
    x, y = batch
    ctx = StepContext(seed=3, epoch=0, index=torch.arange(len(x)))
    x_adv, kappa = train_attack(tiny_model, x, y, CFG, ctx, loss=loss, start=start, count=True)
    assert (x_adv - x).abs().max() <= CFG.hyper.eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert kappa.min() >= 0 and kappa.max() <= CFG.hyper.steps
    again, _ = train_attack(tiny_model, x, y, CFG, ctx, loss=loss, start=start)
    assert torch.equal(x_adv, again)  # seeded
    with pytest.raises(ValueError, match="unknown start 'zero'; valid: gauss, uniform"):
        train_attack(tiny_model, x, y, CFG, ctx, start="zero")


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if not OBJECTIVES[n].needs_teacher])
def test_every_objective_gives_a_finite_loss_with_gradients(synth, batch, name):
    from advbook.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std).train()
    x, y = batch
    cfg = cfg_for(name)
    loss, logits, record = OBJECTIVES[name].loss(model, x, y, cfg, StepContext(seed=1, epoch=0, index=torch.arange(32)))
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape == (32, 4)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if name in ("gairat", "mail_at", "vir_at", "vir_trades"):
        assert record is not None and record["w"].shape == (32,) and (record["w"] >= 0).all()
    if name.startswith("vir"):
        assert set(record) == {"p_y", "S_v", "S_d", "w"}
        assert torch.allclose(record["w"], record["S_v"] * record["S_d"] + cfg.hyper.beta)


def test_vir_at_with_unit_weights_is_cross_entropy_on_its_attack(synth, batch):
    from advbook.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std).eval()  # eval: no BN drift
    x, y = batch
    ctx = StepContext(seed=5, epoch=0, index=torch.arange(32))
    cfg = cfg_for("vir_at", vir_alpha=0.0, vir_beta=1.0)
    loss, _, record = OBJECTIVES["vir_at"].loss(model, x, y, cfg, ctx)
    assert torch.allclose(record["w"], torch.ones(32))
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="ce")
    assert loss.item() == pytest.approx(F.cross_entropy(model(x_adv), y).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["vir_at", "vir_trades"])
def test_the_controls_keep_vir_s_scale_or_its_ranking_and_nothing_else(synth, batch, name):
    from advbook.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std).eval()  # eval: no BN drift
    x, y = batch
    ctx = StepContext(seed=3, epoch=0, index=torch.arange(32))
    out = {use: OBJECTIVES[name].loss(model, x, y, cfg_for(name, vir_use=use), ctx) for use in ("full", "mean", "norm")}
    full, mean, norm = (out[u][2] for u in ("full", "mean", "norm"))
    for part in ("p_y", "S_v", "S_d"):          # the same attack, so the same parts
        assert torch.equal(full[part], mean[part]) and torch.equal(full[part], norm[part])
    assert torch.allclose(mean["w"], full["w"].mean().expand(32))             # one value: VIR's batch mean
    assert norm["w"].mean().item() == pytest.approx(1.0, rel=1e-6)            # VIR's ranking at mean 1
    assert torch.allclose(norm["w"] * full["w"].mean(), full["w"], rtol=1e-6)
    if name == "vir_at":                         # uniform weights: the loss is the mean weight times plain CE
        x_adv, _ = train_attack(model, x, y, cfg_for(name), ctx, loss="ce")
        ce = F.cross_entropy(model(x_adv), y).item()
        assert out["mean"][0].item() == pytest.approx(full["w"].mean().item() * ce, rel=1e-5)


def test_trades_loss_is_ce_plus_beta_times_the_mean_kl(synth, batch):
    from advbook.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std).eval()  # eval: no BN drift
    x, y = batch
    ctx = StepContext(seed=2, epoch=0, index=torch.arange(32))
    cfg = cfg_for("trades")
    loss, logits, _ = OBJECTIVES["trades"].loss(model, x, y, cfg, ctx)
    x_adv, _ = train_attack(model, x, y, cfg, ctx, loss="kl")
    p, q = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item() + cfg.hyper.beta * kl.item(), rel=1e-4)


def test_reweighting_forks_from_the_shared_burn_in_and_matches_a_run_from_scratch(synth, fresh_cache):
    index = torch.arange(0, 400, 4)
    vir = cfg_for("vir_at", reweight_from=2)
    base = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg_for("pgd_at"), seed=0, train_index=index,
                             share_epochs=(2,))
    assert base.meta["forked_from"] is None
    forked = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=vir, seed=0, train_index=index)
    assert forked.meta["forked_from"] and forked.meta["forked_from"].endswith("-e2.pt")
    assert forked.meta["history"][:2] == base.meta["history"][:2]
    fresh_cache("b")
    scratch = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=vir, seed=0, train_index=index)
    assert scratch.meta["forked_from"] is None and scratch.key == forked.key
    a, b = forked.model.state_dict(), scratch.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = scratch.records()
    assert sorted(records) == [3, 4]  # only the reweighted epochs
    assert sorted(records[3]["index"].tolist()) == index.tolist()
    assert set(records[3]) == {"index", "p_y", "S_v", "S_d", "w"}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_an_objective_gives_the_model_back_in_the_mode_it_got(synth, batch, tiny_model, name, training):
    from advbook.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std).train(training)
    x, y = batch
    ctx = StepContext(seed=1, epoch=0, index=torch.arange(32),
                      teacher=tiny_model if OBJECTIVES[name].needs_teacher else None)
    OBJECTIVES[name].loss(model, x, y, cfg_for(name), ctx)
    assert [m.training for m in model.modules()] == [training] * len(list(model.modules()))


def test_a_model_with_a_frozen_submodule_gets_every_mode_back(synth, batch):
    from advbook.models import build_model

    model = build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std).train()
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)][:1]
    assert frozen, "tiny_cnn has a batch-norm layer to freeze"
    frozen[0].eval()
    before = [m.training for m in model.modules()]
    x, y = batch
    for name in ("pgd_at", "trades", "vir_at"):
        OBJECTIVES[name].loss(model, x, y, cfg_for(name), StepContext(seed=1, epoch=0, index=torch.arange(32)))
        assert [m.training for m in model.modules()] == before, name

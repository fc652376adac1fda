"""The RRM chapter's training objectives (fgsm_rs, free_at, rrm, kd_rrm), the loop's replays and
per-epoch state, the students whose features match a teacher's, and the timing of training."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from advbook import data
from advbook.core import cache
from advbook.attacks.core import pgd
from advbook.models import build_model
from advbook.training import objectives, rrm, timing, train
from advbook.training.framework import StepContext
from advbook.training.registry import OBJECTIVES

INDEX = torch.arange(0, 400, 4)  # 100 synthetic training images: 25 per class


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def batch(synth):
    x = data.to_float(synth.train.images[:32]).contiguous(memory_format=torch.channels_last)
    return x, synth.train.labels[:32]


def net(synth, name="tiny_cnn", seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(name, num_classes=4, mean=synth.mean, std=synth.std, **kw)


def ctx_for(teacher=None, **kw):
    return StepContext(seed=kw.pop("seed", 1), epoch=0, index=torch.arange(32), teacher=teacher, **kw)


def one_cycle(step, total, cfg):  # the schedule's closed form (warm-up to the peak, then linear to 0)
    peak = max(1, int(cfg.warmup * total))
    return cfg.lr * (step + 1) / peak if step < peak else cfg.lr * (total - step) / (total - peak)


# --- rrm ---------------------------------------------------------------------------------------------

def test_rrm_loss_is_zero_for_a_copy_of_the_teacher_and_lambda_times_ce_when_features_match(synth, batch):
    x, y = batch
    teacher = net(synth, seed=3).eval()
    student = copy.deepcopy(teacher).eval()  # eval: batch norm as the teacher's, so equal features
    zero, logits, record = OBJECTIVES["rrm"].loss(student, x, y, train.TrainConfig.build("rrm", rrm_lambda=0.0),
                                                  ctx_for(teacher))
    assert record is None and abs(zero.item()) < 1e-6
    lam = 0.3
    loss, _, _ = OBJECTIVES["rrm"].loss(student, x, y, train.TrainConfig.build("rrm", rrm_lambda=lam), ctx_for(teacher))
    assert loss.item() == pytest.approx(lam * F.cross_entropy(logits, y).item(), abs=1e-6)
    other = net(synth, seed=4).eval()  # different features: the cosine term is positive
    assert OBJECTIVES["rrm"].loss(other, x, y, train.TrainConfig.build("rrm", rrm_lambda=0.0),
                                  ctx_for(teacher))[0].item() > 1e-3


def test_rrm_gradients_are_those_of_the_reference_loss(synth, batch):
    """l_inf/train_rrm.py l.104, 147-150: xent_weight * CE + feat_weight * mean(cos), feat_weight = -1."""
    x, y = batch
    teacher, student = net(synth, seed=3).eval(), net(synth, seed=4).train()
    lam = 0.005
    ours, _, _ = OBJECTIVES["rrm"].loss(student, x, y, train.TrainConfig.build("rrm", rrm_lambda=lam), ctx_for(teacher))
    params = list(student.parameters())
    got = torch.autograd.grad(ours, params)
    with torch.no_grad():
        rep_rob = teacher.features(x)
    rep_std = student.features(x)
    reference = lam * F.cross_entropy(student.head(rep_std), y) - torch.nn.CosineSimilarity(dim=1, eps=1e-6)(
        rep_std, rep_rob).mean()
    want = torch.autograd.grad(reference, params)
    assert ours.item() == pytest.approx(reference.item() + 1, abs=1e-5)  # the constant 1 apart
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


# --- fgsm_rs -----------------------------------------------------------------------------------------

def test_fgsm_rs_example_is_pgd_with_one_step_in_the_ball_and_seeded(synth, batch):
    x, y = batch
    model = net(synth).eval()
    eps = 8 / 255
    x_adv = rrm.fgsm_rs_example(model, x, y, eps=eps, alpha=1.25, seed=7)
    assert (x_adv - x).abs().max().item() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv, rrm.fgsm_rs_example(model, x, y, eps=eps, alpha=1.25, seed=7))
    assert not torch.equal(x_adv, rrm.fgsm_rs_example(model, x, y, eps=eps, alpha=1.25, seed=8))
    ref = pgd(model, x, y, norm="linf", eps=eps, step_size=1.25 * eps, steps=1, random_start=True,
              stop_on_success=False, seed=7).x_adv
    assert torch.equal(x_adv, ref)


def test_fgsm_rs_trains_on_its_example_generated_in_eval_mode(synth, batch):
    x, y = batch
    model = net(synth).train()
    copied = copy.deepcopy(model)  # the objective's train-mode pass moves the batch-norm statistics
    cfg = train.TrainConfig.build("fgsm_rs", at_eps=4 / 255, fgsm_alpha=1.0)
    loss, logits, record = OBJECTIVES["fgsm_rs"].loss(model, x, y, cfg, ctx_for(seed=5))
    x_adv = rrm.fgsm_rs_example(copied.eval(), x, y, eps=4 / 255, alpha=1.0, seed=5)
    torch.testing.assert_close(logits, copied.train()(x_adv.contiguous(memory_format=torch.channels_last)))
    assert record is None and loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


# --- free_at -----------------------------------------------------------------------------------------

def test_free_at_first_step_is_training_on_the_clean_batch_and_delta_takes_an_eps_sign_step(synth, batch):
    x, y = batch
    eps = 8 / 255
    cfg = train.TrainConfig.build("free_at", free_m=1, at_eps=eps)
    a = net(synth).train()
    b = copy.deepcopy(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    ctx = ctx_for(state={})
    train.train_step(a, opt_a, cfg=cfg, x=x, y=y, ctx=ctx, step=3, total=10)
    # by hand: x + 0 as a leaf, one forward-backward for the update and for the perturbation's gradient
    delta = torch.zeros_like(x, requires_grad=True)
    loss = F.cross_entropy(b(x + delta), y)
    opt_b.param_groups[0]["lr"] = opt_a.param_groups[0]["lr"]
    assert opt_a.param_groups[0]["lr"] == pytest.approx(one_cycle(3, 10, cfg))
    opt_b.zero_grad()
    loss.backward()
    opt_b.step()
    assert same(weights(a), weights(b))
    # the next call (here: the next batch, then a smaller last one) first applies delta's ascent step
    x2 = data.to_float(synth.train.images[32:64]).contiguous(memory_format=torch.channels_last)
    OBJECTIVES["free_at"].loss(a, x2, y, cfg, ctx)
    want = torch.max(torch.min(eps * delta.grad.sign(), 1 - x2), -x2)
    assert torch.equal(ctx.state["free_delta"], want)
    assert (ctx.state["free_delta"].abs() == eps).float().mean() > 0.5  # a full eps step, not a small one
    x3 = x[:5]
    loss3, logits3, _ = OBJECTIVES["free_at"].loss(a, x3, y[:5], cfg, ctx)
    assert ctx.state["free_leaf"].shape == x3.shape and ctx.state["free_delta"].shape == x.shape
    assert (x3 + ctx.state["free_leaf"]).min() >= 0 and (x3 + ctx.state["free_leaf"]).max() <= 1


def test_free_at_replays_each_minibatch_with_one_optimizer_step_each_on_the_per_step_schedule(synth, batch):
    x, y = batch
    m = 3
    cfg = train.TrainConfig.build("free_at", free_m=m, lr=0.2, warmup=0.3)
    model = net(synth).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lrs = []
    opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
    ctx = ctx_for(state={})
    for step in (0, 1, 2):
        train.train_step(model, opt, cfg=cfg, x=x, y=y, ctx=ctx, step=step, total=4)
    assert lrs == pytest.approx([one_cycle(s, 4 * m, cfg) for s in range(3 * m)])  # 9 steps of a 12-step cycle
    assert train.replays_of(cfg) == m and train.replays_of(train.TrainConfig()) == 1
    one = train.TrainConfig.build("free_at", free_m=1)
    assert train.lr_per_epoch(one, n_train=100) == train.lr_per_epoch(train.TrainConfig(), n_train=100)
    four = train.lr_per_epoch(train.TrainConfig.build("free_at", free_m=4, epochs=2), n_train=64)  # 1 batch, 4 steps
    assert four == pytest.approx([sum(one_cycle(s, 8, one) for s in range(4)) / 4,
                                  sum(one_cycle(s, 8, one) for s in range(4, 8)) / 4])


def die(epoch, row):
    """An ``on_epoch_end`` that kills the run once its first epoch's checkpoint is written."""
    raise InterruptedError(f"killed after epoch {epoch}")


def test_free_at_run_killed_mid_run_resumes_bit_identically(synth, fresh_cache):
    cfg = train.TrainConfig.build("free_at", epochs=3, batch_size=32, lr=0.05, free_m=2)
    reference = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=1, train_index=INDEX)
    fresh_cache("killed")
    with pytest.raises(InterruptedError):
        train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=1, train_index=INDEX,
                          on_epoch_end=die)
    assert (next(cache.cache_dir("models").glob("*/last.pt")) and
            not list(cache.cache_dir("models").glob("*/final.pt")))  # killed midway, as test_train.py's runs
    resumed = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=1, train_index=INDEX)
    assert resumed.checkpoint.read_bytes() == reference.checkpoint.read_bytes()
    assert resumed.meta["history"] == reference.meta["history"]
    fresh_cache("one_replay")  # and the replays change the weights
    once = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg.replace(free_m=1), seed=1, train_index=INDEX)
    assert not same(weights(once.model), weights(reference.model))


# --- kd_rrm ------------------------------------------------------------------------------------------

def test_kd_rrm_is_the_reference_formula_with_the_temperature_inside_the_models(batch):
    """l_2/train_kdloss.py l.67, 96-98 (alpha = 1) on models that divide their logits by T (resnet.py l.118)."""
    g = torch.Generator().manual_seed(0)
    s, t = 20 * torch.randn(8, 10, generator=g), 20 * torch.randn(8, 10, generator=g)
    T = 30.0
    s_model, t_model = s / T, t / T  # what the reference's models output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KLDivLoss()'s "mean" warning: the reference's default
        fl = torch.nn.KLDivLoss()(F.log_softmax(s_model / T, dim=1), F.softmax(t_model / T, dim=1))
    want = 1.0 * T * T * fl + (1.0 - 1.0) * F.cross_entropy(s_model / T, torch.zeros(8, dtype=torch.long))
    got = rrm.kd_rrm_loss(student_logits=s, teacher_logits=t, tau=T)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    # against the textbook kd (kd_lambda = 0): kd of the logits divided by T, divided by the classes
    kd = objectives.kd_loss(student_logits=s / T, teacher_logits=t / T, labels=torch.zeros(8, dtype=torch.long),
                            tau=T, lam=0.0)
    torch.testing.assert_close(got, kd / 10, rtol=1e-4, atol=0)  # kd works in log space: rounding apart
    plain = objectives.kd_loss(student_logits=s, teacher_logits=t, labels=torch.zeros(8, dtype=torch.long), tau=T, lam=0.0)
    assert abs(got.item() / plain.item() - 1) > 0.5  # not the same loss
    # a hand case at T = 1, one sample, two classes: KL((3/4, 1/4) || (1/2, 1/2)), then / 2 classes
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    s1, t1 = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert rrm.kd_rrm_loss(student_logits=s1, teacher_logits=t1, tau=1.0).item() == pytest.approx(kl / 2, rel=1e-6)
    assert objectives.kd_loss(student_logits=s1, teacher_logits=t1, labels=torch.tensor([0]), tau=1.0,
                              lam=0.0).item() == pytest.approx(kl, rel=1e-6)


def test_kd_rrm_objective_distils_from_the_teacher_at_thirty(synth, batch):
    x, y = batch
    teacher, student = net(synth, seed=3).eval(), net(synth, seed=4).eval()
    cfg = train.TrainConfig(objective="kd_rrm")
    assert cfg.hyper.tau == 30.0
    loss, logits, record = OBJECTIVES["kd_rrm"].loss(student, x, y, cfg, ctx_for(teacher))
    with torch.no_grad():
        want = rrm.kd_rrm_loss(student_logits=student(x), teacher_logits=teacher(x), tau=30.0)
    assert record is None and loss.item() == pytest.approx(want.item(), rel=1e-6)


# --- configurations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(objective="fgsm_rs", fgsm_alpha=0.0), r"^fgsm_alpha must be > 0, got 0.0$"),
    (dict(objective="fgsm_rs", at_eps=-1.0), r"^at_eps must be > 0, got -1.0$"),
    (dict(objective="free_at", free_m=0), r"^free_m must be an int >= 1, got 0$"),
    (dict(objective="free_at", free_m=2.0), r"^free_m must be an int >= 1, got 2.0$"),
    (dict(objective="rrm", rrm_lambda=-0.1), r"^rrm_lambda must be >= 0, got -0.1$"),
    (dict(objective="kd_rrm", kd_tau=0.0), r"^kd_tau must be > 0, got 0.0$"),
    (dict(objective="fgsm_rs", at_norm="l2"), r"^objective 'fgsm_rs' takes no 'at_norm' \(a setting of pgd_at\)"),
])
def test_a_bad_setting_fails_with_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train.TrainConfig.build(**kwargs)


def test_the_chapter_registers_its_objectives_with_their_defaults():
    assert {k: OBJECTIVES[k] for k in rrm.OBJECTIVES} == rrm.OBJECTIVES
    assert [(n, o.needs_teacher, o.match_features) for n, o in rrm.OBJECTIVES.items()] == [
        ("fgsm_rs", False, False), ("free_at", False, False), ("rrm", True, True), ("kd_rrm", True, False)]
    assert not any(o.match_features for n, o in OBJECTIVES.items() if n != "rrm")
    assert objectives.hyper_keywords(rrm.FGSMRSConfig()) == dict(at_norm="linf", at_eps=8 / 255, fgsm_alpha=1.25)
    assert objectives.hyper_keywords(rrm.FreeATConfig()) == dict(at_norm="linf", at_eps=8 / 255, free_m=8)
    assert objectives.hyper_keywords(rrm.RRMConfig()) == dict(rrm_lambda=0.005)
    assert objectives.hyper_keywords(rrm.KDRRMConfig()) == dict(kd_tau=30.0)


# --- models whose features match a teacher's -----------------------------------------------------------

def test_feature_dim_appends_a_linear_map_and_changes_nothing_else(synth):
    plain = net(synth)
    assert same(weights(plain), weights(net(synth, feature_dim=None)))
    assert same(weights(plain), weights(net(synth, feature_dim=64)))  # tiny_cnn's own dimension
    matched = net(synth, feature_dim=128)
    added = matched.body[-1]
    assert isinstance(added, torch.nn.Linear) and (added.in_features, added.out_features) == (64, 128)
    assert matched.head.in_features == 128 and matched.features(torch.rand(2, 3, 8, 8)).shape == (2, 128)
    extra = {f"body.{len(plain.body)}.weight", f"body.{len(plain.body)}.bias"}
    assert set(matched.state_dict()) - set(plain.state_dict()) == extra
    assert all(matched.state_dict()[k].shape == v.shape for k, v in plain.state_dict().items() if k != "head.weight")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"^feature_dim must be None or an int >= 1, got {bad!r}$"):
            net(synth, feature_dim=bad)


def test_the_new_architectures_have_the_reference_sizes(synth):
    # counted from the reference's robustness/cifar_models/resnet.py ResNet50(num_classes=10), whose
    # added_linear maps 2048 -> 512, and from kuangliu's CIFAR ResNet-50 without it
    assert net(synth, "micro_cnn").head.in_features == 32
    big = build_model("resnet50", num_classes=10, mean=synth.mean, std=synth.std)
    assert big.head.in_features == 2048 and sum(p.numel() for p in big.parameters()) == 23_520_842
    big512 = build_model("resnet50", num_classes=10, mean=synth.mean, std=synth.std, feature_dim=512)
    assert sum(p.numel() for p in big512.parameters()) == 24_554_570


@pytest.fixture(scope="module")
def small_teacher(synth):
    """A small_cnn (128-d features) trained for one epoch: the teacher of the matching tests."""
    return train.train_model(model_name="small_cnn", dataset=synth, seed=0, train_index=INDEX,
                             cfg=train.TrainConfig(epochs=1, batch_size=50, lr=0.05))


def test_rrm_student_gets_the_teacher_s_dimension_and_trains(synth, small_teacher, fresh_cache):
    cfg = train.TrainConfig.build("rrm", epochs=3, batch_size=25, lr=0.05, rrm_lambda=0.005)
    student = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=0, train_index=INDEX,
                                teacher=small_teacher)
    added = student.model.body[-1]
    assert isinstance(added, torch.nn.Linear) and (added.in_features, added.out_features) == (64, 128)
    losses = [row["loss"] for row in student.meta["history"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    again = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=0, train_index=INDEX,
                              teacher=small_teacher)  # the cached weights load into the matched model
    assert again.from_cache and same(weights(again.model), weights(student.model))
    with pytest.raises(ValueError, match=r"^objective 'rrm' matches a teacher's features and needs a teacher model$"):
        train.build_student(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=0)


def test_other_objectives_build_the_model_as_before(synth, small_teacher):
    plain = net(synth)
    for cfg, teacher in ((train.TrainConfig(), None), (train.TrainConfig(), small_teacher),
                         (train.TrainConfig(objective="kd"), small_teacher),
                         (train.TrainConfig(objective="kd_rrm"), small_teacher),
                         (train.TrainConfig(objective="free_at"), None)):
        model, _ = train.build_student(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=0, teacher=teacher)
        assert same(weights(model), weights(plain)), cfg.objective


# --- timing ------------------------------------------------------------------------------------------

def test_time_training_gives_one_row_per_run_and_repeat_interleaved(synth, small_teacher, monkeypatch):
    calls = []
    real = timing.train_step
    monkeypatch.setattr(timing, "train_step", lambda *a, **kw: calls.append(kw["cfg"].objective) or real(*a, **kw))
    runs = {"standard": dict(model_name="tiny_cnn", cfg=train.TrainConfig(epochs=5, batch_size=16)),
            "rrm": dict(model_name="micro_cnn", cfg=train.TrainConfig.build("rrm", epochs=2, batch_size=16),
                        teacher=small_teacher),
            "teacher": dict(model_name="small_cnn", cfg=train.TrainConfig(epochs=3, batch_size=32), n_train=400)}
    rows = timing.time_training(runs=runs, dataset=synth, train_index=INDEX, n_batches=2, repeats=2, seed=0,
                                device="cpu")
    assert [(r["method"], r["repeat"]) for r in rows] == [(m, k) for k in range(2) for m in runs]
    assert calls == ["standard"] * 3 + ["rrm"] * 3 + ["standard"] * 3 + ["standard"] * 3 + ["rrm"] * 3 + ["standard"] * 3
    for r in rows:
        cfg, n_train = runs[r["method"]]["cfg"], runs[r["method"]].get("n_train", 100)
        assert r["seconds_per_batch"] > 0 and r["n_train"] == n_train
        assert r["batches_per_epoch"] == math.ceil(n_train / cfg.batch_size) and r["epochs"] == cfg.epochs
        assert r["seconds_per_epoch"] == r["seconds_per_batch"] * r["batches_per_epoch"]
        assert r["seconds_per_run"] == r["seconds_per_epoch"] * cfg.epochs
        assert r["device"].startswith("cpu (") and r["threads"] == torch.get_num_threads()
    assert [r["batches_per_epoch"] for r in rows[:3]] == [7, 7, 13]


def test_a_free_at_minibatch_costs_its_replays(synth):
    runs = {f"m{m}": dict(model_name="tiny_cnn", cfg=train.TrainConfig.build("free_at", free_m=m, batch_size=64))
            for m in (1, 4)}
    rows = timing.time_training(runs=runs, dataset=synth, train_index=None, n_batches=4, repeats=3, seed=0,
                                device="cpu")
    per = {m: sorted(r["seconds_per_batch"] for r in rows if r["method"] == m)[1] for m in runs}  # medians
    assert per["m4"] > 1.5 * per["m1"]


@pytest.mark.parametrize("change,message", [
    (dict(n_batches=0), r"^n_batches must be an int >= 1, got 0$"),
    (dict(repeats=0), r"^repeats must be an int >= 1, got 0$"),
    (dict(runs={}), r"^runs must be a non-empty dict"),
    (dict(runs={"a": dict(model_name="tiny_cnn")}), r"^run 'a' must be a dict with model_name and cfg"),
    (dict(runs={"a": dict(model_name="tiny_cnn", cfg=train.TrainConfig(), seeds=3)}),
     r"^run 'a' must be a dict with model_name and cfg \(optional: teacher, n_train\), got \['cfg', 'model_name', 'seeds'\]$"),
    (dict(runs={"a": dict(model_name="resnet19", cfg=train.TrainConfig())}), r"^run 'a': unknown model 'resnet19'; valid: "),
    (dict(runs={"a": dict(model_name="tiny_cnn", cfg={"objective": "standard"})}),
     r"^run 'a': cfg must be a TrainConfig, got dict$"),
    (dict(runs={"a": dict(model_name="tiny_cnn", cfg=train.TrainConfig(objective="rrm"))}),
     r"^run 'a': objective 'rrm' needs a teacher \(a TrainedModel\)$"),
    (dict(runs={"a": dict(model_name="tiny_cnn", cfg=train.TrainConfig(), n_train=0)}),
     r"^run 'a': n_train must be an int >= 1, got 0$"),
    (dict(train_index=torch.arange(0)), r"^train_index must select at least one training image$"),
])
def test_time_training_refuses_bad_input_before_any_work(synth, change, message, monkeypatch):
    monkeypatch.setattr(timing, "build_student", lambda **kw: pytest.fail("built a model"))
    kw = dict(runs={"a": dict(model_name="tiny_cnn", cfg=train.TrainConfig())}, dataset=synth, train_index=INDEX,
              n_batches=1, repeats=1, seed=0, device="cpu")
    with pytest.raises(ValueError, match=message) as info:
        timing.time_training(**{**kw, **change})
    assert "\n" not in str(info.value)

"""The lecture's defenses (LEC-F11) and the adaptive attacks that break them: each defense's wrapper,
then the plain attack that fails (the negative control) and the adaptive one that works
(EOT, BPDA, the margin loss), and the ALP and distillation objectives against their formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advbook import data
from advbook.attacks.adaptive import BPDA, EOT, bpda_identity, loss_pgd, margin_pgd
from advbook.attacks.core import margin, pgd
from advbook.evaluation import evaluate
from advbook.models.defended import (NoiseLayers, Purified, Purifier, Quantize, RandomResizePad,
                                     is_randomized)
from advbook.training import lecture, train
from advbook.training.framework import StepContext


def _grad(model, x, loss):
    """The gradient of ``loss(model(x))`` with respect to ``x``."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(model(x)), x)
    return g


# ---- the wrappers ---------------------------------------------------------------------------------

def test_randomized_flags_look_through_the_whole_model(tiny_model):
    noisy, rrp = NoiseLayers(tiny_model, sigma=0.1), RandomResizePad(tiny_model, out_size=12)
    assert noisy.randomized and rrp.randomized and is_randomized(noisy) and is_randomized(rrp)
    for deterministic in (tiny_model, Quantize(bits=3), Purifier(), Purified(tiny_model, Quantize(bits=3)),
                          Purified(tiny_model, Purifier()), EOT(tiny_model, samples=3),
                          BPDA(Quantize(bits=3), tiny_model)):
        assert not is_randomized(deterministic), type(deterministic).__name__
        assert getattr(deterministic, "randomized", False) is False
    for randomised in (Purified(noisy, Quantize(bits=3)), Purified(tiny_model, NoiseLayers(nn.Identity(), sigma=0.1)),
                       EOT(rrp, samples=3), BPDA(Quantize(bits=3), noisy), nn.Sequential(noisy)):
        assert is_randomized(randomised), type(randomised).__name__
    assert Purified(noisy, Quantize(bits=3)).randomized and EOT(rrp, samples=2).randomized


@pytest.mark.parametrize("make", [lambda m, seed: NoiseLayers(m, sigma=0.1, seed=seed),
                                  lambda m, seed: RandomResizePad(m, out_size=12, seed=seed)],
                         ids=["noise", "resize_pad"])
def test_a_randomized_wrapper_is_reproducible_from_its_own_seed_only(tiny_model, test_batch, make):
    x = test_batch[0]
    a, b, other = make(tiny_model, 3), make(tiny_model, 3), make(tiny_model, 4)
    with torch.no_grad():
        state = torch.get_rng_state()
        first = a(x)
        assert torch.equal(torch.get_rng_state(), state)            # the global RNG is not touched
        torch.manual_seed(123)                                      # nor read
        assert torch.equal(b(x), first)                             # same seed, same first call
        second = a(x)
        assert not torch.equal(second, first)                       # a new draw at every call
        assert not torch.equal(other(x), first)
        a.reseed(3)
        assert torch.equal(a(x), first) and torch.equal(a(x), second)  # reseed restarts the stream


def test_random_resize_pad_puts_a_nearest_resize_at_a_random_place_on_a_zero_canvas(tiny_model):
    x = 0.01 + 0.99 * torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # no zero pixel
    rrp = RandomResizePad(tiny_model, out_size=12, seed=1)
    out = rrp.transform(x)
    assert out.shape == (64, 3, 12, 12) and out.min() >= 0 and out.max() <= 1
    sizes = []
    for i in range(64):
        rows, cols = out[i].amax(dim=(0, 2)).nonzero().flatten(), out[i].amax(dim=(0, 1)).nonzero().flatten()
        r, top, left = len(rows), rows[0].item(), cols[0].item()
        assert len(cols) == r and 8 <= r < 12                      # a size in [in, out)
        assert 0 <= top < 12 - r and 0 <= left < 12 - r             # offsets in [0, out - r): zeros follow
        expected = F.interpolate(x[i:i + 1], size=(r, r), mode="nearest")[0]
        assert torch.equal(out[i, :, top:top + r, left:left + r], expected)
        sizes.append(r)
    assert len(set(sizes)) == 4                                     # one draw per sample: every size occurs
    with torch.no_grad():
        assert rrp(x).shape == (64, 4)                              # tiny_cnn pools adaptively: any size
    back = RandomResizePad(tiny_model, out_size=12, resize_back=True).transform(x)
    assert back.shape == x.shape and back.min() >= 0 and back.max() <= 1
    with pytest.raises(ValueError, match=r"^RandomResizePad needs square inputs smaller than out_size=8, got 8x8$"):
        RandomResizePad(tiny_model, out_size=8).transform(x)


def test_noise_layers_add_gaussian_noise_of_sigma_to_the_input(tiny_model, test_batch):
    x = test_batch[0]
    noise = NoiseLayers(tiny_model, sigma=0.1).transform(x) - x
    assert abs(noise.mean().item()) < 0.005 and noise.std().item() == pytest.approx(0.1, rel=0.03)  # 12288 draws
    assert torch.equal(NoiseLayers(tiny_model, sigma=0.0).transform(x), x)
    with pytest.raises(ValueError, match=r"^sigma must be >= 0, got -0.1$"):
        NoiseLayers(tiny_model, sigma=-0.1)


def test_quantize_rounds_to_the_levels_and_has_a_zero_gradient(tiny_model, test_batch):
    q = Quantize(bits=2)  # levels 0, 1/3, 2/3, 1
    assert torch.equal(q(torch.tensor([0.0, 0.16, 0.17, 0.5, 0.84, 1.0])),
                       torch.tensor([0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]))
    g = _grad(Purified(tiny_model, Quantize(bits=4)), test_batch[0], lambda z: z.sum())
    assert torch.equal(g, torch.zeros_like(g))                      # shattered: exactly zero everywhere
    with pytest.raises(ValueError, match=r"^bits must be in 1..16, got 0$"):
        Quantize(bits=0)


def test_the_purifier_learns_to_denoise_and_keeps_images_in_range(synth):
    images = data.to_float(synth.train.images)
    purifier = Purifier(width=8, seed=0)
    assert torch.equal(Purifier(width=8, seed=0).net[0].weight, purifier.net[0].weight)  # seeded init
    losses = purifier.fit(images, sigma=0.2, steps=100, batch_size=32, lr=1e-2, seed=0)
    assert not purifier.training and losses[-1] < 0.7 * losses[0]
    x = data.to_float(synth.test.images[:64])
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    with torch.no_grad():
        out = purifier(noisy)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert F.mse_loss(out, x) < F.mse_loss(noisy, x)                # closer to the clean images than its input


# ---- EOT ------------------------------------------------------------------------------------------

def test_eot_over_a_deterministic_model_is_the_plain_attack(tiny_model, test_batch):
    x, y, _ = test_batch
    kw = dict(eps=8 / 255, step_size=2 / 255, steps=5, random_start=True, stop_on_success=False)
    plain = pgd(tiny_model, x, y, **kw)
    one = pgd(EOT(tiny_model, samples=1), x, y, **kw)
    assert torch.equal(one.x_adv, plain.x_adv) and torch.equal(one.success, plain.success)
    five = pgd(EOT(tiny_model, samples=5), x, y, **kw)            # the mean of 5 equal logits, to float precision
    assert torch.allclose(five.x_adv, plain.x_adv, atol=1e-6) and torch.equal(five.success, plain.success)


class _Square(nn.Module):
    """logits = (x * x) W^T on flattened inputs: with Gaussian input noise the expected gradient of
    v . logits is 2 x * (W^T v), while one draw's is 2 (x + sigma eps) * (W^T v)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return (x.flatten(1) ** 2) @ self.weight.T


def test_eot_gradient_converges_to_the_expected_gradient():
    g = torch.Generator().manual_seed(0)
    weight, v = torch.randn(3, 48, generator=g), torch.randn(16, 3, generator=g)
    x = torch.rand(16, 3, 4, 4, generator=g)
    noisy = NoiseLayers(_Square(weight), sigma=0.2, seed=0)
    expected = (2 * x.flatten(1) * (v @ weight)).view_as(x)
    err = {}
    for k in (1, 16, 256):
        noisy.reseed(k)
        err[k] = (_grad(EOT(noisy, samples=k), x, lambda z: (v * z).sum()) - expected).norm().item()
    scale = (2 * 0.2 * (v @ weight)).norm().item()  # E|error|^2 = 4 sigma^2 |W^T v|^2 / k
    assert err[1] == pytest.approx(scale, rel=0.2)
    assert err[16] == pytest.approx(scale / 4, rel=0.2) and err[256] == pytest.approx(scale / 16, rel=0.2)


class _Cycle(nn.Module):
    """A 'randomised' model whose draws are known: it returns the logits of ``table`` in turn."""
    randomized = True

    def __init__(self, table):
        super().__init__()
        self.table, self.calls = table, 0

    def forward(self, x):
        self.calls += 1
        return self.table[(self.calls - 1) % len(self.table)].expand(len(x), -1)


def test_eot_averages_logits_or_probabilities_on_a_hand_case():
    z1, z2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # softmax (1/2, 1/2) and (3/4, 1/4)
    x = torch.zeros(1, 1)
    assert torch.allclose(EOT(_Cycle([z1, z2]), samples=2)(x), torch.tensor([[math.log(3.0) / 2, 0.0]]))
    probs = EOT(_Cycle([z1, z2]), samples=2, average="probs")(x)
    assert torch.allclose(probs, torch.log(torch.tensor([[5 / 8, 3 / 8]])), atol=1e-6)
    with pytest.raises(ValueError, match=r"^unknown average 'median'; valid: logits, probs$"):
        EOT(_Cycle([z1]), samples=2, average="median")
    with pytest.raises(ValueError, match=r"^samples must be >= 1, got 0$"):
        EOT(_Cycle([z1]), samples=0)


def test_eot_is_foolbox_s_expectation_over_transformation_wrapper(tiny_model, test_batch):
    fb = pytest.importorskip("foolbox")
    x = test_batch[0]
    noisy = NoiseLayers(tiny_model, sigma=0.1, seed=5).eval()
    reference = fb.models.ExpectationOverTransformationWrapper(fb.PyTorchModel(noisy, bounds=(0, 1)), n_steps=7)(x)
    noisy.reseed(5)
    with torch.no_grad():
        assert torch.equal(EOT(noisy, samples=7)(x), reference)


# ---- BPDA -----------------------------------------------------------------------------------------

def test_bpda_forwards_the_preprocessor_exactly_and_backwards_the_identity(tiny_model, test_batch):
    x, q = test_batch[0], Quantize(bits=3)
    assert torch.equal(bpda_identity(q)(x), q(x))
    with torch.no_grad():
        assert torch.equal(BPDA(q, tiny_model)(x), Purified(tiny_model, q)(x))
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_grad(bpda_identity(q), x, lambda v: (w * v).sum()), w)            # the identity's
    assert torch.equal(_grad(bpda_identity(q, approx=lambda v: 2 * v), x, lambda v: (w * v).sum()), 2 * w)
    # through a model: the gradient the undefended model has at the quantised input
    g = _grad(BPDA(q, tiny_model), x, lambda z: z[:, 0].sum())
    assert torch.allclose(g, _grad(tiny_model, q(x), lambda z: z[:, 0].sum()))


def test_pgd_through_rounding_does_not_move_and_bpda_breaks_it(tiny_model, test_batch):
    x = test_batch[0]
    defended = Purified(tiny_model, Quantize(bits=4))
    with torch.no_grad():
        y = defended(x).argmax(1)                                   # the defended model's own decisions
    kw = dict(eps=0.1, step_size=0.025, steps=10)
    plain = pgd(defended, x, y, **kw)                               # the negative control
    assert not plain.success.any() and torch.equal(plain.linf, torch.zeros(len(x)))
    adaptive = pgd(BPDA(defended.purifier, defended.model), x, y, **kw)
    with torch.no_grad():
        fooled = defended(adaptive.x_adv).argmax(1) != y            # judged on the real defense
    assert torch.equal(fooled, adaptive.success) and fooled.float().mean() >= 0.9
    assert adaptive.linf.max() <= 0.1 + 1e-6


# ---- the margin loss and defensive distillation --------------------------------------------------

@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
@pytest.mark.parametrize("random_start,stop", [(False, True), (True, False)])
def test_loss_pgd_with_the_cross_entropy_is_core_pgd(tiny_model, test_batch, norm, eps, step, random_start, stop):
    x, y, _ = test_batch
    kw = dict(norm=norm, eps=eps, step_size=step, steps=4, random_start=random_start, stop_on_success=stop, seed=2)
    a, b = pgd(tiny_model, x, y, **kw), loss_pgd(tiny_model, x, y, loss="ce", **kw)
    for field in ("x_adv", "success", "steps", "l2", "linf"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    with pytest.raises(ValueError, match=r"^unknown loss 'hinge'; valid: ce, margin$"):
        loss_pgd(tiny_model, x, y, loss="hinge", eps=eps, step_size=step, steps=1)


def test_margin_pgd_follows_the_runner_up_where_the_cross_entropy_does_not(affine):
    # logits (2, x0 + x1, 10 (x1 - x0)) at x = (1/2, 1/2): (2, 1, 0), class 0 correct, runner-up class 1.
    # The margin's gradient is that of class 1's logit, (1, 1); the cross-entropy's is
    # p1 (1, 1) + p2 (-10, 10) with p = softmax(2, 1, 0), negative in the first pixel. One sign step each:
    model = affine(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-10.0, 10.0]]), torch.tensor([2.0, 0.0, 0.0]))
    x, y = torch.full((1, 2), 0.5), torch.tensor([0])
    kw = dict(eps=0.1, step_size=0.05, steps=1, stop_on_success=False)
    assert torch.allclose(margin_pgd(model, x, y, **kw).x_adv, torch.tensor([[0.55, 0.55]]))
    assert torch.allclose(loss_pgd(model, x, y, loss="ce", **kw).x_adv, torch.tensor([[0.45, 0.55]]))


@pytest.fixture(scope="module")
def distilled(synth):
    """Defensive distillation at T = 100 on the synthetic set: a teacher trained at T, a student
    trained at T on its soft labels; both used at T = 1."""
    settings = dict(epochs=6, batch_size=50, lr=0.05, distill_t=100.0)
    teacher = train.train_model(model_name="tiny_cnn", dataset=synth, seed=0,
                                cfg=train.TrainConfig.build(objective="temperature_standard", **settings))
    student = train.train_model(model_name="tiny_cnn", dataset=synth, seed=0, teacher=teacher,
                                cfg=train.TrainConfig.build(objective="distillation", **settings))
    return student.model.eval()


def _correct(model, x, y):
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok], y[ok]


def test_distillation_masks_the_cross_entropy_gradient_and_margin_pgd_breaks_it(distilled, tiny_model, synth):
    """Carlini & Wagner (2016): at T = 1 the distilled softmax is one-hot in float32, the
    cross-entropy's gradient is exactly zero and PGD does not move; the margin's is not."""
    x, y = _correct(distilled, data.to_float(synth.test.images[:64]), synth.test.labels[:64])
    assert len(x) >= 16
    g_ce = _grad(distilled, x, lambda z: F.cross_entropy(z, y, reduction="sum")).flatten(1)
    g_margin = _grad(distilled, x, lambda z: -margin(z, y).sum()).flatten(1)
    masked = g_ce.abs().amax(1) == 0
    assert masked.float().mean() >= 0.25 and (g_margin.norm(dim=1) > 0).all()
    kw = dict(eps=0.1, step_size=0.025, steps=10)
    ce, mg = pgd(distilled, x, y, **kw), margin_pgd(distilled, x, y, **kw)
    assert torch.equal(ce.linf[masked], torch.zeros(int(masked.sum()))) and not ce.success[masked].any()
    assert mg.success[masked].all()
    assert mg.success.float().mean() >= ce.success.float().mean() + 0.25
    # the control: on the standard tiny model the two losses do about equally well, no gradient vanishes
    x0, y0 = _correct(tiny_model, data.to_float(synth.test.images[:64]), synth.test.labels[:64])
    assert (_grad(tiny_model, x0, lambda z: F.cross_entropy(z, y0, reduction="sum")).flatten(1).norm(dim=1) > 0).all()
    kw0 = dict(eps=8 / 255, step_size=2 / 255, steps=10)
    ce0, mg0 = pgd(tiny_model, x0, y0, **kw0), margin_pgd(tiny_model, x0, y0, **kw0)
    assert abs(ce0.success.float().mean() - mg0.success.float().mean()) <= 0.1


def test_the_temperature_losses_on_hand_cases():
    teacher, student = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    # soft labels softmax((1, 0)); the student's softmax at T is uniform: CE = log 2, times T = 2
    assert lecture.distillation_loss(student_logits=student, teacher_logits=teacher,
                                     temperature=2.0).item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert lecture.temperature_ce(teacher, torch.tensor([0]), temperature=2.0).item() == pytest.approx(
        2 * math.log(1 + math.exp(-1)), rel=1e-6)
    with pytest.raises(ValueError, match=r"^distill_t must be > 0, got 0.0$"):
        train.TrainConfig.build(objective="distillation", distill_t=0.0)


# ---- ALP ------------------------------------------------------------------------------------------

def test_alp_loss_on_a_hand_case():
    clean, adv = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    y = torch.tensor([0])
    mixed = (math.log(2) + math.log(4 / 3)) / 2                    # CE of (1/2, 1/2) and of (3/4, 1/4)
    pairing = math.log(3.0) ** 2 / 2                                # squared difference, mean over the 2 classes
    for lam in (0.0, 0.5, 2.0):
        assert lecture.alp_loss(logits_clean=clean, logits_adv=adv, labels=y, lam=lam).item() == pytest.approx(
            mixed + lam * pairing, rel=1e-6)
    with pytest.raises(ValueError, match=r"^alp_lambda must be >= 0, got -1.0$"):
        train.TrainConfig.build(objective="alp", alp_lambda=-1.0)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_alp_objective_is_mixed_ce_on_its_pgd_examples_plus_the_pairing(synth, lam):
    from advbook.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=4, mean=synth.mean, std=synth.std).eval()  # eval: no BN drift
    x, y = data.to_float(synth.train.images[:32]), synth.train.labels[:32]
    cfg = train.TrainConfig.build(objective="alp", at_eps=8 / 255, at_step_size=2 / 255, at_steps=3, alp_lambda=lam)
    ctx = StepContext(seed=4, epoch=0, index=torch.arange(32))
    loss, logits, record = lecture.OBJECTIVES["alp"].loss(model, x, y, cfg, ctx)
    x_adv = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, random_start=True, stop_on_success=False,
                seed=4).x_adv
    clean, adv = model(x), model(x_adv)
    want = (F.cross_entropy(clean, y) + F.cross_entropy(adv, y)) / 2 + lam * ((clean - adv) ** 2).mean()
    assert record is None and torch.allclose(logits, clean, atol=1e-5)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


# ---- the objectives in the training loop ---------------------------------------------------------

@pytest.fixture(scope="module")
def one_step_teacher(synth):
    cfg = train.TrainConfig.build(objective="temperature_standard", epochs=1, batch_size=50, augment=False,
                                  distill_t=10.0)
    return train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=0, train_index=torch.arange(50))


@pytest.mark.parametrize("objective,own", [("alp", dict(at_steps=2, alp_lambda=0.5)),
                                           ("temperature_standard", dict(distill_t=10.0)),
                                           ("distillation", dict(distill_t=10.0))])
def test_each_lecture_objective_trains_one_step(synth, one_step_teacher, objective, own):
    cfg = train.TrainConfig.build(objective=objective, epochs=1, batch_size=50, augment=False, **own)
    trained = train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=1, train_index=torch.arange(50),
                                teacher=one_step_teacher if objective == "distillation" else None)
    history = trained.meta["history"]
    assert len(history) == 1 and math.isfinite(history[0]["loss"]) and trained.meta["config"]["objective"] == objective
    if objective == "distillation":
        assert trained.meta["teacher"] == one_step_teacher.key
        with pytest.raises(ValueError, match=r"^objective 'distillation' needs a teacher model$"):
            train.train_model(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=1, train_index=torch.arange(50))


@pytest.mark.parametrize("objective,kwargs,message", [
    ("alp", dict(kd_tau=2.0), r"^objective 'alp' takes no 'kd_tau' \(a setting of kd, kd_rrm\); valid: epochs, batch_size, "
                              r"lr, momentum, weight_decay, warmup, augment, objective, at_eps, at_step_size, "
                              r"at_steps, alp_lambda$"),
    ("alp", dict(at_norm="l2"), r"^objective 'alp' takes no 'at_norm' \(a setting of pgd_at\); valid: .*, alp_lambda$"),
    ("distillation", dict(alp_lambda=0.5), r"^objective 'distillation' takes no 'alp_lambda' \(a setting of alp\); "
                                           r"valid: .*, objective, distill_t$"),
    ("trades", dict(distill_t=10.0), r"^objective 'trades' takes no 'distill_t' \(a setting of temperature_standard, "
                                     r"distillation\); valid: .*, trades_beta$"),
])
def test_a_foreign_keyword_fails_in_one_line(objective, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        train.TrainConfig.build(objective=objective, **kwargs)
    assert "\n" not in str(info.value)


# ---- the evaluation cache --------------------------------------------------------------------------

def test_evaluate_refuses_to_cache_the_flags_of_a_randomized_model(tiny_model, test_batch, tmp_path):
    x, _, y = test_batch
    attacks = {"fgsm": dict(eps=8 / 255)}
    with pytest.raises(ValueError, match=r"^evaluate: resume_dir caches flags as a deterministic function of the "
                                         r"settings, and NoiseLayers is randomised"):
        evaluate.evaluate(NoiseLayers(tiny_model, sigma=0.1), x, y, attacks=attacks, resume_dir=tmp_path)
    assert not any(tmp_path.iterdir())                              # refused before any work
    res = evaluate.evaluate(NoiseLayers(tiny_model, sigma=0.1), x, y, attacks=attacks)  # without a cache: fine
    assert len(res.robust) == len(x)

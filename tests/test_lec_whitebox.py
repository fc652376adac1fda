"""The LEC chapter's white-box attacks: FGSM, C&W-L2, JSMA and universal perturbations.

Closed forms on affine models where the math gives them; foolbox 3.3.4 (FGSM, C&W-L2) and ART 1.20.1
(JSMA, universal perturbation) on the tiny CNN where it does not; budgets, ranges, reruns and errors.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advbook.attacks.cw import SQUEEZE, cw_l2, from_tanh_space, to_tanh_space
from advbook.attacks.fgsm import fgsm
from advbook.attacks.jsma import _best_pair, _pair_scores, forward_derivatives, jsma, saliency_map
from advbook.attacks.universal import fooling_rate, project_ball, universal_perturbation


@pytest.fixture
def mid():
    """Inputs near 0.5, far enough from 0 and 1 that no step of these tests is clipped."""
    g = torch.Generator().manual_seed(0)
    return 0.5 + 0.05 * (2 * torch.rand(6, 3, 4, 4, generator=g) - 1)


@pytest.fixture
def linear(affine):
    torch.manual_seed(0)
    return affine(torch.randn(5, 48), 0.1 * torch.randn(5))


def binary(affine, w: torch.Tensor, margin: float):
    """Two logits with z1 - z0 = w.x + c, and c set so that z1 - z0 = -margin at x = 0.5."""
    return affine(torch.stack([torch.zeros_like(w), w]), torch.tensor([0.0, -margin - 0.5 * w.sum().item()]))


def art_classifier(model, shape, classes):
    art = pytest.importorskip("art.estimators.classification")
    return art.PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=shape, nb_classes=classes,
                                 clip_values=(0.0, 1.0), device_type="cpu")


# ---------------------------------------------------------------- FGSM

def test_fgsm_is_eps_times_the_sign_of_the_closed_form_gradient(linear, mid):
    W, b = linear.weight.detach().double(), linear.bias.detach().double()
    with torch.no_grad():
        y = linear(mid).argmax(1)
    t = (y + 2) % 5
    xd = mid.flatten(1).double()
    p = torch.softmax(xd @ W.T + b, dim=1)
    grad_y = (p - F.one_hot(y, 5)) @ W      # d CE(x, y) / dx for logits W x + b
    grad_t = (p - F.one_hot(t, 5)) @ W
    eps = 0.03
    up = fgsm(linear, mid, y, eps=eps)
    down = fgsm(linear, mid, y, eps=eps, targeted=True, target=t)
    torch.testing.assert_close(up.x_adv.flatten(1), (xd + eps * grad_y.sign()).float())
    torch.testing.assert_close(down.x_adv.flatten(1), (xd - eps * grad_t.sign()).float())
    assert torch.allclose(up.linf, torch.tensor(eps)) and torch.allclose(down.linf, torch.tensor(eps))


def test_targeted_fgsm_raises_the_target(linear, mid, tiny_model, test_batch):
    # affine: log p_t is concave with gradient g, so a step of eps * sign(g) gains eps |g|_1 - O(eps^2)
    with torch.no_grad():
        y = linear(mid).argmax(1)
    t = (y + 1) % 5
    res = fgsm(linear, mid, y, eps=1e-3, targeted=True, target=t)
    with torch.no_grad():
        before, after = (F.log_softmax(linear(z), 1).gather(1, t[:, None]) for z in (mid, res.x_adv))
    assert (after > before).all()
    # the tiny CNN: the target's logit rises for nearly every image, and success means "predicted as t"
    x, pred, _ = test_batch
    t = (pred + 1) % 4
    res = fgsm(tiny_model, x, pred, eps=8 / 255, targeted=True, target=t)
    with torch.no_grad():
        z0, z1 = tiny_model(x), tiny_model(res.x_adv)
    rise = z1.gather(1, t[:, None]) - z0.gather(1, t[:, None])
    assert (rise > 0).float().mean() >= 0.9 and rise.mean() > 0
    assert torch.equal(res.success, z1.argmax(1) == t) and res.success.any()


def test_fgsm_agrees_with_foolbox(tiny_model, test_batch):
    fb = pytest.importorskip("foolbox")
    x, pred, labels = test_batch
    fmodel = fb.PyTorchModel(tiny_model, bounds=(0, 1))
    eps = 8 / 255
    ours = fgsm(tiny_model, x, labels, eps=eps)
    _, theirs, success = fb.attacks.FGSM()(fmodel, x, labels, epsilons=eps)
    torch.testing.assert_close(ours.x_adv, theirs, atol=1e-6, rtol=0)
    assert torch.equal(ours.success, success)
    # foolbox's FGSM refuses targets; its one-step LinfPGD of step eps from x is the same step
    t = (pred + 1) % 4
    ours = fgsm(tiny_model, x, pred, eps=eps, targeted=True, target=t)
    _, theirs, success = fb.attacks.LinfPGD(abs_stepsize=eps, steps=1, random_start=False)(
        fmodel, x, fb.criteria.TargetedMisclassification(t), epsilons=eps)
    torch.testing.assert_close(ours.x_adv, theirs, atol=1e-6, rtol=0)
    assert torch.equal(ours.success, success)


def test_fgsm_budget_range_and_steps(tiny_model, test_batch):
    x, pred, labels = test_batch
    for eps in (0.0, 2 / 255, 16 / 255):
        res = fgsm(tiny_model, x, labels, eps=eps)
        assert (res.linf <= eps + 1e-6).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(fgsm(tiny_model, x, labels, eps=0.0).x_adv, x)
    res = fgsm(tiny_model, x, labels, eps=8 / 255)
    wrong = pred != labels
    assert (res.steps[wrong] == 0).all()
    assert torch.equal(res.steps[~wrong] == 1, res.success[~wrong]) and ((res.steps == -1) == (~res.success & ~wrong)).all()


# ---------------------------------------------------------------- C&W-L2

def test_tanh_change_of_variables_round_trips():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1000, generator=g, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(from_tanh_space(to_tanh_space(x)), x, rtol=0, atol=1e-12)
    w = 8 * torch.rand(1000, generator=g, dtype=torch.float64) - 4
    torch.testing.assert_close(to_tanh_space(from_tanh_space(w)), w, rtol=0, atol=1e-9)
    assert to_tanh_space(torch.tensor([0.0, 0.5, 1.0])).tolist() == [float("-inf"), 0.0, float("inf")]
    ends = from_tanh_space(torch.tensor([float("-inf"), -50.0, 50.0, float("inf")]))
    assert ends.tolist() == [0.0, 0.0, 1.0, 1.0]          # always a valid image
    # the attack's start: the references' squeeze keeps 0 and 1 finite and moves them by < 1e-6
    start = from_tanh_space(to_tanh_space((torch.tensor([0.0, 1.0]) - 0.5) * SQUEEZE + 0.5))
    assert torch.isfinite(to_tanh_space((torch.tensor([0.0, 1.0]) - 0.5) * SQUEEZE + 0.5)).all()
    assert (start - torch.tensor([0.0, 1.0])).abs().max() < 1e-6


@pytest.mark.parametrize("kappa", [0.0, 1.0, 3.0])
def test_cw_l2_finds_the_closed_form_distance_on_a_binary_affine_model(affine, kappa):
    """With logits (0, w.x + c), the smallest perturbation with margin kappa is (margin + kappa) / |w|."""
    torch.manual_seed(1)
    w = torch.randn(48)
    model = binary(affine, w, margin=1.0)
    x = torch.full((1, 3, 4, 4), 0.5)
    res = cw_l2(model, x, torch.tensor([0]), kappa=kappa, initial_const=1.0, binary_steps=6, steps=200, lr=0.01)
    exact = (1.0 + kappa) / w.norm().item()
    assert res.success.item()
    assert exact <= res.l2.item() <= 1.03 * exact, (res.l2.item(), exact)
    with torch.no_grad():
        z = model(res.x_adv)
    assert (z[0, 1] - z[0, 0]).item() >= kappa - 1e-4


def test_cw_l2_agrees_with_foolbox(tiny_model, test_batch):
    """Without early abort the two run the same algorithm: the same successes and L2 to 1e-3. With it,
    foolbox stops a stage when the batch's summed loss stalls and we stop each sample on its own loss:
    the successes agree and the median L2 within 10 %."""
    fb = pytest.importorskip("foolbox")
    x, pred, _ = test_batch
    x, pred = x[:12], pred[:12]
    fmodel = fb.PyTorchModel(tiny_model, bounds=(0, 1))
    settings = dict(initial_const=1e-2, lr=1e-2, kappa=0.0)
    for abort, steps in ((False, 30), (True, 60)):
        ours = cw_l2(tiny_model, x, pred, binary_steps=3, steps=steps, abort_early=abort, **settings)
        raw, _, success = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=3, steps=steps, stepsize=settings["lr"], confidence=0.0,
            initial_const=settings["initial_const"], abort_early=abort)(fmodel, x, pred, epsilons=None)
        theirs = (raw - x).flatten(1).norm(dim=1)
        assert torch.equal(ours.success, success) and success.float().mean() > 0.5
        both = success & ours.success
        if not abort:
            torch.testing.assert_close(ours.l2[both], theirs[both], rtol=1e-3, atol=1e-6)
        else:
            assert abs(ours.l2[both].median() / theirs[both].median() - 1) < 0.10


def test_cw_l2_targeted_reaches_the_target_and_agrees_with_foolbox(tiny_model, test_batch):
    fb = pytest.importorskip("foolbox")
    x, pred, _ = test_batch
    x, pred = x[:12], pred[:12]
    t = (pred + 1) % 4
    ours = cw_l2(tiny_model, x, pred, targeted=True, target=t, initial_const=1e-1, binary_steps=3, steps=40,
                 abort_early=False)
    with torch.no_grad():
        assert torch.equal(tiny_model(ours.x_adv).argmax(1)[ours.success], t[ours.success])
    fmodel = fb.PyTorchModel(tiny_model, bounds=(0, 1))
    raw, _, success = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=3, steps=40, initial_const=1e-1,
                                                       abort_early=False)(
        fmodel, x, fb.criteria.TargetedMisclassification(t), epsilons=None)
    assert torch.equal(ours.success, success) and success.any()
    torch.testing.assert_close(ours.l2[success], (raw - x).flatten(1).norm(dim=1)[success], rtol=1e-3, atol=1e-6)


def test_cw_l2_confidence_costs_distance(tiny_model, test_batch):
    """The distance/confidence trade-off (LEC-F6): a larger kappa, a larger median L2, and every returned
    example has at least the asked-for logit margin."""
    x, pred, _ = test_batch
    x, pred = x[:12], pred[:12]
    medians = []
    for kappa in (0.0, 1.0, 3.0):
        res = cw_l2(tiny_model, x, pred, kappa=kappa, initial_const=1e-1, binary_steps=3, steps=50)
        assert res.success.float().mean() > 0.8
        with torch.no_grad():
            z = tiny_model(res.x_adv[res.success])
        y = pred[res.success]
        gap = z.scatter(1, y[:, None], float("-inf")).amax(1) - z.gather(1, y[:, None]).squeeze(1)
        assert (gap >= kappa - 1e-4).all()
        medians.append(res.l2[res.success].median().item())
    assert medians[0] < medians[1] < medians[2], medians


def test_cw_l2_range_failures_and_reruns(tiny_model, test_batch):
    x, pred, labels = test_batch
    x, pred, labels = x[:16], pred[:16], labels[:16]
    kw = dict(initial_const=1e-3, binary_steps=1, steps=5)       # too weak to succeed everywhere
    a = cw_l2(tiny_model, x, pred, **kw)
    b = cw_l2(tiny_model, x, pred, **kw)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.steps, b.steps)
    assert a.x_adv.min() >= 0 and a.x_adv.max() <= 1
    assert (~a.success).any()
    assert torch.equal(a.x_adv[~a.success], x[~a.success]) and (a.l2[~a.success] == 0).all()
    assert ((a.steps >= 0) == a.success).all()
    wrong = labels != pred                   # already misclassified: the clean image qualifies at once
    res = cw_l2(tiny_model, x, labels, **kw)
    assert wrong.any() and (res.steps[wrong] == 0).all() and (res.l2[wrong] < 1e-5).all()


# ---------------------------------------------------------------- JSMA

def brute_force_pair(alpha: np.ndarray, beta: np.ndarray, domain: np.ndarray):
    """The paper's pairwise map by enumeration, first pair in row-major order on ties."""
    best, where = 0.0, None
    n = len(alpha)
    for p, q in itertools.product(range(n), range(n)):
        if p == q or not (domain[p] and domain[q]):
            continue
        a, b = alpha[p] + alpha[q], beta[p] + beta[q]
        if a > 0 and b < 0 and a * -b > best:
            best, where = a * -b, (p, q)
    return where


def test_saliency_map_of_a_linear_model_is_set_by_its_weights(linear, mid):
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    W = linear.weight.detach()
    alpha = W[t]
    beta = W.sum(0, keepdim=True) - W[t]
    expected = torch.where((alpha > 0) & (beta < 0), alpha * beta.abs(), torch.zeros(()))
    torch.testing.assert_close(saliency_map(linear, mid, t).flatten(1), expected, rtol=1e-5, atol=1e-6)


def test_jsma_first_pair_on_a_linear_model_is_the_best_pair_of_the_weights(linear, mid):
    W = linear.weight.detach().numpy()
    with torch.no_grad():
        pred = linear(mid).argmax(1)
    t = (pred + 1) % 5
    out = jsma(linear, mid, t, theta=1.0, gamma=2 / 48)        # exactly one pair
    for i in range(len(mid)):
        alpha = W[t[i]]
        beta = W.sum(0) - W[t[i]]
        p, q = brute_force_pair(alpha, beta, np.ones(48, bool))
        assert set(out.changed[i].flatten().nonzero().flatten().tolist()) == {p, q}
        assert torch.equal(out.result.x_adv[i].flatten()[[p, q]], torch.ones(2))


def test_pruned_pair_search_equals_the_full_map():
    g = torch.Generator().manual_seed(0)
    n = 3072                                                  # a 32x32 RGB image
    for k in range(3):
        a = torch.randn(n, generator=g)
        b = [-a + 0.3 * torch.randn(n, generator=g), 0.5 * a + torch.randn(n, generator=g), -a][k]
        domain = torch.rand(n, generator=g) > 0.2
        idx = domain.nonzero().squeeze(1)
        full = _pair_scores(a[idx], -b[idx]).flatten().argmax().item()
        expected = (idx[full // len(idx)].item(), idx[full % len(idx)].item())
        assert _best_pair(a, -b, domain) == expected


def test_jsma_equals_art_where_beta_is_minus_alpha(affine):
    """Class weights that sum to zero over classes make beta = -alpha: the pairwise map then picks the
    two largest alphas, ART's rule, and the two attacks change the same features in the same order."""
    pytest.importorskip("art")
    from art.attacks.evasion import SaliencyMapMethod

    torch.manual_seed(2)
    W = torch.randn(4, 48)
    model = affine(W - W.mean(0, keepdim=True), 0.1 * torch.randn(4))
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.rand(8, 3, 4, 4, generator=g)
    with torch.no_grad():
        t = (model(x).argmax(1) + 1) % 4
    ours = jsma(model, x, t, theta=1.0, gamma=1.0)
    art = SaliencyMapMethod(art_classifier(model, (3, 4, 4), 4), theta=1.0, gamma=1.0, batch_size=8,
                            verbose=False).generate(x.numpy(), y=t.numpy())
    assert ours.result.success.all()
    torch.testing.assert_close(ours.result.x_adv, torch.from_numpy(art), rtol=0, atol=0)


def test_jsma_first_pair_against_art_on_the_tiny_cnn(tiny_model, test_batch):
    """Where the two differ, and why: ART's first pair is the two largest target derivatives (alpha
    alone); ours maximises the paper's pairwise map, which also weighs the other classes (beta). They
    agree on most images of the tiny CNN (alpha and -beta are nearly parallel), and where they differ
    ours scores strictly higher on the pairwise map."""
    pytest.importorskip("art")
    from art.attacks.evasion import SaliencyMapMethod

    x, pred, _ = test_batch
    x, pred = x[:32], pred[:32]
    t = (pred + 1) % 4
    n = x[0].numel()
    ours = jsma(tiny_model, x, t, theta=1.0, gamma=2 / n).changed.flatten(1)       # one pair
    art = SaliencyMapMethod(art_classifier(tiny_model, tuple(x.shape[1:]), 4), theta=1.0, gamma=1 / n,
                            batch_size=32, verbose=False).generate(x.numpy(), y=t.numpy())
    art = torch.from_numpy(art != x.numpy()).flatten(1)                            # ART stops after one pair
    assert (ours.sum(1) == 2).all() and (art.sum(1) == 2).all()
    alpha, beta = (d.flatten(1) for d in forward_derivatives(tiny_model, x, t))
    top2 = alpha.masked_fill(x.flatten(1) >= 1, float("-inf")).topk(2, dim=1).indices
    assert torch.equal(art, torch.zeros_like(art).scatter(1, top2, True))           # ART: the top two alphas

    def score(mask):
        a, b = (alpha * mask).sum(1), (beta * mask).sum(1)
        return torch.where((a > 0) & (b < 0), a * -b, torch.zeros(()))

    same = (ours == art).all(1)
    assert 0.5 <= same.float().mean() < 1, same.float().mean()
    assert (score(ours)[~same] > score(art)[~same]).all()
    for i in range(4):                                                             # ours: the full map's best pair
        p, q = brute_force_pair(alpha[i].numpy(), beta[i].numpy(), (x[i].flatten() < 1).numpy())
        assert set(ours[i].nonzero().flatten().tolist()) == {p, q}


def test_jsma_budget_mask_and_success(tiny_model, test_batch):
    x, pred, _ = test_batch
    x, pred = x[:16], pred[:16]
    t = (pred + 2) % 4
    gamma = 0.1
    out = jsma(tiny_model, x, t, theta=1.0, gamma=gamma)
    res, changed = out
    n = x[0].numel()
    assert (changed.flatten(1).sum(1) <= 2 * int(n * gamma / 2)).all()
    assert torch.equal(changed, res.x_adv != x)                  # theta = 1: every chosen feature moved
    assert (res.x_adv[changed] == 1).all()
    with torch.no_grad():
        assert torch.equal(tiny_model(res.x_adv).argmax(1) == t, res.success)
    assert res.success.any()
    assert torch.equal(changed.flatten(1).sum(1)[res.success], 2 * res.steps[res.success])
    again = jsma(tiny_model, x, t, theta=1.0, gamma=gamma)
    assert torch.equal(again.result.x_adv, res.x_adv)
    down = jsma(tiny_model, x, t, theta=-0.5, gamma=gamma)       # decreasing features: never upwards
    assert (down.result.x_adv <= x).all() and torch.equal(down.changed, down.result.x_adv != x)
    same = jsma(tiny_model, x, pred, gamma=gamma)                # the target is already the prediction
    assert same.result.success.all() and (same.result.steps == 0).all() and not same.changed.any()


# ---------------------------------------------------------------- universal perturbation

def test_projection_on_the_balls():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 3, 4, 4, generator=g)
    p = project_ball(v, norm="linf", eps=0.1)
    torch.testing.assert_close(p, v.clamp(-0.1, 0.1))
    p = project_ball(v, norm="l2", eps=0.5)
    torch.testing.assert_close(p, v * 0.5 / v.norm())
    small = 0.01 * v
    assert torch.equal(project_ball(small, norm="l2", eps=0.5), small)             # inside: unchanged


def test_fooling_rate_counts_changed_predictions(tiny_model, test_batch):
    x, _, _ = test_batch
    g = torch.Generator().manual_seed(0)
    v = 0.2 * torch.randn(1, *x.shape[1:], generator=g)
    with torch.no_grad():
        manual = (tiny_model(x).argmax(1) != tiny_model((x + v).clamp(0, 1)).argmax(1)).float().mean().item()
    assert fooling_rate(tiny_model, x, v) == manual == fooling_rate(tiny_model, x, v[0], batch_size=7)
    assert fooling_rate(tiny_model, x, torch.zeros_like(v)) == 0


@pytest.mark.parametrize("norm, eps", [("linf", 0.15), ("l2", 1.0)])
def test_universal_perturbation_budget_and_seeded_reruns(tiny_model, test_batch, norm, eps):
    x, _, _ = test_batch
    x = x[:32]
    res = universal_perturbation(tiny_model, x, eps=eps, norm=norm, max_passes=2, seed=0)
    size = res.v.abs().max() if norm == "linf" else res.v.norm()
    assert size <= eps + 1e-6 and res.v.shape == (1, *x.shape[1:])
    assert res.fooling_rate == fooling_rate(tiny_model, x, res.v) == res.history[-1]
    assert 0 < res.fooling_rate and res.converged == (res.fooling_rate >= 0.8)
    again = universal_perturbation(tiny_model, x, eps=eps, norm=norm, max_passes=2, seed=0)
    other = universal_perturbation(tiny_model, x, eps=eps, norm=norm, max_passes=2, seed=1)
    assert torch.equal(again.v, res.v) and again.history == res.history
    assert not torch.equal(other.v, res.v)


def test_universal_perturbation_against_art(tiny_model, test_batch):
    """Same images, budget, inner attack (DeepFool, overshoot 0.02, 50 steps, all classes) and passes:
    the fooling rates are comparable, and our fooling_rate of ART's perturbation is ART's own."""
    pytest.importorskip("art")
    from art.attacks.evasion import UniversalPerturbation

    x, _, _ = test_batch
    x = x[:32]
    eps, passes = 0.2, 3
    ours = universal_perturbation(tiny_model, x, eps=eps, norm="linf", delta=0.2, max_passes=passes, seed=0)
    random.seed(0)                                            # ART draws its image order from `random`
    attack = UniversalPerturbation(art_classifier(tiny_model, tuple(x.shape[1:]), 4), attacker="deepfool",
                                   attacker_params={"max_iter": 50, "epsilon": 0.02, "nb_grads": 4, "verbose": False},
                                   delta=0.2, max_iter=passes, eps=eps, norm=np.inf, verbose=False)
    attack.generate(x.numpy())
    noise = torch.from_numpy(attack.noise)
    assert noise.abs().max() <= eps + 1e-6
    assert fooling_rate(tiny_model, x, noise) == pytest.approx(attack.fooling_rate, abs=1e-9)
    assert abs(ours.fooling_rate - attack.fooling_rate) <= 0.15, (ours.fooling_rate, attack.fooling_rate)


# ---------------------------------------------------------------- bad inputs

def test_bad_settings_fail_before_work(tiny_model, test_batch):
    x, pred, _ = test_batch
    t = (pred + 1) % 4
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        fgsm(tiny_model, x, pred, eps=-0.1)
    with pytest.raises(ValueError, match="a targeted attack needs target"):
        fgsm(tiny_model, x, pred, eps=0.1, targeted=True)
    with pytest.raises(ValueError, match="target is only used with targeted=True"):
        fgsm(tiny_model, x, pred, eps=0.1, target=t)
    with pytest.raises(ValueError, match=r"target must be an integer tensor of class indices of shape \(64,\)"):
        fgsm(tiny_model, x, pred, eps=0.1, targeted=True, target=t[:3])
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 4\)"):
        fgsm(tiny_model, x, pred, eps=0.1, targeted=True, target=t + 4)
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\]"):
        fgsm(tiny_model, x * 2, pred, eps=0.1)
    with pytest.raises(ValueError, match="kappa must be a finite number >= 0"):
        cw_l2(tiny_model, x, pred, kappa=-1)
    with pytest.raises(ValueError, match="binary_steps must be an integer >= 1"):
        cw_l2(tiny_model, x, pred, binary_steps=0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        cw_l2(tiny_model, x, pred, lr=0)
    with pytest.raises(ValueError, match="initial_const must be a finite number > 0"):
        cw_l2(tiny_model, x, pred, initial_const=0)
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 4\)"):
        cw_l2(tiny_model, x, pred, targeted=True, target=t - 5)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\]"):
        jsma(tiny_model, x, t, gamma=0)
    with pytest.raises(ValueError, match=r"theta must be a number with 0 < \|theta\| <= 1"):
        jsma(tiny_model, x, t, theta=0)
    with pytest.raises(ValueError, match=r"target must be an integer tensor"):
        jsma(tiny_model, x, t.float())
    with pytest.raises(ValueError, match="unknown norm 'l1'; valid: linf, l2"):
        universal_perturbation(tiny_model, x, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        universal_perturbation(tiny_model, x, eps=0)
    with pytest.raises(ValueError, match=r"delta must be in \[0, 1\]"):
        universal_perturbation(tiny_model, x, eps=0.1, delta=1.5)
    with pytest.raises(ValueError, match="max_passes must be an integer >= 1"):
        universal_perturbation(tiny_model, x, eps=0.1, max_passes=0)
    with pytest.raises(ValueError, match=r"v must have the shape of one image \(3, 8, 8\)"):
        fooling_rate(tiny_model, x, torch.zeros(3, 4, 4))

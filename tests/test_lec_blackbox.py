"""LEC non-Lp and black-box attacks: stAdv flow, ReColorAdv-style colour function, ZOO estimates, OPT's
hard-label boundary search and the Square trace; closed forms, recoloradv and pyautoattack as references."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from advbook.attacks import boundary, colour, flow, square_trace, zoo
from advbook.attacks.core import margin
from advbook.evaluation import evaluate
from conftest import Counting   # with the smooth_net fixture, shared by the LEC black-box tests


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: a parallel region costs more than it saves, and on a loaded 2-core
    machine each one waits for a scheduler slice (~10 ms). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)




# ---------------------------------------------------------------- stAdv flow

def test_zero_flow_is_the_identity_bit_for_bit_and_to_rounding_at_odd_sizes():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(flow.apply_flow(x, torch.zeros(2, 2, 8, 8)), x)
    odd = torch.rand(2, 3, 7, 5)
    assert (flow.apply_flow(odd, torch.zeros(2, 2, 7, 5)) - odd).abs().max() <= 1e-6


def test_a_constant_integer_flow_shifts_the_image():
    x = torch.rand(1, 3, 8, 8)
    right = torch.zeros(1, 2, 8, 8)
    right[:, 0] = 1.0                      # every pixel shows its right-hand neighbour
    out = flow.apply_flow(x, right)
    assert torch.equal(out[..., :-1], x[..., 1:]) and torch.equal(out[..., -1], torch.zeros(1, 3, 8))
    assert torch.equal(flow.apply_flow(x, right, padding_mode="border")[..., -1], x[..., -1])
    up = torch.zeros(1, 2, 8, 8)
    up[:, 1] = -2.0                        # every pixel shows the one two rows above: content moves down
    assert torch.equal(flow.apply_flow(x, up)[..., 2:, :], x[..., :-2, :])


def test_flow_loss_of_a_constant_flow_is_its_epsilon_floor_and_a_bump_costs_its_edges():
    eps = 1e-8
    const = torch.full((1, 2, 8, 8), 0.7)
    assert flow.flow_loss(const, eps=eps).item() == pytest.approx(4 * 64 * math.sqrt(eps), rel=1e-6)
    bump = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    bump[0, 0, 3, 4] = 3.0                 # one interior pixel moved 3 px: 4 edges, each counted from both ends
    expected = 8 * math.sqrt(9 + eps) + (4 * 64 - 8) * math.sqrt(eps)
    assert flow.flow_loss(bump, eps=eps).item() == pytest.approx(expected, rel=1e-12)
    corner = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    corner[0, 1, 0, 0] = 3.0               # at the corner only 2 edges exist: the border is not penalised
    expected = 4 * math.sqrt(9 + eps) + (4 * 64 - 4) * math.sqrt(eps)
    assert flow.flow_loss(corner, eps=eps).item() == pytest.approx(expected, rel=1e-12)


def test_flow_application_and_smoothness_agree_with_recoloradv():
    from recoloradv.mister_ed import spatial_transformers as st

    g = torch.Generator().manual_seed(0)
    x, f = torch.rand(3, 3, 8, 8, generator=g), 0.8 * torch.randn(3, 2, 8, 8, generator=g)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)        # its calls rely on align_corners' default (False)
        ref = st.FullSpatial(shape=x.shape, manual_gpu=False)   # its grid: normalised units, 2 / W per pixel
        ref.xform_params.data = ref.identity_params(x.shape) + f.permute(0, 2, 3, 1) * 2 / 8
        theirs_image, theirs_norm = ref(x), ref.stAdv_norm()
    assert (flow.apply_flow(x, f) - theirs_image).abs().max() <= 1e-6
    # theirs: sum sqrt((2/8)^2 d^2 + 1e-10) = (2/8) * sum sqrt(d^2 + 1e-10 (8/2)^2)
    ours = flow.flow_loss(f, eps=1e-10 * 16) * 2 / 8
    torch.testing.assert_close(ours, theirs_norm, rtol=1e-6, atol=0)


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("lbfgs", 1.0)])
def test_flow_attack_fools_the_model_with_the_flow_it_returns(smooth_net, optimizer, lr):
    net, x, y = smooth_net
    res = flow.flow_attack(net, x, y, tau=5e-4, steps=30, lr=lr, optimizer=optimizer)
    assert res.success.all() and (res.steps > 0).all()
    assert torch.equal(res.x_adv, flow.apply_flow(x, res.flow))
    assert (net(res.x_adv).argmax(1) != y).all()
    torch.testing.assert_close(res.smoothness, flow.flow_loss(res.flow))
    stiff = flow.flow_attack(net, x, y, tau=0.05, steps=30, lr=lr, optimizer=optimizer)
    assert stiff.success.sum() < res.success.sum()   # a larger tau buys smoothness with success


def test_flow_attack_bad_input_fails_in_one_line(smooth_net):
    net, x, y = smooth_net
    with pytest.raises(ValueError, match=r"^unknown optimizer 'sgd'; valid: adam, lbfgs$"):
        flow.flow_attack(net, x, y, optimizer="sgd")
    with pytest.raises(ValueError, match=r"^unknown padding_mode 'wrap'; valid: zeros, border, reflection$"):
        flow.apply_flow(x, torch.zeros(len(x), 2, 8, 8), padding_mode="wrap")
    with pytest.raises(ValueError, match=r"^expected x of shape \(N, C, H, W\) and flow of shape \(N, 2, H, W\), "
                                         r"got \(12, 3, 8, 8\) and \(12, 2, 8, 7\)$"):
        flow.apply_flow(x, torch.zeros(len(x), 2, 8, 7))


# ---------------------------------------------------------------- colour function

def test_zero_colour_shift_is_the_identity_bit_for_bit():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(colour.apply_colour(x, torch.zeros(2, 3, 8, 8, 8)), x)


def test_colour_function_agrees_with_recoloradv():
    from recoloradv import color_spaces, color_transformers

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    x[0, :, 0, 0], x[1, :, 0, 0] = 0.0, 1.0          # the corners of the cube too
    k = 5
    grid = colour.colour_grid(k, like=x)
    params = torch.max(torch.min(0.05 * (2 * torch.rand(2, 3, k, k, k, generator=g) - 1), 1 - grid), -grid)
    ref = color_transformers.FullSpatial(shape=x.shape, resolution_x=k, resolution_y=k, resolution_z=k,
                                         cspace=color_spaces.RGBColorSpace(), manual_gpu=False)
    assert torch.equal(ref.identity_params, grid.permute(0, 2, 3, 4, 1).expand_as(ref.identity_params))
    with torch.no_grad():
        ref.xform_params.data = ref.identity_params + params.permute(0, 2, 3, 4, 1)
        theirs = ref(x)
    assert (colour.apply_colour(x, params) - theirs).abs().max() <= 1e-6


def test_colour_attack_respects_its_budget_and_maps_equal_colours_alike(smooth_net):
    net, x, y = smooth_net
    x = x.clone()
    x[:, :, 4:, :] = x[:, :, :4, :]                # every colour of the top half appears again below
    y = net(x).argmax(1)
    eps = 0.1
    res = colour.colour_attack(net, x, y, eps=eps, steps=20)
    grid = colour.colour_grid(8, like=x)
    assert res.params.abs().max() <= eps and (grid + res.params).min() >= 0 and (grid + res.params).max() <= 1
    assert res.linf.max() <= eps + 1e-6 and res.linf.max() > eps / 2
    assert torch.equal(res.x_adv[:, :, 4:, :], res.x_adv[:, :, :4, :])
    assert res.success.any() and torch.equal(net(res.x_adv).argmax(1) != y, res.success)
    assert torch.equal(res.x_adv, colour.apply_colour(x, res.params))


def test_colour_attack_bad_input_fails_in_one_line(smooth_net):
    net, x, y = smooth_net
    with pytest.raises(ValueError, match=r"^expected RGB images of shape \(N, 3, H, W\), got \(12, 1, 8, 8\)$"):
        colour.colour_attack(net, x[:, :1], y, eps=0.1, steps=5)
    with pytest.raises(ValueError, match=r"^expected x of shape \(N, 3, H, W\) and params of shape \(N, 3, K, K, K\)"):
        colour.apply_colour(x, torch.zeros(len(x), 3, 4, 4, 5))


# ---------------------------------------------------------------- ZOO gradient estimates

def quadratic(n: int = 4, d: int = 12):
    """f_i(x) = 1/2 x_i^T A x_i + b . x_i per sample, in float64, with its exact gradient A x + b."""
    g = torch.Generator().manual_seed(3)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    a, b = m @ m.T, torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.rand(n, 3, 2, 2, generator=g, dtype=torch.float64)

    def loss_fn(batch, *, repeat):
        z = batch.flatten(1)
        return 0.5 * ((z @ a) * z).sum(1) + z @ b
    return loss_fn, x, (x.flatten(1) @ a + b).view_as(x)


@pytest.mark.parametrize("h", [0.5, 1e-3])
def test_symmetric_coordinate_differences_are_exact_on_a_quadratic(h):
    loss_fn, x, grad = quadratic()
    est, used = zoo.zoo_gradient(loss_fn, x, h=h, queries=2 * 12, generator=torch.Generator().manual_seed(0))
    assert used == 24
    torch.testing.assert_close(est, grad, rtol=1e-9, atol=1e-9)


def test_gaussian_estimate_is_the_mean_of_u_u_transpose_times_the_gradient_on_a_quadratic():
    loss_fn, x, grad = quadratic()
    est, used = zoo.zoo_gradient(loss_fn, x, h=0.3, queries=32, generator=torch.Generator().manual_seed(5),
                                 estimator="gaussian")
    g = torch.Generator().manual_seed(5)
    u = torch.stack([torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(16)])
    expected = ((u * grad).flatten(2).sum(2)[..., None, None, None] * u).mean(0)
    assert used == 32
    torch.testing.assert_close(est, expected, rtol=1e-9, atol=1e-9)


def test_a_partial_coordinate_estimate_is_exact_on_its_coordinates_and_zero_elsewhere():
    loss_fn, x, grad = quadratic()
    est, _ = zoo.zoo_gradient(loss_fn, x, h=1e-2, queries=10, generator=torch.Generator().manual_seed(0))
    drawn = est != 0
    assert torch.equal(drawn.flatten(1).sum(1), torch.full((4,), 5))
    torch.testing.assert_close(est[drawn], grad[drawn], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("estimator", ["coordinate", "gaussian"])
def test_queries_are_what_the_loss_sees_and_reruns_are_bit_identical(estimator):
    loss_fn, x, _ = quadratic()
    seen = []

    def counting(batch, *, repeat):
        seen.append(len(batch))
        return loss_fn(batch, repeat=repeat)

    a, used = zoo.zoo_gradient(counting, x, h=1e-3, queries=10, generator=torch.Generator().manual_seed(7),
                               estimator=estimator, max_batch=16)   # several chunks
    assert sum(seen) == used * len(x) and len(seen) > 1
    def run(seed, max_batch=16):
        return zoo.zoo_gradient(loss_fn, x, h=1e-3, queries=10, generator=torch.Generator().manual_seed(seed),
                                estimator=estimator, max_batch=max_batch)[0]
    assert torch.equal(a, run(7)) and not torch.equal(a, run(8))
    torch.testing.assert_close(run(7, max_batch=8192), a, rtol=1e-12, atol=1e-12)  # one chunk: same draws


@pytest.mark.parametrize("estimator", ["coordinate", "gaussian"])
def test_cosine_to_the_true_gradient_rises_with_queries_on_a_tiny_model(smooth_net, estimator):
    net, x, y = smooth_net

    def loss_fn(batch, *, repeat):
        return torch.nn.functional.cross_entropy(net(batch), y.repeat(repeat), reduction="none")

    budgets = [8, 64, 384]                                   # 384 = 2 x (3 x 8 x 8): every coordinate
    cos = zoo.cosine_to_true(loss_fn, x, h=1e-3, queries=budgets, generator=torch.Generator().manual_seed(0),
                             estimator=estimator).mean(1)
    assert (cos.diff() > 0.1).all(), cos
    if estimator == "coordinate":
        assert cos[-1] > 0.999


def test_zoo_gradient_bad_input_fails_in_one_line():
    loss_fn, x, _ = quadratic()
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"^unknown estimator 'spsa'; valid: coordinate, gaussian$"):
        zoo.zoo_gradient(loss_fn, x, h=1e-3, queries=4, generator=g, estimator="spsa")
    with pytest.raises(ValueError,
                       match=r"^queries must be an even number >= 2 \(two per coordinate or direction\), got 5$"):
        zoo.zoo_gradient(loss_fn, x, h=1e-3, queries=5, generator=g)
    with pytest.raises(ValueError, match=r"^the coordinate estimator has 12 coordinates per sample "
                                         r"\(queries <= 24\), got queries=26$"):
        zoo.zoo_gradient(loss_fn, x, h=1e-3, queries=26, generator=g)


def two_class_affine(affine, w: torch.Tensor, m: float):
    """Logits (0, w.x + c) with c chosen so that the class-0 margin is m at x = 0.5."""
    return affine(torch.stack([torch.zeros_like(w), w]), torch.tensor([0.0, -m - 0.5 * w.sum().item()]))


def test_zoo_adam_first_step_moves_the_drawn_coordinates_by_lr_against_the_gradient_sign(affine):
    torch.manual_seed(0)
    w = torch.randn(48)
    model = two_class_affine(affine, w, m=1.0)
    x, y = torch.full((3, 3, 4, 4), 0.5), torch.zeros(3, dtype=torch.long)
    res = zoo.zoo_attack(model, x, y, steps=1, coords=10, lr=0.01, h=1e-3, const=1.0)
    delta = (res.x_adv - x).flatten(1)
    moved = delta != 0
    assert torch.equal(moved.sum(1), torch.full((3,), 10))
    # d/dx_i of ||delta||^2 + c (z_0 - z_1) at delta = 0 is -w_i; Adam's first step is -lr * sign(gradient)
    expected = 0.01 * w.sign().expand(3, -1)
    torch.testing.assert_close(delta[moved], expected[moved], rtol=1e-4, atol=0)


def test_zoo_attack_counts_its_queries_and_breaks_a_near_boundary_sample(affine):
    torch.manual_seed(0)
    w = torch.randn(48)
    near, far = two_class_affine(affine, w, m=0.05), two_class_affine(affine, w, m=50.0)
    x, y = torch.full((2, 3, 4, 4), 0.5), torch.zeros(2, dtype=torch.long)
    steps, coords = 6, 8
    for model, broken in ((near, True), (far, False)):
        counted = Counting(model)
        res = zoo.zoo_attack(counted, x, y, steps=steps, coords=coords, lr=0.01)
        assert bool(res.success.all()) is broken
        last = torch.where(res.success, res.steps, torch.full_like(res.steps, steps))
        assert torch.equal(res.queries, last * (2 * coords + 1) + 1)
        assert counted.rows == res.queries.sum().item()
        assert torch.equal(model(res.x_adv).argmax(1) != y, res.success)


# ---------------------------------------------------------------- hard-label boundary search

@pytest.fixture
def affine_batch(affine):
    """A 5-class affine model on 3x4x4 inputs, points near 0.5, their labels, random directions and the
    exact distance along each direction to the first label change (closed form)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 48, generator=g)
    model = affine(w, -0.5 * w.sum(1) + 0.1 * torch.randn(5, generator=g)).eval()  # nearly tied at x = 0.5
    x = 0.5 + 0.02 * torch.randn(64, 3, 4, 4, generator=g)
    theta = torch.randn(64, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
        unit = (theta / theta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).flatten(1)
        gap = model(x).gather(1, y[:, None]) - model(x)                    # z_y - z_j >= 0
        slope = torch.einsum("nd,njd->nj", unit, (model.weight[y][:, None, :] - model.weight[None]))
        dist = torch.where(slope < 0, gap / -slope, torch.full_like(gap, float("inf")))
        dist[torch.arange(64), y] = float("inf")
        exact = dist.amin(1)
    return model, x, y, theta, exact


def test_boundary_search_finds_the_exact_affine_distance_within_tol_with_the_documented_queries(affine_batch):
    model, x, y, theta, exact = affine_batch
    tol, step, top = 1e-3, 0.05, 0.4
    inside = exact < top
    assert inside.sum() >= 30                                   # half the directions meet the boundary ...
    assert ((x.flatten(1) - 0.5).abs().amax(1)[inside] + exact[inside] < 0.5).all()  # ... inside the box
    counted = Counting(model)
    found = boundary.boundary_distance(counted, x, y, direction=theta, tol=tol, step=step, max_distance=top)
    assert (found.distance[inside] >= exact[inside] - 1e-5).all()
    assert (found.distance[inside] - exact[inside] <= tol).all()
    assert torch.isinf(found.distance[~inside]).all()
    halvings = math.ceil(math.log2(step / tol))                 # 6
    coarse = torch.ceil(exact / step).long()
    expected = torch.where(inside, coarse + halvings, torch.full_like(coarse, 8))
    assert torch.equal(found.queries, expected)
    assert counted.rows == found.queries.sum().item()


def test_boundary_search_bad_input_fails_in_one_line(affine_batch):
    model, x, y, theta, _ = affine_batch
    zero = theta.clone()
    zero[3] = 0
    with pytest.raises(ValueError, match=r"^direction must be non-zero for every sample; zero at \[3\]$"):
        boundary.boundary_distance(model, x, y, direction=zero)
    with pytest.raises(ValueError, match=r"^need tol > 0, step > 0 and max_distance >= step; got tol=0"):
        boundary.boundary_distance(model, x, y, direction=theta, tol=0)


def test_hard_label_attack_keeps_the_best_of_its_random_directions(affine_batch):
    model, x, y, _, _ = affine_batch
    xs, ys = x[:8], y[:8]
    res = boundary.hard_label_attack(model, xs, ys, directions=5, step=0.05, max_distance=0.4, seed=4,
                                     max_batch=16)              # two directions per call: three calls
    g = torch.Generator().manual_seed(4)
    theta = [torch.randn(xs.shape, generator=g) for _ in range(5)]
    each = [boundary.boundary_distance(model, xs, ys, direction=t, step=0.05, max_distance=0.4) for t in theta]
    best = torch.stack([b.distance for b in each]).amin(0)
    assert torch.equal(res.queries, sum(b.queries for b in each))
    assert torch.equal(res.success, torch.isfinite(best))
    torch.testing.assert_close(res.l2[res.success], best[res.success])   # the box never clips here
    assert (model(res.x_adv).argmax(1) != ys)[res.success].all()
    again = boundary.hard_label_attack(model, xs, ys, directions=5, step=0.05, max_distance=0.4, seed=4)
    other = boundary.hard_label_attack(model, xs, ys, directions=5, step=0.05, max_distance=0.4, seed=5)
    assert torch.equal(res.x_adv, again.x_adv) and not torch.equal(res.x_adv, other.x_adv)


# ---------------------------------------------------------------- Square trace

def test_square_trace_is_pyautoattack_square_at_every_budget(smooth_net):
    net, x, y = smooth_net
    eps, budgets = 0.1, [1, 5, 20, 60]
    state = torch.get_rng_state()
    trace = square_trace.square_trace(net, x, y, eps=eps, budgets=budgets, seed=0)
    assert torch.equal(torch.get_rng_state(), state)              # the caller's RNG is left alone
    for i, b in enumerate(budgets):
        robust = evaluate._square(net, x, y, eps=eps, n_queries=b, seed=0)
        assert torch.equal(trace.success[i], ~robust), b
        # a budget-b run is the first b iterations of the longest one
        assert torch.equal(trace.success[i], trace.success[-1] & (trace.queries <= b + 1)), b
    assert 0 < trace.success[-1].sum() < len(x)
    assert (trace.margin.diff(dim=0) <= 0).all()
    torch.testing.assert_close(trace.margin[-1], margin(net(trace.x_adv), y))
    assert (trace.x_adv - x).abs().max() <= eps + 1e-6


def test_square_trace_bad_budgets_fail_in_one_line(smooth_net):
    net, x, y = smooth_net
    with pytest.raises(ValueError, match=r"^budgets must be increasing integers >= 1, got \[5, 5\]$"):
        square_trace.square_trace(net, x, y, eps=0.1, budgets=[5, 5])

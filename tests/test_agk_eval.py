"""The AGK chapter's evaluations (BIM, MIM, black-box transfer) and its representation analysis
(k-NN accuracy and t-SNE of penultimate features): closed forms, reference libraries (foolbox's
LinfBasicIterativeAttack, ART's MomentumIterativeMethod), exact identities, one-line errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advbook import data
from advbook.analysis import representation
from advbook.attacks.core import linf_start, pgd
from advbook.evaluation import evaluate

EPS = 4 / 255   # the tiny model keeps about half its correct images: agreement there is informative


@pytest.fixture(scope="module")
def test_set(synth):
    """The first 100 synthetic test images and their labels."""
    return data.to_float(synth.test.images[:100]), synth.test.labels[:100]


def _two_class_affine(weight: torch.Tensor) -> nn.Module:
    """logits = W x on flattened inputs, two classes: the cross-entropy's input gradient for label y
    is (p_y - 1)(w_y - w_o), whose sign, sign(w_o - w_y), is the same at every point."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight)
    return model


class ZeroGradient(nn.Module):
    """Fixed logits whatever the input; its input gradient is exactly zero (PGD never moves)."""

    def forward(self, x):
        return torch.tensor([[1.0, 0.0, 0.0, 0.0]]) + 0 * x.flatten(1)[:, :1]


class Untouchable(nn.Module):
    def forward(self, x):
        raise AssertionError("the model was called before the settings were checked")


# --- BIM and MIM: budgets, closed form, the identity between them, reference libraries ----------

@pytest.mark.parametrize("examples", [evaluate.bim_examples, evaluate.mim_examples])
def test_the_examples_stay_in_the_ball_and_in_the_unit_box(tiny_model, test_set, examples):
    x, y = test_set
    x_adv = examples(tiny_model.eval(), x, y, eps=EPS, step_size=EPS / 4, steps=10)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= EPS + 1e-7
    assert (x_adv - x).abs().max() >= EPS - 1e-7              # it does move, to the edge of the ball


@pytest.mark.parametrize("examples", [evaluate.bim_examples, evaluate.mim_examples])
def test_on_an_affine_model_every_step_goes_the_same_way(examples):
    """Two classes, logits W x: each step adds step_size * sign(w_o - w_y) (for MIM, the momentum is
    a positive sum of that one direction), so after 3 steps of 0.01 with eps 0.05 the example is
    clip(x + 0.03 sign(w_o - w_y), 0, 1); with 10 steps it stops at the ball's edge, eps."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 12, generator=g) * 0.1
    x = torch.rand(5, 3, 2, 2, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1])
    model = _two_class_affine(w)
    direction = (w[1 - y] - w[y]).sign().view_as(x)
    for steps, moved in ((3, 0.03), (10, 0.05)):
        x_adv = examples(model, x, y, eps=0.05, step_size=0.01, steps=steps)
        torch.testing.assert_close(x_adv, (x + moved * direction).clamp(0, 1), atol=1e-6, rtol=0)


def test_mim_without_momentum_is_bim_with_the_same_step(tiny_model, test_set):
    """With decay 0, MIM's accumulated gradient is this step's gradient divided by its L1 norm, a
    positive number: its sign is the gradient's, so MIM(decay=0, step_size=a, steps=T) returns the
    examples of BIM(step_size=a, steps=T), bit for bit; with the paper's decay 1 they differ."""
    x, y = test_set
    kw = dict(eps=EPS, step_size=EPS / 4, steps=10)
    model = tiny_model.eval()
    bim = evaluate.bim_examples(model, x, y, **kw)
    assert torch.equal(evaluate.mim_examples(model, x, y, decay=0.0, **kw), bim)
    assert not torch.equal(evaluate.mim_examples(model, x, y, decay=1.0, **kw), bim)


def test_bim_agrees_with_foolbox(tiny_model, test_set):
    """foolbox 3.3.4's LinfBasicIterativeAttack (PGD without random start, summed cross-entropy,
    sign steps of abs_stepsize, clipped to the ball and to bounds): the same flags, the same
    examples up to the rounding of the projection (x0 + clip(x - x0) there, min/max of x here)."""
    import foolbox as fb

    x, y = test_set
    model = tiny_model.eval()
    flags = evaluate.EVALUATIONS["bim"](model, x, y, eps=EPS, step_size=EPS / 4, steps=10)
    _, x_fb, _ = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=EPS / 4, steps=10)(
        fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=EPS)
    with torch.no_grad():
        assert torch.equal(flags, model(x_fb).argmax(1) == y)
        assert 0 < flags.sum() < (model(x).argmax(1) == y).sum()      # it fools some, not all
    torch.testing.assert_close(evaluate.bim_examples(model, x, y, eps=EPS, step_size=EPS / 4, steps=10), x_fb,
                               atol=1e-6, rtol=0)


def test_mim_agrees_with_art(tiny_model, test_set):
    """ART 1.20's MomentumIterativeMethod (decay 1, L1-normalised accumulation, no random start),
    with the summed cross-entropy and 20 steps of eps/20 (Dong et al.'s eps/T): the same flags and,
    up to rounding, the same examples."""
    from art.attacks.evasion import MomentumIterativeMethod
    from art.estimators.classification import PyTorchClassifier

    x, y = test_set
    model = tiny_model.eval()
    kw = dict(eps=EPS, step_size=EPS / 20, steps=20)
    flags = evaluate.EVALUATIONS["mim"](model, x, y, **kw)
    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(reduction="sum"), input_shape=(3, 8, 8),
                                   nb_classes=4, clip_values=(0, 1), device_type="cpu")
    attack = MomentumIterativeMethod(classifier, eps=EPS, eps_step=EPS / 20, max_iter=20, decay=1.0,
                                     batch_size=len(x), verbose=False)
    x_art = torch.from_numpy(attack.generate(x.numpy(), y.numpy()))
    with torch.no_grad():
        assert torch.equal(flags, model(x_art).argmax(1) == y)
        assert 0 < flags.sum() < (model(x).argmax(1) == y).sum()
    torch.testing.assert_close(evaluate.mim_examples(model, x, y, **kw), x_art, atol=1e-6, rtol=0)


def test_the_suite_runs_them_on_the_correct_images_only(tiny_model, test_set):
    x, y = test_set
    kw = dict(eps=EPS, step_size=EPS / 4, steps=10)
    result = evaluate.evaluate(tiny_model, x, y, batch_size=32, attacks={"bim": kw, "mim:40": dict(kw, steps=40)})
    r = result.robust
    for column in ("bim", "mim:40"):
        assert not (r[column] & ~r["natural"]).any() and r[column].sum() < r["natural"].sum()
    assert result.ran == {"natural": "natural", "bim": "BIM-10", "mim:40": "MIM-40", "worst": "worst of BIM-10, MIM-40"}


# --- transfer ---------------------------------------------------------------------------------

def test_transfer_from_the_target_itself_is_white_box_pgd(tiny_model, test_set):
    x, y = test_set
    kw = dict(eps=EPS, step_size=EPS / 4, steps=10, seed=3)
    result = evaluate.evaluate(tiny_model, x, y, batch_size=32, surrogates={"itself": tiny_model},
                               attacks={"pgd": kw, "transfer": dict(surrogate="itself", **kw)})
    flags = result.robust
    assert (flags["transfer"] == flags["pgd"]).all()
    assert 0 < flags["pgd"].sum() < flags["natural"].sum()
    assert result.ran["transfer"] == "PGD-10 transfer from itself"


def test_the_surrogate_not_the_target_crafts_the_examples(tiny_model, test_set):
    """A surrogate with zero input gradient never moves PGD from its random start, so the target's
    flags are exactly its predictions on the random starts (one batch: the same seeded draw)."""
    x, y = test_set
    kw = dict(eps=EPS, step_size=EPS / 4, steps=10, seed=5)
    flags = evaluate.evaluate(tiny_model, x, y, batch_size=len(x), surrogates={"flat": ZeroGradient()},
                              attacks={"transfer": dict(surrogate="flat", **kw)}).robust
    model = tiny_model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().squeeze(1)
        start = linf_start(x[correct], eps=EPS, generator=torch.Generator().manual_seed(5))
        expected = torch.zeros(len(x), dtype=torch.bool)
        expected[correct] = model(start).argmax(1) == y[correct]
    assert torch.equal(torch.tensor(flags["transfer"].to_numpy()), expected)
    pgd_flags = evaluate.evaluate(tiny_model, x, y, batch_size=len(x), attacks={"pgd": kw}).robust["pgd"]
    assert flags["transfer"].sum() > pgd_flags.sum()          # white-box PGD on the target is stronger


class ModeRecorder(ZeroGradient):
    """Records, at every call, whether it was in training mode."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return super().forward(x)


def test_surrogates_are_run_in_eval_mode_and_given_back_their_mode(tiny_model, test_set):
    x, y = test_set
    surrogate = ModeRecorder().train()
    evaluate.evaluate(tiny_model, x, y, surrogates={"s": surrogate},
                      attacks={"transfer": dict(surrogate="s", eps=EPS, step_size=EPS / 4, steps=2)})
    assert surrogate.seen and not any(surrogate.seen)
    assert surrogate.training


@pytest.mark.parametrize("surrogates, message", [
    (None, r"^transfer: unknown surrogate 'vgg16'; valid: none "
           r"\(pass evaluate\(\.\.\., surrogates=\{name: model\}\)\)$"),
    ({"wrn": nn.Identity()}, r"^transfer: unknown surrogate 'vgg16'; valid: wrn$"),
])
def test_an_unknown_surrogate_is_refused_before_any_work(surrogates, message):
    with pytest.raises(ValueError, match=message):
        evaluate.evaluate(Untouchable(), torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long),
                          surrogates=surrogates,
                          attacks={"transfer": dict(surrogate="vgg16", eps=EPS, step_size=EPS, steps=1)})


def test_a_randomised_surrogate_is_refused_a_resume_dir(tmp_path):
    noisy = nn.Identity()
    noisy.randomized = True
    with pytest.raises(ValueError, match="^evaluate: resume_dir caches flags .* and Identity is randomised; "):
        evaluate.evaluate(Untouchable(), torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), resume_dir=tmp_path,
                          surrogates={"noisy": noisy},
                          attacks={"transfer": dict(surrogate="noisy", eps=EPS, step_size=EPS, steps=1)})


# --- registry: settings, names, versions --------------------------------------------------------

def test_the_new_evaluations_settings_and_names():
    assert evaluate.valid_settings("bim") == (["eps", "step_size", "steps"], ["eps", "step_size", "steps"])
    assert evaluate.valid_settings("mim") == (["eps", "step_size", "steps", "decay"], ["eps", "step_size", "steps"])
    assert evaluate.valid_settings("transfer") == (["surrogate", "eps", "step_size", "steps", "seed"],
                                                   ["surrogate", "eps", "step_size", "steps"])
    assert evaluate.display_name("bim:10", dict(eps=EPS, step_size=EPS / 4, steps=10)) == "BIM-10"
    assert evaluate.display_name("mim", dict(eps=EPS, step_size=EPS / 40, steps=40)) == "MIM-40"
    assert evaluate.display_name("transfer:vgg", dict(surrogate="vgg16", eps=EPS, step_size=1, steps=20)) == \
        "PGD-20 transfer from vgg16"
    assert {k: evaluate.code_version(k)["evaluations"] for k in ("bim", "mim", "transfer")} == \
        {"bim": {"bim": 1}, "mim": {"mim": 1}, "transfer": {"transfer": 1}}


@pytest.mark.parametrize("decay", [-0.5, "1"])
def test_a_bad_decay_is_refused_before_any_work(decay):
    with pytest.raises(ValueError, match=f"^mim: decay must be a number >= 0, got {decay!r}$"):
        evaluate.evaluate(Untouchable(), torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long),
                          attacks={"mim": dict(eps=EPS, step_size=EPS, steps=1, decay=decay)})


# --- features of clean and adversarial images ---------------------------------------------------

def test_features_are_the_models_own_on_the_same_pgd_examples(tiny_model, test_set):
    x, y = test_set
    model = tiny_model.eval()
    feats = representation.clean_and_adversarial(model, x, y, eps=EPS, step_size=EPS / 4, steps=5, seed=2,
                                                 batch_size=40)
    x_adv = torch.cat([pgd(model, x[i:i + 40], y[i:i + 40], eps=EPS, step_size=EPS / 4, steps=5, random_start=True,
                           stop_on_success=False, seed=2).x_adv for i in range(0, len(x), 40)])
    with torch.no_grad():
        assert torch.equal(feats.clean, torch.cat([model.features(x[i:i + 40]) for i in range(0, len(x), 40)]))
        assert torch.equal(feats.adversarial, torch.cat([model.features(x_adv[i:i + 40]) for i in range(0, 100, 40)]))
        assert torch.equal(feats.clean_pred, model(x).argmax(1))
        assert torch.equal(feats.adversarial_pred, torch.cat([model(x_adv[i:i + 40]).argmax(1)
                                                              for i in range(0, 100, 40)]))
    assert feats.clean.shape == feats.adversarial.shape == (100, 64)
    assert (feats.adversarial_pred == y).sum() < (feats.clean_pred == y).sum()
    assert torch.equal(representation.penultimate(model, x, batch_size=40), feats.clean)


def test_feature_gathering_gives_the_model_its_mode_back_and_refuses_bad_input(tiny_model, test_set):
    x, y = test_set
    tiny_model.train()
    representation.penultimate(tiny_model, x[:4])
    representation.clean_and_adversarial(tiny_model, x[:4], y[:4], eps=EPS, step_size=EPS, steps=1)
    assert tiny_model.training
    tiny_model.eval()
    with pytest.raises(ValueError, match="^expected a model with a features\\(x\\) method \\(a zoo Classifier\\), "
                                         "got Sequential$"):
        representation.penultimate(nn.Sequential(nn.Flatten()), x)
    with pytest.raises(ValueError, match="^batch_size must be an integer >= 1, got 0$"):
        representation.penultimate(tiny_model, x, batch_size=0)
    with pytest.raises(ValueError, match=r"^expected labels of shape \(100,\), got \(99,\)$"):
        representation.clean_and_adversarial(tiny_model, x, y[:99], eps=EPS, step_size=EPS, steps=1)


# --- k-NN ---------------------------------------------------------------------------------------

def _clusters(n_per_class: int, *, seed: int, dim: int = 8, classes: int = 3):
    """Well separated clusters: class c around 10 * e_c (distinct directions and places), noise 0.3."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    centres = 10 * torch.eye(dim)[:classes]
    return centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("metric", representation.KNN_METRICS)
def test_knn_on_separable_clusters_is_always_right(metric):
    train_f, train_y = _clusters(60, seed=0)
    test_f, test_y = _clusters(20, seed=1)
    flags = representation.knn_accuracy(train_f, train_y, test_f, test_y, k=50, metric=metric)
    assert flags.dtype == torch.bool and flags.shape == (60,) and flags.all()
    assert not representation.knn_accuracy(train_f, train_y, test_f, (test_y + 1) % 3, k=50, metric=metric).any()


def test_knn_uses_the_metric_it_is_given_cosine_by_default():
    """One neighbour. The test point (2, 0.1) is nearer to (1, 1) (label 1) in Euclidean distance,
    but at a smaller angle to (10, 0) (label 0)."""
    train_f, train_y = torch.tensor([[10.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1])
    test_f = torch.tensor([[2.0, 0.1]])
    assert representation.knn_accuracy(train_f, train_y, test_f, torch.tensor([0]), k=1).item()
    assert representation.knn_accuracy(train_f, train_y, test_f, torch.tensor([1]), k=1, metric="euclidean").item()


def test_a_tie_between_classes_goes_to_the_smaller_label():
    train_f, train_y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0])
    flags = representation.knn_accuracy(train_f, train_y, torch.tensor([[1.0, 1.0]] * 2), torch.tensor([0, 1]), k=2)
    assert flags.tolist() == [True, False]


def test_knn_of_the_training_features_on_themselves_with_one_neighbour_is_exact(tiny_model, synth):
    x = data.to_float(synth.train.images[:200])
    feats = representation.penultimate(tiny_model, x)
    assert representation.knn_accuracy(feats, synth.train.labels[:200], feats, synth.train.labels[:200], k=1).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=61), r"^k must be an integer in \[1, 60\] \(the training set's size\), got 61$"),
    (dict(k=0), r"^k must be an integer in \[1, 60\] \(the training set's size\), got 0$"),
    (dict(metric="manhattan"), r"^unknown metric 'manhattan'; valid: cosine, euclidean$"),
])
def test_bad_knn_settings_are_refused(kwargs, message):
    train_f, train_y = _clusters(20, seed=0)
    with pytest.raises(ValueError, match=message):
        representation.knn_accuracy(train_f, train_y, train_f[:5], train_y[:5], **kwargs)


def test_knn_refuses_mismatched_shapes():
    train_f, train_y = _clusters(20, seed=0)
    shapes = r"^expected features of shapes \(N, d\) and \(M, d\), got \(60, 8\) and \(5, 7\)$"
    with pytest.raises(ValueError, match=shapes):
        representation.knn_accuracy(train_f, train_y, train_f[:5, :7], train_y[:5])
    with pytest.raises(ValueError, match=r"^expected one label per feature row, got \(59,\) for 60 training"):
        representation.knn_accuracy(train_f, train_y[:59], train_f[:5], train_y[:5])


# --- t-SNE --------------------------------------------------------------------------------------

def test_tsne_is_the_same_map_for_the_same_seed_and_keeps_clusters_apart():
    features, labels = _clusters(40, seed=0)
    first = representation.tsne(features, seed=0, perplexity=15)
    assert first.shape == (120, 2) and first.dtype == torch.float32
    assert torch.equal(representation.tsne(features, seed=0, perplexity=15), first)
    # in the map, every point's 5 nearest neighbours (itself among them) still share its label
    assert representation.knn_accuracy(first, labels, first, labels, k=5, metric="euclidean").all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(perplexity=120), r"^perplexity must be in \(0, 120\) \(the number of points\), got 120$"),
    (dict(perplexity=15, metric="l1"), r"^unknown metric 'l1'; valid: cosine, euclidean$"),
])
def test_bad_tsne_settings_are_refused(kwargs, message):
    features, _ = _clusters(40, seed=0)
    with pytest.raises(ValueError, match=message):
        representation.tsne(features, seed=0, **kwargs)

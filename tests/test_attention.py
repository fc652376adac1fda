"""Feature maps of every zoo model, and the attention maps of the AGK chapter built on them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advbook import models

STATS = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
# How each body pools its last feature map into the penultimate vector (read off zoo.py): the
# small CNNs end in AdaptiveMaxPool2d(1), VGG in MaxPool2d(2) on its 2x2 map, the rest average.
MAX_POOLED = {"tiny_cnn", "small_cnn", "micro_cnn", "vgg11_bn", "vgg11_small"}


@pytest.mark.parametrize("name", list(models.MODELS))
def test_feature_map_pools_to_the_features_and_keeps_the_state_dict_keys(name):
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=10, **STATS).eval()
    expected = {"mean", "std", "head.weight", "head.bias"} | {f"body.{k}" for k in model.body.state_dict()}
    assert set(model.state_dict()) == expected, "cached models must stay loadable"
    assert sum(1 for _ in model.children()) == 2   # body and head only: the split is an int
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        fmap, feats = model.feature_map(x), model.features(x)
        assert fmap.dim() == 4 and fmap.shape[:2] == (1, model.head.in_features)
        assert fmap.shape[2] * fmap.shape[3] > 1, "the map must be spatial, not the pooled vector"
        assert fmap.min() >= 0, "every zoo body's last map is post-activation"
        pooled = fmap.amax((2, 3)) if name in MAX_POOLED else fmap.mean((2, 3))
        torch.testing.assert_close(pooled, feats)
        assert torch.equal(model.features_from_map(fmap), feats)


def test_feature_map_comes_before_the_projection():
    torch.manual_seed(0)
    plain = models.build_model("tiny_cnn", num_classes=10, **STATS).eval()
    projected = models.build_model("tiny_cnn", num_classes=10, feature_dim=5, **STATS).eval()
    projected.load_state_dict({**plain.state_dict(), **{k: v for k, v in projected.state_dict().items()
                                                        if k.startswith(("body.11.", "head."))}})
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        fmap = projected.feature_map(x)
        assert torch.equal(fmap, plain.feature_map(x))
        assert torch.equal(projected.features_from_map(fmap), projected.features(x))
        torch.testing.assert_close(projected.body[-1](fmap.amax((2, 3))), projected.features(x))
        torch.testing.assert_close(projected.head(projected.features_from_map(fmap)), projected(x))


def test_feature_map_needs_a_sequential_body():
    model = models.Classifier(nn.Conv2d(3, 4, 3), 4, 10, **STATS)
    with pytest.raises(ValueError, match=r"^feature_map needs a body nn.Sequential ending in global pooling "
                                         r"and Flatten, got Conv2d$"):
        model.feature_map(torch.rand(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------
# Attention maps

from advbook.models import attention  # noqa: E402

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _reference_attention_map(feature):
    """hongw579/AGKD-BML utils.py l.74-81, transcribed (in place, as there)."""
    attention_map = torch.sum(feature, 1)
    size = attention_map.shape
    norm = attention_map.view(attention_map.size(0), -1)
    norm -= norm.min(1, keepdim=True)[0]
    norm /= norm.max(1, keepdim=True)[0]
    return norm.view(size)


def _gap_model(*, pool=nn.AdaptiveAvgPool2d, project: int | None = None, seed: int = 0):
    """conv-ReLU, global pooling, Flatten (and a projection), linear head; float64 for closed forms."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten()]
    if project:
        layers.append(nn.Linear(6, project))
    return models.Classifier(nn.Sequential(*layers), project or 6, 5, **PLAIN).double().eval()


def _two_quadrants(pool):
    """Class 0 reads channel 0, lit in the top-left quadrant; class 1 reads channel 1, lit bottom-right."""
    model = models.Classifier(nn.Sequential(nn.ReLU(), pool(1), nn.Flatten()), 3, 2, **PLAIN).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        model.head.bias.zero_()
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, :2, :2] = 1.0
    x[0, 1, 2:, 2:] = 1.0
    top_left, bottom_right = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    top_left[0, :2, :2], bottom_right[0, 2:, 2:] = 1.0, 1.0
    return model, x, top_left, bottom_right


def test_channel_attention_is_the_reference_attention_map():
    fmap = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0))   # signed: no abs, no power
    out = attention.channel_attention(fmap)
    assert out.shape == (4, 5, 5)
    assert torch.equal(out, _reference_attention_map(fmap.clone()))
    assert torch.equal(out.flatten(1).amin(1), torch.zeros(4)) and torch.equal(out.flatten(1).amax(1), torch.ones(4))


def test_a_constant_map_gives_zeros_and_a_finite_gradient():
    fmap = torch.ones(2, 3, 4, 4)
    fmap[1, 0, 0, 0] = 5.0
    fmap.requires_grad_(True)
    out = attention.channel_attention(fmap)
    assert torch.equal(out[0], torch.zeros(4, 4))
    assert out[1, 0, 0] == 1.0 and out[1].sum() == 1.0
    out.sum().backward()
    assert torch.isfinite(fmap.grad).all()


@pytest.mark.parametrize("name,feature_dim", [("tiny_cnn", None), ("tiny_cnn", 5), ("vgg11_small", None)])
def test_maps_have_the_feature_map_shape_and_lie_in_0_1(name, feature_dim):
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=10, feature_dim=feature_dim, **STATS).eval()
    x = torch.rand(3, 3, 32, 32)
    hw = model.feature_map(x).shape[2:]
    maps = {"channel": attention.channel_attention(model.feature_map(x)),
            "grad_cam": attention.grad_cam(model, x, torch.tensor([0, 4, 9])),
            "cam_average": attention.cam_average(model, x)}
    for kind, m in maps.items():
        assert m.shape == (3, *hw), kind
        assert m.min() >= 0 and m.max() <= 1, kind
        assert set(m.flatten(1).amax(1).tolist()) <= {0.0, 1.0}, kind   # 1 unless the map was constant
    assert torch.equal(maps["channel"].flatten(1).amax(1), torch.ones(3))


def test_grad_cam_on_an_average_pooled_model_is_the_relu_of_cam():
    model = _gap_model()
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([0, 3, 4, 3])
    fmap = model.feature_map(x)
    cam = torch.einsum("kc,bchw->bkhw", model.head.weight, fmap)[torch.arange(4), classes]
    expected = attention.minmax(torch.relu(cam))
    torch.testing.assert_close(attention.grad_cam(model, x, classes), expected)
    assert (expected.flatten(1).amax(1) == 1).all(), "the example must have positive evidence in every image"


@pytest.mark.parametrize("project", [None, 4])
def test_cam_averages_to_the_logits_on_an_average_pooled_model(project):
    """The CAM identity (Zhou et al. 2016): mean_hw M_c = logit_c - bias, through the projection too."""
    model = _gap_model(project=project)
    x = torch.rand(3, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    maps = attention.class_activation_maps(model, x)
    assert maps.shape == (3, 5, 5, 5)
    bias = model.head.bias if project is None else model.head.bias + model.head.weight @ model.body[-1].bias
    torch.testing.assert_close(maps.mean((2, 3)) + bias, model(x))


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d])
def test_grad_cam_of_the_true_and_a_false_class_differ(pool):
    model, x, top_left, bottom_right = _two_quadrants(pool)
    assert torch.equal(attention.grad_cam(model, x, torch.tensor([0])), top_left)
    assert torch.equal(attention.grad_cam(model, x, torch.tensor([1])), bottom_right)
    both = top_left + bottom_right   # class-irrelevant maps see both objects
    assert torch.equal(attention.channel_attention(model.feature_map(x)), both)
    assert torch.equal(attention.cam_average(model, x), both)


@pytest.mark.parametrize("feature_dim", [None, 5])
def test_cam_average_is_the_mean_of_the_class_maps(feature_dim):
    torch.manual_seed(0)
    model = models.build_model("tiny_cnn", num_classes=10, feature_dim=feature_dim, **STATS).eval()
    x = torch.rand(3, 3, 32, 32)
    expected = attention.minmax(attention.class_activation_maps(model, x).mean(1))
    torch.testing.assert_close(attention.cam_average(model, x), expected)


def test_create_graph_reaches_the_parameters_as_the_closed_form_does():
    model = _gap_model()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    classes, target = torch.tensor([1, 2]), torch.rand(2, 6, 6, dtype=torch.float64)

    def grads(loss):
        return torch.autograd.grad(loss, [model.head.weight, model.body[0].weight])

    got = grads((attention.grad_cam(model, x, classes, create_graph=True) - target).abs().sum())
    cam = torch.einsum("kc,bchw->bkhw", model.head.weight, model.feature_map(x))[torch.arange(2), classes]
    expected = grads((attention.minmax(torch.relu(cam)) - target).abs().sum())
    assert got[0].abs().sum() > 0, "the head's weight gets its gradient through the Grad-CAM weights"
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert not attention.grad_cam(model, x, classes).requires_grad


def test_grad_cam_works_under_no_grad_and_with_frozen_parameters():
    model = _gap_model()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = attention.grad_cam(model, x, torch.tensor([0, 1]))
    model.requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(attention.grad_cam(model, x, torch.tensor([0, 1])), expected)


@pytest.mark.parametrize("classes,message", [
    (torch.tensor([0, 1, 2]), r"^classes must hold one class per image: got 3 for 2 images$"),
    (torch.tensor([0, 5]), r"^classes must lie in \[0, 5\), got 0\.\.5$"),
    (torch.tensor([-1, 0]), r"^classes must lie in \[0, 5\), got -1\.\.0$"),
    (torch.tensor([0.0, 1.0]), r"^classes must be a 1-D integer tensor, one class per image$"),
    (torch.tensor([[0, 1]]), r"^classes must be a 1-D integer tensor, one class per image$"),
])
def test_grad_cam_rejects_bad_classes_before_any_work(classes, message, monkeypatch):
    model = _gap_model()
    monkeypatch.setattr(model, "feature_map", lambda x: pytest.fail("ran the model before checking"))
    with pytest.raises(ValueError, match=message):
        attention.grad_cam(model, torch.rand(2, 3, 6, 6, dtype=torch.float64), classes)


def test_maps_reject_what_is_not_a_classifier_or_an_image_batch():
    net, x = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), torch.rand(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"^grad_cam needs an advbook Classifier \(feature_map and head\), got Sequential$"):
        attention.grad_cam(net, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^cam_average needs an advbook Classifier \(feature_map and head\), got Sequential$"):
        attention.cam_average(net, x)
    with pytest.raises(ValueError, match=r"^class_activation_maps: x must be a \(B, 3, H, W\) image batch, got \(3, 6, 6\)$"):
        attention.class_activation_maps(_gap_model(), x[0])
    with pytest.raises(ValueError, match=r"^fmap must be a \(B, C, H, W\) tensor, got \(2, 8\)$"):
        attention.channel_attention(torch.rand(2, 8))

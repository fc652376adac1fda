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
def test_feature_map_pools_to_the_features(name):
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=10, **STATS).eval()
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


@pytest.mark.parametrize("name", list(models.MODELS))
def test_state_dict_keys_are_unchanged(name):
    model = models.build_model(name, num_classes=10, **STATS)
    expected = {"mean", "std", "head.weight", "head.bias"} | {f"body.{k}" for k in model.body.state_dict()}
    assert set(model.state_dict()) == expected
    assert sum(1 for _ in model.children()) == 2   # body and head only: the split is an int


def test_feature_map_needs_a_sequential_body():
    model = models.Classifier(nn.Conv2d(3, 4, 3), 4, 10, **STATS)
    with pytest.raises(ValueError, match=r"^feature_map needs a body nn.Sequential ending in global pooling "
                                         r"and Flatten, got Conv2d$"):
        model.feature_map(torch.rand(1, 3, 8, 8))

"""Models: every architecture builds, normalises inside, and exposes its penultimate features."""
from __future__ import annotations

import pytest
import torch

from advbook import models

STATS = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


@pytest.mark.parametrize("name", list(models.MODELS))
def test_model_shapes_and_features(name):
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=10, **STATS).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (2, 10)
    assert feats.shape == (2, model.head.in_features)
    torch.testing.assert_close(model.head(feats), logits)


def test_normalisation_happens_inside_the_model():
    torch.manual_seed(0)
    model = models.build_model("tiny_cnn", num_classes=10, **STATS).eval()
    x = torch.rand(3, 3, 32, 32)
    mean, std = torch.tensor(STATS["mean"]).view(1, 3, 1, 1), torch.tensor(STATS["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.body((x - mean) / std)))


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet34'; valid: tiny_cnn, small_cnn, resnet18"):
        models.build_model("resnet34", num_classes=10, **STATS)

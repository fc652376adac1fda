"""The robustified dataset (Ilyas et al. 2019's D_R, the RRM chapter's RDT): robustify's descent on
the representation distance, and robust_dataset's pairing, rounding and cache."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from advbook import data
from advbook.core import cache
from advbook.training import robust_data, train


@pytest.fixture(scope="module")
def teacher(synth, tiny_model):
    """The conftest's tiny model as a TrainedModel (same settings: read back from the cache)."""
    trained = train.train_model(model_name="tiny_cnn", dataset=synth, seed=0,
                                cfg=train.TrainConfig(epochs=8, batch_size=50, lr=0.05))
    assert trained.from_cache
    return trained


@pytest.fixture(scope="module")
def pairs(synth):
    x_target = data.to_float(synth.train.images[:32])
    return x_target.roll(1, 0), x_target   # each image starts from its neighbour (another class)


class Pixels(torch.nn.Module):
    """A model whose representation is the image itself: the distance is the pixels' L2 distance."""

    def features(self, x):
        return x.flatten(1)


class Untouchable(torch.nn.Module):
    def features(self, x):
        raise AssertionError("the model was called before the settings were checked")


# --- robustify ------------------------------------------------------------------------------------

def robustify_tiny(model, pairs, **kw):
    x_start, x_target = pairs
    return robust_data.robustify(model, x_start=x_start, x_target=x_target, steps=10, step_size=0.1,
                                 **{"batch_size": 16, **kw})


def test_robustify_ends_no_farther_than_it_starts_and_mostly_closer(tiny_model, pairs):
    x_start, x_target = pairs
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.train()
    try:
        x, dist = robustify_tiny(tiny_model, pairs)
        assert tiny_model.training   # given back its mode (it ran in eval mode)
    finally:
        tiny_model.eval()
    start = robust_data.feature_distance(tiny_model, x=x_start, x_target=x_target)
    assert (dist <= start).all()
    assert (dist < start).float().mean() >= 0.9          # all 32 get closer here; most must
    assert dist.mean() < 0.5 * start.mean()              # and by much: 10 steps of 0.1
    assert x.min() >= 0 and x.max() <= 1 and x.shape == x_start.shape
    assert torch.allclose(robust_data.feature_distance(tiny_model, x=x, x_target=x_target), dist, atol=1e-5)
    # the model's weights never change and get no gradient (their .grad, if any, is untouched)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert all(g is None and p.grad is None or torch.equal(g, p.grad) for g, p in zip(grads, tiny_model.parameters()))


def test_robustify_is_deterministic_and_independent_of_the_batching(tiny_model, pairs):
    x1, d1 = robustify_tiny(tiny_model, pairs)
    x2, d2 = robustify_tiny(tiny_model, pairs)
    assert torch.equal(x1, x2) and torch.equal(d1, d2)
    x3, d3 = robustify_tiny(tiny_model, pairs, batch_size=32)   # each sample's path is its own
    assert torch.allclose(x1, x3, atol=1e-5) and torch.allclose(d1, d3, atol=1e-5)


def test_robustify_keeps_the_start_when_every_step_overshoots():
    target = torch.full((1, 3, 2, 2), 0.5)
    start = target.clone()
    start[0, 0, 0, 0] = 0.51                 # distance 0.01; one step of 0.3 lands at 0.21 (distance 0.29)
    x, dist = robust_data.robustify(Pixels(), x_start=start, x_target=target, steps=1, step_size=0.3)
    assert torch.equal(x, start) and dist.item() == pytest.approx(0.01, abs=1e-6)


def test_robustify_returns_the_best_iterate_not_the_last():
    target = torch.full((1, 3, 2, 2), 0.5)
    start = target.clone()
    start[0, 0, 0, 0] = 0.9                  # distance 0.4 -> 0.6 (0.1) -> 0.3 (0.2): the middle one is best
    x, dist = robust_data.robustify(Pixels(), x_start=start, x_target=target, steps=2, step_size=0.3)
    expected = target.clone()
    expected[0, 0, 0, 0] = 0.6
    assert torch.allclose(x, expected, atol=1e-6) and dist.item() == pytest.approx(0.1, abs=1e-6)


def test_robustify_clips_to_the_image_range():
    target, start = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.05)
    x, dist = robust_data.robustify(Pixels(), x_start=start, x_target=target, steps=1, step_size=1.0)
    assert torch.equal(x, target) and dist.item() == 0.0   # a step of 1 (0.35 too far) clipped at 0


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0), "steps must be an integer >= 1, got 0"),
    (dict(step_size=0.0), "step_size must be > 0, got 0.0"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(x_target=torch.rand(2, 3, 4, 4)), re.escape("x_start and x_target must have one shape, got (2, 3, 8, 8) "
                                                      "and (2, 3, 4, 4)")),
])
def test_robustify_refuses_bad_settings_before_any_work(kw, message):
    args = {**dict(x_start=torch.rand(2, 3, 8, 8), x_target=torch.rand(2, 3, 8, 8), steps=3, step_size=0.1), **kw}
    with pytest.raises(ValueError, match=f"^{message}$"):
        robust_data.robustify(Untouchable(), **args)


def test_a_model_without_features_is_refused():
    with pytest.raises(ValueError, match="^the model must expose its penultimate representation as .features\\(x\\); "
                                         "Linear has none$"):
        robust_data.robustify(torch.nn.Linear(2, 2), x_start=torch.rand(2, 2), x_target=torch.rand(2, 2), steps=1,
                              step_size=0.1)


# --- robust_dataset -------------------------------------------------------------------------------

INDEX = torch.arange(0, 80, 2)   # 40 images of the synthetic training split, 10 per class
SETTINGS = dict(train_index=INDEX, steps=5, step_size=0.1, seed=0, batch_size=16)


def test_each_image_starts_from_another_and_keeps_its_targets_label(teacher, synth, fresh_cache):
    rdt = robust_data.robust_dataset(teacher=teacher, dataset=synth, **SETTINGS)
    train_split = rdt.dataset.train
    assert not rdt.from_cache and len(train_split) == len(INDEX)
    assert (rdt.start_index != INDEX).all() and set(rdt.start_index.tolist()) <= set(INDEX.tolist())
    assert torch.equal(train_split.labels, synth.train.labels[INDEX])
    assert torch.equal(rdt.dataset.test.images, synth.test.images) and torch.equal(rdt.dataset.test.labels,
                                                                                  synth.test.labels)
    assert train_split.images.dtype == torch.uint8 and rdt.dataset.name == f"{synth.name}-rdt-{rdt.key[:8]}"
    assert teacher.key in rdt.dataset.source
    assert rdt.dataset.checksum == data.tensor_checksum(train_split.images, train_split.labels, synth.test.images,
                                                        synth.test.labels)
    # the stored images are robustify's results from those starts, rounded to 8 bits
    x_start, x_target = (data.to_float(synth.train.images[i]) for i in (rdt.start_index, INDEX))
    x, _ = robust_data.robustify(teacher.model, x_start=x_start, x_target=x_target, steps=5, step_size=0.1,
                                 batch_size=16)
    assert torch.equal(train_split.images, (x * 255).round().to(torch.uint8))
    # the distances: the start's, and the stored image's, which rounding moves by little
    assert torch.allclose(rdt.distance_start, robust_data.feature_distance(teacher.model, x=x_start, x_target=x_target))
    stored = robust_data.feature_distance(teacher.model, x=data.to_float(train_split.images), x_target=x_target)
    assert torch.allclose(rdt.distance_end, stored)
    assert (rdt.distance_end < rdt.distance_start).float().mean() >= 0.9


def _fail(*args, **kwargs):
    raise AssertionError("robustify was called: the cache was not used")


def test_a_second_call_is_a_cache_hit_with_identical_bytes(teacher, synth, fresh_cache, monkeypatch):
    first = robust_data.robust_dataset(teacher=teacher, dataset=synth, **SETTINGS)
    monkeypatch.setattr(robust_data, "robustify", _fail)
    again = robust_data.robust_dataset(teacher=teacher, dataset=synth, **SETTINGS)
    assert again.from_cache and again.key == first.key and again.dataset.checksum == first.dataset.checksum
    for name in ("start_index", "distance_start", "distance_end"):
        assert torch.equal(getattr(again, name), getattr(first, name)), name
    assert torch.equal(again.dataset.train.images, first.dataset.train.images)


def test_a_corrupt_cache_entry_is_rebuilt_never_served(teacher, synth, fresh_cache):
    first = robust_data.robust_dataset(teacher=teacher, dataset=synth, **SETTINGS)
    path = cache.cache_dir("data/robust") / f"rdt-{first.key}.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                                   # one flipped byte: the checksum no longer matches
    path.write_bytes(bytes(raw))
    with pytest.warns(cache.RebuildWarning, match=f"^cached robust data rdt-{first.key}.pt is unusable "
                                                  f"\\(checksum mismatch for .*\\); rebuilding it$"):
        rebuilt = robust_data.robust_dataset(teacher=teacher, dataset=synth, **SETTINGS)
    assert not rebuilt.from_cache and rebuilt.dataset.checksum == first.dataset.checksum
    assert torch.equal(rebuilt.distance_end, first.distance_end)
    assert robust_data.robust_dataset(teacher=teacher, dataset=synth, **SETTINGS).from_cache   # rewritten whole


def test_the_seed_and_the_steps_are_part_of_the_key(teacher, synth, fresh_cache):
    first = robust_data.robust_dataset(teacher=teacher, dataset=synth, **SETTINGS)
    other_seed = robust_data.robust_dataset(teacher=teacher, dataset=synth, **{**SETTINGS, "seed": 1})
    assert other_seed.key != first.key and not other_seed.from_cache
    assert not torch.equal(other_seed.start_index, first.start_index)
    more_steps = robust_data.robust_dataset(teacher=teacher, dataset=synth, **{**SETTINGS, "steps": 6})
    assert more_steps.key not in (first.key, other_seed.key) and not more_steps.from_cache


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0), "steps must be an integer >= 1, got 0"),
    (dict(step_size=-0.1), "step_size must be > 0, got -0.1"),
    (dict(train_index=torch.tensor([0, 400])), "train_index out of range: positions must lie in \\[0, 400\\), "
                                               "got 0..400"),
    (dict(train_index=torch.tensor([-1, 3])), "train_index out of range: positions must lie in \\[0, 400\\), "
                                              "got -1..3"),
    (dict(train_index=torch.tensor([5])), "robust_dataset needs at least 2 training images \\(each starts from "
                                          "another\\), got 1"),
    (dict(train_index=torch.tensor([5, 7, 5])), "train_index repeats positions: a start must be another image, "
                                                "not a copy of the target"),
])
def test_robust_dataset_refuses_bad_input_before_any_work(synth, fresh_cache, kw, message):
    untouchable = SimpleNamespace(model=Untouchable(), key="untouchable")
    with pytest.raises(ValueError, match=f"^{message}$"):
        robust_data.robust_dataset(teacher=untouchable, dataset=synth, **{**SETTINGS, **kw})
    assert not list(cache.cache_root().rglob("rdt-*"))

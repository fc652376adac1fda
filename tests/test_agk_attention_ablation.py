"""AGK-T3's attention ablation: ``agk_attention`` picks the map AGKD distils (the released channel sum,
Grad-CAM of the original or the false class, or the class-averaged CAM); only the objectives that
distil attention have it, "channel" keeps the cache keys of the models trained before it existed, and
the chapter's three ablation methods fix it."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from advbook import data, models
from advbook.models import attention
from advbook.training import agk, train
from advbook.training.framework import StepContext
from advbook.training.registry import OBJECTIVES

VARIANTS = ("channel", "gradcam_orig", "gradcam_false", "cam_average")
STATS = dict(mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def synth16():
    return data.synthetic(n_train=200, n_test=100, num_classes=4, size=16, seed=0)


def _batch(synth16, n=16):
    return data.to_float(synth16.train.images[:n]), synth16.train.labels[:n]


def _net(seed):
    torch.manual_seed(seed)
    return models.build_model("tiny_cnn", num_classes=4, **STATS)


def _key(synth16, objective, **kw):
    cfg = train.TrainConfig.build(objective=objective, epochs=3, at_steps=2, **kw)
    return train.model_key(model_name="tiny_cnn", dataset=synth16, train_index=None, cfg=cfg, seed=0,
                           teacher_key="abc")


# --- the setting --------------------------------------------------------------------------------------

def test_the_registry_holds_the_four_maps_and_the_default_is_the_released_channel_sum():
    assert tuple(agk.ATTENTION_MAPS) == VARIANTS
    assert agk.AGKDConfig().attention == "channel" and agk.AGKDBMLConfig().attention == "channel"


@pytest.mark.parametrize("objective", ["agkd", "agkd_bml"])
@pytest.mark.parametrize("value", ["gradcam", "Channel", None])
def test_an_unknown_map_is_refused_in_one_line_naming_the_valid_ones(objective, value):
    with pytest.raises(ValueError, match=rf"^unknown agk_attention {value!r}; valid: channel, gradcam_orig, "
                                         r"gradcam_false, cam_average$"):
        train.TrainConfig.build(objective=objective, agk_attention=value)


@pytest.mark.parametrize("objective", ["bml", "sml"])
def test_objectives_without_attention_distillation_refuse_the_setting(objective):
    with pytest.raises(ValueError, match=rf"^objective '{objective}' takes no 'agk_attention' \(a setting of agkd, "
                                         r"agkd_bml\); valid: "):
        train.TrainConfig.build(objective=objective, agk_attention="channel")
    assert not hasattr(agk.BMLConfig(), "attention")


# model_key of these configurations at a1cc9c5, before agk_attention existed (tiny_cnn, synth16, seed 0,
# epochs=3, at_steps=2, teacher key "abc")
KEYS_BEFORE = {"agkd": "06c8b7a6de94a0ed", "agkd_bml": "5025c0673189f1ac", "bml": "e723a75a800b9456"}


@pytest.mark.parametrize("objective", ["agkd", "agkd_bml"])
def test_the_channel_map_keeps_the_cache_keys_of_the_models_trained_before_the_setting(synth16, objective):
    assert _key(synth16, objective) == _key(synth16, objective, agk_attention="channel") == KEYS_BEFORE[objective]
    assert "agk_attention" not in train.TrainConfig.build(objective=objective).key_fields()
    other = train.TrainConfig.build(objective=objective, agk_attention="cam_average")
    assert other.key_fields()["agk_attention"] == "cam_average"
    assert other.replace(agk_attention="channel") == train.TrainConfig.build(objective=objective)


def test_bml_keeps_its_key_after_the_configurations_were_split(synth16):
    assert _key(synth16, "bml") == KEYS_BEFORE["bml"]


@pytest.mark.parametrize("objective", ["agkd", "agkd_bml"])
def test_the_four_maps_give_four_keys(synth16, objective):
    assert len({_key(synth16, objective, agk_attention=v) for v in VARIANTS}) == 4


# --- the maps -----------------------------------------------------------------------------------------

def _maps(variant, student, teacher, x, y, *, x1a=None, x2=None, x2a=None):
    """The map pairs of ``variant`` from one student pass over [x1', x1, x2'], as ``_agk`` calls them."""
    n = len(x)
    x1a = x if x1a is None else x1a
    x2 = x.flip(0) if x2 is None else x2
    x2a = x2 if x2a is None else x2a
    t = y.flip(0)
    fmaps = student.feature_map(torch.cat([x1a, x, x2a]))
    logits = student.head(student.features_from_map(fmaps))
    pairs = agk.ATTENTION_MAPS[variant](model=student, teacher=teacher, fmaps=fmaps, logits=logits, n=n, x=x,
                                        x2=x2, y=y, t=t)
    return pairs, logits


@pytest.mark.parametrize("variant", ["channel", "gradcam_orig", "cam_average"])
def test_a_student_equal_to_its_teacher_on_clean_images_has_no_attention_loss(synth16, variant):
    (x, y), teacher = _batch(synth16), _net(0).eval()
    student = copy.deepcopy(teacher)
    ((s1, t1), (s2, t2)), _ = _maps(variant, student, teacher, x, y)
    assert s1.requires_grad and s2.requires_grad and not t1.requires_grad and not t2.requires_grad
    assert s1.shape == t1.shape == (16, 2, 2) and (t1.amax((1, 2)) == 1).any()  # real maps, not all zeros
    torch.testing.assert_close(s1, t1, rtol=0, atol=1e-6)
    torch.testing.assert_close(s2, t2, rtol=0, atol=1e-6)
    assert agk.attention_l1(student_map=s1, teacher_map=t1) < 1e-6


def test_the_gradcam_maps_are_the_librarys_grad_cam_of_the_images(synth16):
    """From the one pass's feature maps: the same maps as grad_cam run on x1' and x2' themselves."""
    (x, y), student, teacher = _batch(synth16), _net(1).eval(), _net(0).eval()
    x1a, x2a = (x + 0.03 * torch.randn_like(x)).clamp(0, 1), (x.flip(0) + 0.03 * torch.randn_like(x)).clamp(0, 1)
    ((s1, t1), (s2, t2)), _ = _maps("gradcam_orig", student, teacher, x, y, x1a=x1a, x2a=x2a)
    torch.testing.assert_close(s1, attention.grad_cam(student, x1a, y), rtol=0, atol=1e-6)
    torch.testing.assert_close(s2, attention.grad_cam(student, x2a, y.flip(0)), rtol=0, atol=1e-6)
    torch.testing.assert_close(t1, attention.grad_cam(teacher, x, y), rtol=0, atol=1e-6)
    torch.testing.assert_close(t2, attention.grad_cam(teacher, x.flip(0), y.flip(0)), rtol=0, atol=1e-6)
    ((c1, _), (c2, _)), _ = _maps("cam_average", student, teacher, x, y, x1a=x1a, x2a=x2a)
    torch.testing.assert_close(c1, attention.cam_average(student, x1a), rtol=0, atol=1e-6)
    torch.testing.assert_close(c2, attention.cam_average(student, x2a), rtol=0, atol=1e-6)


def test_the_false_class_map_is_the_original_class_map_where_the_student_predicts_the_label(synth16):
    (x, y), student, teacher = _batch(synth16), _net(1).eval(), _net(0).eval()
    x1a = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    ((o1, ot1), (o2, ot2)), _ = _maps("gradcam_orig", student, teacher, x, y, x1a=x1a)
    ((f1, ft1), (f2, ft2)), logits = _maps("gradcam_false", student, teacher, x, y, x1a=x1a)
    pred1, pred2 = logits[:16].argmax(1), logits[32:].argmax(1)
    right = pred1 == y
    assert right.any() and (~right).any()   # both cases occur in this batch
    assert torch.equal(ft1, ot1) and torch.equal(ft2, ot2)  # the teacher's map is of the original class in both
    torch.testing.assert_close(f1[right], o1[right], rtol=0, atol=0)
    assert any(not torch.equal(f1[i], o1[i]) for i in torch.nonzero(~right).flatten())  # it is another map
    torch.testing.assert_close(f1[~right], attention.grad_cam(student, x1a[~right], pred1[~right]), rtol=0, atol=1e-6)
    right2 = pred2 == y.flip(0)
    torch.testing.assert_close(f2[right2], o2[right2], rtol=0, atol=0)
    torch.testing.assert_close(f2, attention.grad_cam(student, x.flip(0), pred2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_attention_loss_alone_reaches_the_body_and_the_class_maps_reach_the_head(synth16, variant):
    (x, y), student, teacher = _batch(synth16), _net(1).train(), _net(0).eval()
    ((s1, t1), (s2, t2)), _ = _maps(variant, student, teacher, x, y, x1a=(x + 0.05 * torch.randn_like(x)).clamp(0, 1))
    loss = agk.attention_l1(student_map=s1, teacher_map=t1) + agk.attention_l1(student_map=s2, teacher_map=t2)
    loss.backward()
    body = [p.grad for p in student.body.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and loss > 0 and body and any(g.abs().sum() > 0 for g in body)
    head = student.head.weight.grad
    if variant == "channel":   # the channel sum does not read the head
        assert head is None
    else:                      # Grad-CAM's weights and CAM's read-out are the head's
        assert head is not None and head.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("objective", ["agkd", "agkd_bml"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_training_step_of_each_map_is_finite_and_moves_the_body_and_head(synth16, objective, variant):
    (x, y), student, teacher = _batch(synth16), _net(1).train(), _net(0).eval()
    cfg = train.TrainConfig.build(objective=objective, at_steps=1, agk_attention=variant)
    ctx = StepContext(seed=3, epoch=0, index=torch.arange(16), teacher=teacher, state={})
    loss, logits, _ = OBJECTIVES[objective].loss(student, x, y, cfg, ctx)
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (16, 4)
    grads = {n: p.grad for n, p in student.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["body.0.0.weight"].abs().sum() > 0 and grads["head.weight"].abs().sum() > 0


def test_the_map_changes_the_loss_and_the_channel_map_is_the_released_code_s(synth16):
    (x, y), teacher = _batch(synth16), _net(0).eval()
    ctx = lambda: StepContext(seed=3, epoch=0, index=torch.arange(16), teacher=teacher, state={})  # noqa: E731
    losses = {}
    for variant in VARIANTS:
        cfg = train.TrainConfig.build(objective="agkd", at_steps=1, agk_attention=variant)
        losses[variant] = OBJECTIVES["agkd"].loss(_net(1).eval(), x, y, cfg, ctx())[0].item()
    assert len(set(losses.values())) == 4
    # the channel map against the reference's attention_map (utils.py l.74-81), on the same examples
    student = _net(1).eval()
    ((s1, t1), _), _ = _maps("channel", student, teacher, x, y)
    ref = lambda f: (lambda a: (a - a.amin((1, 2), keepdim=True)) / (a - a.amin((1, 2), keepdim=True))  # noqa: E731
                     .amax((1, 2), keepdim=True))(f.sum(1))
    with torch.no_grad():
        torch.testing.assert_close(s1, ref(student.feature_map(x)))
        torch.testing.assert_close(t1, ref(teacher.feature_map(x)))
        assert F.l1_loss(s1, t1) > 0


# --- the chapter's methods ----------------------------------------------------------------------------

from advbook.evaluation import agk as evaluation  # noqa: E402

P = dict(model="tiny_cnn", seed=0, train_per_class=10, epochs=1, batch_size=20, lr=0.05, weight_decay=1e-4,
         at_eps=6 / 255, at_step_size=1.5 / 255, at_steps=3, mart_beta=5.0, bml_lambda=1.5, pool_per_class=4)
ABLATION = {"agkd_gc_orig": "gradcam_orig", "agkd_gc_false": "gradcam_false", "agkd_cam_avg": "cam_average"}


@pytest.mark.parametrize("method", list(ABLATION))
def test_the_ablation_methods_are_agkd_with_their_map_fixed(method):
    expected = train.TrainConfig.build(objective="agkd", epochs=1, batch_size=20, lr=0.05, weight_decay=1e-4,
                                       at_eps=6 / 255, at_step_size=1.5 / 255, at_steps=3, mart_beta=5.0,
                                       pool_per_class=4, agk_attention=ABLATION[method])
    assert evaluation.method_config(method, P) == expected
    for page_value in VARIANTS:   # the page's setting never overrides the method's map
        assert evaluation.method_config(method, P | {"agk_attention": page_value}) == expected
    assert method in evaluation.NEEDS_TEACHER


@pytest.mark.parametrize("method", ["agkd", "agkd_bml"])
def test_agkd_and_agkd_bml_stay_the_channel_map(method):
    cfg = evaluation.method_config(method, P | {"agk_attention": "cam_average"})
    assert cfg.hyper.attention == "channel" and cfg == evaluation.method_config(method, P)
    assert "agk_attention" not in cfg.key_fields()

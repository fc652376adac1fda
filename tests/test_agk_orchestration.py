"""The AGK chapter's orchestration: the student that starts from its teacher (AGKD-BML's --nat_init)
and the chapter's methods registry, evaluation suite and k-NN table."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from advbook.models import build_model
from advbook.training import train
from advbook.training.framework import Objective, check_registry
from advbook.training.registry import OBJECTIVES


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def net(synth, name="tiny_cnn", seed=0, num_classes=4):
    torch.manual_seed(seed)
    return build_model(name, num_classes=num_classes, mean=synth.mean, std=synth.std)


def as_trained(model, name):
    """A TrainedModel around ``model`` (only ``model`` and ``meta['model']`` are read when building)."""
    return train.TrainedModel(model.eval(), key=f"{name}-key", checkpoint=Path("unused"), meta={"model": name},
                              from_cache=True)


@pytest.fixture(scope="module")
def teacher(synth):
    return as_trained(net(synth, seed=5), "tiny_cnn")


# --- the student starts from its teacher -------------------------------------------------------------

def test_exactly_agkd_and_agkd_bml_start_from_their_teacher():
    assert {n for n, o in OBJECTIVES.items() if o.init_from_teacher} == {"agkd", "agkd_bml"}


@pytest.mark.parametrize("name", ["agkd", "agkd_bml"])
def test_an_agkd_student_s_weights_before_its_first_step_are_the_teacher_s(synth, teacher, name):
    cfg = train.TrainConfig(objective=name)
    torch.manual_seed(123)
    model, opt = train.build_student(model_name="tiny_cnn", dataset=synth, cfg=cfg, seed=0, teacher=teacher)
    after = torch.get_rng_state()
    assert same(weights(model), weights(teacher.model))
    assert not same(weights(model), weights(net(synth)))  # not the seeded start
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], model.parameters()))  # the optimizer steps it
    # copies: a step of the student leaves the teacher as it was
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), teacher.model.parameters()))
    # the random state afterwards is that of any other objective's build (the seeded build still runs)
    train.build_student(model_name="tiny_cnn", dataset=synth, cfg=train.TrainConfig(), seed=0)
    assert torch.equal(torch.get_rng_state(), after)


def test_other_objectives_start_from_the_seeded_build(synth, teacher):
    plain = weights(net(synth))
    for name, o in OBJECTIVES.items():
        if o.init_from_teacher or o.match_features:  # match_features: RRM's own test (test_rrm_objectives.py)
            continue
        model, _ = train.build_student(model_name="tiny_cnn", dataset=synth, cfg=train.TrainConfig(objective=name),
                                       seed=0, teacher=teacher if o.needs_teacher else None)
        assert same(weights(model), plain), name


def test_a_teacher_of_another_architecture_is_refused_naming_both(synth):
    small = as_trained(net(synth, name="small_cnn"), "small_cnn")
    with pytest.raises(ValueError, match=r"^objective 'agkd_bml' starts the student from its teacher's weights: the "
                                         r"teacher is a 'small_cnn', the student a 'tiny_cnn' \(must be the same "
                                         r"architecture\)$"):
        train.build_student(model_name="tiny_cnn", dataset=synth, cfg=train.TrainConfig(objective="agkd_bml"),
                            seed=0, teacher=small)


def test_a_teacher_of_other_classes_is_refused_in_one_line(synth):
    three = as_trained(net(synth, num_classes=3), "tiny_cnn")
    with pytest.raises(ValueError, match=r"^objective 'agkd': the teacher's weights do not fit the student "
                                         r"\(2 tensor\(s\), first head.bias: teacher \(3,\), student \(4,\)\)$"):
        train.build_student(model_name="tiny_cnn", dataset=synth, cfg=train.TrainConfig(objective="agkd"), seed=0,
                            teacher=three)


def test_no_teacher_is_refused(synth):
    with pytest.raises(ValueError, match=r"^objective 'agkd' starts from its teacher's weights and needs a teacher "
                                         r"model$"):
        train.build_student(model_name="tiny_cnn", dataset=synth, cfg=train.TrainConfig(objective="agkd"), seed=0)


def test_the_start_from_the_teacher_is_in_the_key_and_only_there(synth, monkeypatch):
    def key(name):
        return train.model_key(model_name="tiny_cnn", dataset=synth, train_index=None,
                               cfg=train.TrainConfig(objective=name), seed=0, teacher_key="t")

    with_flag = {n: key(n) for n in OBJECTIVES}
    for name in ("agkd", "agkd_bml"):
        monkeypatch.setitem(OBJECTIVES, name, dataclasses.replace(OBJECTIVES[name], init_from_teacher=False))
    without = {n: key(n) for n in OBJECTIVES}
    assert {n for n in OBJECTIVES if with_flag[n] != without[n]} == {"agkd", "agkd_bml"}


def test_the_registry_check_refuses_a_start_from_a_teacher_it_does_not_have():
    bad = {"x": Objective(lambda *a: None, config=OBJECTIVES["standard"].config, init_from_teacher=True)}
    with pytest.raises(ValueError, match=r"^objective 'x': init_from_teacher needs needs_teacher \(the teacher it "
                                         r"starts from\)$"):
        check_registry(bad)

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


# --- the chapter's methods ---------------------------------------------------------------------------

from advbook import data  # noqa: E402
from advbook.analysis import agk as agk_analysis  # noqa: E402
from advbook.evaluation import agk  # noqa: E402

P = dict(model="tiny_cnn", seed=0, train_per_class=10, epochs=1, batch_size=20, lr=0.05, weight_decay=1e-4,
         at_eps=6 / 255, at_step_size=1.5 / 255, at_steps=3, mart_beta=5.0, bml_lambda=1.5, pool_per_class=4,
         eval_eps=8 / 255, eval_step_size=2 / 255, mim_step_size=0.5 / 255, eval_batch_size=16)
OBJECTIVE_OF = {"um": "standard", "at": "pgd_at", "alp": "alp", "sml": "sml", "bml": "bml", "agkd": "agkd",
                "agkd_bml": "agkd_bml", "bilateral": "bilateral", "feature_scatter": "feature_scatter",
                "cat_ce": "cat_ce", "cat_mix": "cat_mix", "agkd_gc_orig": "agkd", "agkd_gc_false": "agkd",
                "agkd_cam_avg": "agkd"}
ATTENTION_OF = {"agkd_gc_orig": "gradcam_orig", "agkd_gc_false": "gradcam_false", "agkd_cam_avg": "cam_average"}


@pytest.mark.parametrize("method", list(OBJECTIVE_OF))
def test_each_method_trains_its_objective_with_the_page_s_shared_settings(method):
    cfg = agk.method_config(method, P)
    fields, default = cfg.key_fields(), train.TrainConfig.build(OBJECTIVE_OF[method]).key_fields()
    assert cfg.objective == OBJECTIVE_OF[method]
    expected = dict(default, epochs=1, batch_size=20, lr=0.05, weight_decay=1e-4)  # momentum etc.: defaults
    expected |= {"agk_attention": ATTENTION_OF[method]} if method in ATTENTION_OF else {}
    owned = set(train.TrainConfig.keywords(cfg.objective))
    if "at_eps" in owned:
        expected["at_eps"] = 6 / 255
    if "at_steps" in owned:  # one-step methods: one step of the budget
        one = method in ("bilateral", "feature_scatter")
        expected |= {"at_step_size": 6 / 255 if one else 1.5 / 255, "at_steps": 1 if one else 3}
    expected |= {k: P[k] for k in ("mart_beta", "bml_lambda", "pool_per_class") if k in owned}
    assert fields == expected


def test_the_page_s_shared_settings_reach_the_methods_that_have_them():
    # which methods the shared attack and own settings reached (a closed list: a method dropped is seen)
    got = {k: sorted(m for m in agk.METHODS if k in agk.method_config(m, P).key_fields()
                     and agk.method_config(m, P).key_fields()[k] == P[k]) for k in ("at_eps", "at_steps", "mart_beta")}
    t3 = ["agkd_cam_avg", "agkd_gc_false", "agkd_gc_orig"]   # AGK-T3's ablation: agkd with another map
    assert got == {"at_eps": sorted(["agkd", "agkd_bml", "alp", "at", "bilateral", "bml", "feature_scatter", "sml",
                                     *t3]),
                   "at_steps": sorted(["agkd", "agkd_bml", "alp", "at", "bml", "cat_ce", "cat_mix", "sml", *t3]),
                   "mart_beta": sorted(["agkd", "agkd_bml", "bml", *t3])}
    assert agk.NEEDS_TEACHER == ("agkd", "agkd_bml", "agkd_gc_orig", "agkd_gc_false", "agkd_cam_avg")
    assert all(OBJECTIVES[OBJECTIVE_OF[m]].needs_teacher == (m in agk.NEEDS_TEACHER) for m in OBJECTIVE_OF)


def test_an_unknown_method_is_refused_naming_the_valid_ones(synth, monkeypatch):
    monkeypatch.setattr(agk, "train_model", lambda **kw: pytest.fail("trained"))
    valid = ("um, at, alp, sml, bml, agkd, agkd_bml, bilateral, feature_scatter, cat_ce, cat_mix, agkd_gc_orig, "
             "agkd_gc_false, agkd_cam_avg")
    with pytest.raises(ValueError, match=rf"^unknown method 'trades'; valid: {valid}$"):
        agk.train_methods(["um", "trades"], P=P, dataset=synth, teacher=None, device="cpu")
    with pytest.raises(ValueError, match=r"^methods agkd_bml start from and distil a teacher: give teacher=$"):
        agk.train_methods(["um", "agkd_bml"], P=P, dataset=synth, teacher=None, device="cpu")


def test_the_teacher_is_the_undefended_model_unless_the_page_says_otherwise():
    assert agk.teacher_config(P) == agk.method_config("um", P)
    other = agk.teacher_config(P | {"teacher_epochs": 3, "teacher_lr": 0.1})
    assert (other.epochs, other.lr, other.objective) == (3, 0.1, "standard")


def test_train_methods_trains_in_order_and_gives_the_agkd_students_the_teacher(synth, fresh_cache):
    teacher = agk.train_teacher(P, dataset=synth, device="cpu")
    seen = []
    models = agk.train_methods(["um", "at", "agkd_bml"], P=P, dataset=synth, teacher=teacher, device="cpu",
                               on_model=lambda m: seen.append(m.meta["config"]["objective"]))
    assert seen == ["standard", "pgd_at", "agkd_bml"] and list(models) == ["um", "at", "agkd_bml"]
    assert models["um"].from_cache and models["um"].key == teacher.key  # the teacher is UM, cached once
    assert [models[m].meta["teacher"] for m in models] == [None, None, teacher.key]
    assert all(models[m].meta["n_train"] == 40 for m in models)  # train_per_class 10 of 4 classes


@pytest.fixture(scope="module")
def images(synth):
    index = torch.arange(0, 64, 2)
    return index, data.to_float(synth.test.images[index]), synth.test.labels[index]


T1 = ["natural", "fgsm", "bim:10", "pgd:10", "pgd:20", "cw:10", "cw:20", "mim:40"]


def test_the_t1_attacks_are_the_supplement_s_columns_at_the_page_s_budgets():
    e, s = 8 / 255, 2 / 255
    assert agk.attacks_for(P, autoattack=True, surrogates=("vgg",)) == {
        "fgsm": {"eps": e}, "bim:10": {"eps": e, "step_size": s, "steps": 10},
        "pgd:10": {"eps": e, "step_size": s, "steps": 10, "seed": 0},
        "pgd:20": {"eps": e, "step_size": s, "steps": 20, "seed": 0},
        "cw:10": {"eps": e, "step_size": s, "steps": 10, "seed": 0},
        "cw:20": {"eps": e, "step_size": s, "steps": 20, "seed": 0},
        "mim:40": {"eps": e, "step_size": 0.5 / 255, "steps": 40},
        "autoattack": {"eps": e, "seed": 0},
        "transfer:vgg": {"surrogate": "vgg", "eps": e, "step_size": s, "steps": 20, "seed": 0}}
    without = {k: v for k, v in P.items() if k != "mim_step_size"}
    assert agk.attacks_for(without)["mim:40"]["step_size"] == s and list(agk.attacks_for(without)) == T1[1:]


def test_evaluate_methods_rows_are_the_means_of_their_flags(synth, tiny_model, images):
    index, x, y = images
    models = {"um": as_trained(tiny_model, "tiny_cnn")}
    rows, flags = agk.evaluate_methods(models, x=x, y=y, index=index, P=P, surrogates={"self": tiny_model})
    names = T1 + ["transfer:self"]
    assert rows["evaluation"].tolist() == names and set(rows["method"]) == {"um"}
    assert rows["ran"].tolist() == ["natural", "FGSM", "BIM-10", "PGD-10", "PGD-20", "CW-10", "CW-20", "MIM-40",
                                    "PGD-20 transfer from self"]
    means = flags.groupby("evaluation", sort=False)["robust"].mean() * 100
    assert means.index.tolist() == names and means.tolist() == pytest.approx(rows["accuracy"].tolist(), abs=0)
    assert (rows["n"] == 32).all() and (rows["seed"] == 0).all()
    for e in names:
        assert flags[flags.evaluation == e]["index"].tolist() == index.tolist()
    natural = (tiny_model(x).argmax(1) == y).numpy()
    wide = flags.pivot(index="index", columns="evaluation", values="robust")
    assert (wide["natural"].to_numpy() == natural).all()
    assert not (wide[names[1:]].to_numpy() & ~natural[:, None]).any()  # an attack never fixes a mistake
    # the model as its own surrogate: white-box PGD-20, flag for flag (a transfer column that ran)
    assert wide["transfer:self"].equals(wide["pgd:20"]) and rows.loc[rows.evaluation == "pgd:20", "accuracy"].item() < 100


def test_evaluate_methods_checks_the_index_before_any_attack(tiny_model, images):
    index, x, y = images
    with pytest.raises(ValueError, match=r"^index must give the test position of each of the 32 images, got 31$"):
        agk.evaluate_methods({"um": as_trained(tiny_model, "tiny_cnn")}, x=x, y=y, index=index[:-1], P=P)


def test_knn_table_rows_and_flags_agree_and_a_point_is_its_own_nearest_neighbour(synth, tiny_model, images):
    index, x, y = images
    models = {"um": as_trained(tiny_model, "tiny_cnn")}
    rows, flags = agk_analysis.knn_table(models, train_x=x, train_y=y, x=x, y=y, P=P | {"knn_k": 1}, index=index)
    assert rows[["classifier", "evaluation"]].values.tolist() == [["knn", "natural"], ["softmax", "natural"],
                                                                   ["knn", "pgd:20"], ["softmax", "pgd:20"]]
    means = flags.groupby(["classifier", "evaluation"], sort=False)["correct"].mean() * 100
    assert means.tolist() == pytest.approx(rows["accuracy"].tolist(), abs=0)
    acc = rows.set_index(["classifier", "evaluation"])["accuracy"]
    assert acc["knn", "natural"] == 100  # 1-NN over the test images themselves: each one finds itself
    softmax = flags[(flags.classifier == "softmax") & (flags.evaluation == "natural")]["correct"].to_numpy()
    assert (softmax == (tiny_model(x).argmax(1) == y).numpy()).all() and acc["softmax", "pgd:20"] < acc["softmax", "natural"]
    assert flags[flags.classifier == "knn"]["index"].tolist() == index.tolist() * 2


def test_knn_table_refuses_a_k_beyond_the_training_set_before_any_attack(tiny_model, images, monkeypatch):
    index, x, y = images
    monkeypatch.setattr(agk_analysis, "clean_and_adversarial", lambda *a, **kw: pytest.fail("attacked"))
    with pytest.raises(ValueError, match=r"^knn_k must be an integer in \[1, 32\] \(the k-NN training set's size\), "
                                         r"got 50$"):
        agk_analysis.knn_table({"um": as_trained(tiny_model, "tiny_cnn")}, train_x=x, train_y=y, x=x, y=y, P=P)

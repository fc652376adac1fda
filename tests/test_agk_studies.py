"""The AGK chapter's studies: Table 4's timing (AGK-T4), the width/length study under AutoAttack
(AGK-T2), the transfer surrogates (AGK-T5), and AGK-F1's t-SNE points and k-NN flags."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from advbook import data
from advbook.analysis import agk as agk_analysis
from advbook.evaluation import agk, agk_studies
from advbook.training import train

P = dict(model="tiny_cnn", seed=0, train_per_class=10, epochs=1, batch_size=20, lr=0.05, weight_decay=1e-4,
         at_eps=6 / 255, at_step_size=1.5 / 255, at_steps=3, eval_eps=8 / 255, eval_step_size=2 / 255,
         eval_batch_size=16, timing_batches=1, timing_repeats=2, pool_per_class=4)


def as_trained(model, name="tiny_cnn"):
    return train.TrainedModel(model.eval(), key=f"{name}-key", checkpoint=Path("unused"), meta={"model": name},
                              from_cache=True)


@pytest.mark.parametrize("name, steps", list(agk_studies.TABLE4_STEPS.items()))
def test_each_method_is_timed_with_table_4_s_steps_spanning_the_page_s_distance(name, steps):
    cfg = agk_studies._timed_config(name, P, table4_steps=True).key_fields()
    assert cfg["at_steps"] == steps and cfg["at_eps"] == P["at_eps"]
    if name in agk.ONE_STEP:
        assert cfg["at_step_size"] == P["at_eps"]
    else:  # the same distance as the page's steps: 3 x 1.5/255
        assert cfg["at_step_size"] * steps == pytest.approx(P["at_steps"] * P["at_step_size"])
    # everything else is the page's method
    rest = lambda c: {k: v for k, v in c.items() if k not in ("at_steps", "at_step_size")}  # noqa: E731
    assert rest(cfg) == rest(agk.method_config(name, P).key_fields())
    assert agk_studies._timed_config(name, P, table4_steps=False) == agk.method_config(name, P)


def test_timing_rows_carry_the_steps_and_the_table_gives_ratios_to_at(synth):
    teacher = as_trained(train.train_model(model_name="tiny_cnn", dataset=synth, seed=0,
                                           cfg=agk.teacher_config(P), train_index=agk.train_index(P, synth)).model)
    rows = agk_studies.time_methods(["at", "agkd_bml", "bilateral"], P=P, dataset=synth, teacher=teacher, device="cpu")
    assert len(rows) == 6 and set(rows["repeat"]) == {0, 1}
    assert rows.groupby("method")["steps"].first().to_dict() == {"at": 7, "agkd_bml": 2, "bilateral": 1}
    table = agk_studies.time_table(rows).set_index("method")
    assert table.loc["at", "ratio_to_at"] == 1.0 and (table["rounds"] == 2).all()
    median = rows[rows.method == "bilateral"]["seconds_per_epoch"].median()
    assert table.loc["bilateral", "ratio_to_at"] == pytest.approx(median / table.loc["at", "seconds_per_epoch"])
    with pytest.raises(ValueError, match="unknown method 'pgd'; valid: um, "):
        agk_studies.time_methods(["at", "pgd"], P=P, dataset=synth, teacher=teacher, device="cpu")


def test_the_width_study_and_the_surrogates_refuse_other_counts_before_training(synth, monkeypatch):
    monkeypatch.setattr(agk, "train_teacher", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(agk_studies, "train_model", lambda *a, **k: pytest.fail("trained"))
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"^width_study needs two models and two epoch points, got \['tiny_cnn'\]"):
        agk_studies.width_study(P | {"models": ["tiny_cnn"], "epoch_points": [1, 2]}, dataset=synth, x=x,
                                y=torch.zeros(2, dtype=torch.long), index=torch.arange(2), device="cpu")
    with pytest.raises(ValueError, match=r"^surrogates must name 2 architectures \(for vgg, wrn\), got \['tiny_cnn'\]$"):
        agk_studies.train_surrogates(P | {"surrogates": ["tiny_cnn"]}, dataset=synth, device="cpu")


def test_the_surrogates_are_trained_naturally_under_their_roles(synth, fresh_cache):
    out = agk_studies.train_surrogates(P | {"surrogates": ["micro_cnn", "tiny_cnn"]}, dataset=synth, device="cpu")
    assert list(out) == ["vgg", "wrn"] and [m.meta["model"] for m in out.values()] == ["micro_cnn", "tiny_cnn"]
    assert all(m.meta["config"]["objective"] == "standard" for m in out.values())
    assert out["wrn"].key == agk.train_teacher(P, dataset=synth, device="cpu").key   # the same config: one entry


@pytest.fixture(scope="module")
def images(synth):
    index = torch.arange(0, 64, 2)
    return index, data.to_float(synth.test.images[index]), synth.test.labels[index]


TSNE = P | {"tsne_classes": [0, 2], "tsne_steps": [2, 5], "tsne_perplexity": 5.0, "knn_metric": "cosine"}


def test_tsne_points_place_the_attacked_classes_among_every_clean_point_bit_for_bit(tiny_model, images):
    index, x, y = images
    models = {"um": as_trained(tiny_model), "again": as_trained(tiny_model)}
    points, feats = agk_analysis.tsne_points(models, x=x, y=y, P=TSNE, index=index)
    attacked = int(torch.isin(y, torch.tensor([0, 2])).sum())
    sizes = points.groupby(["method", "attack", "kind"], sort=False).size()
    assert sizes["um", "pgd:2", "clean"] == 32 and sizes["um", "pgd:5", "adversarial"] == attacked
    adv = points[points.kind == "adversarial"]
    assert set(adv["attacked"]) == {0, 2} and (adv["attacked"] == adv["label"]).all()
    assert (points[points.kind == "clean"]["attacked"] == -1).all()
    # the same model twice: the same map, bit for bit (t-SNE seeded, one thread)
    a, b = (points[points.method == m][["x", "y"]].to_numpy() for m in ("um", "again"))
    assert np.array_equal(a, b)
    # the features behind the maps: clean once per model, each attack's adversarial ones
    assert feats.groupby(["method", "kind"], sort=False).size()["um"].to_dict() == {"clean": 32, "pgd:2": attacked,
                                                                                   "pgd:5": attacked}
    f = feats[(feats.method == "um") & (feats.kind == "clean")].filter(like="f").to_numpy()
    assert np.allclose(f, tiny_model.features(x).detach().numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"^no image of tsne_classes=\[3\] among the 2 images$"):
        agk_analysis.tsne_points(models, x=x[:2], y=torch.tensor([0, 1]), P=TSNE | {"tsne_classes": [3]})


def test_knn_table_names_the_attack_by_its_steps_and_can_leave_the_clean_rows_out(tiny_model, images):
    index, x, y = images
    rows, flags = agk_analysis.knn_table({"um": as_trained(tiny_model)}, train_x=x, train_y=y, x=x, y=y,
                                         P=P | {"knn_k": 3}, index=index, steps=5, clean=False)
    assert rows[["classifier", "evaluation"]].values.tolist() == [["knn", "pgd:5"], ["softmax", "pgd:5"]]
    assert set(flags["evaluation"]) == {"pgd:5"}


def test_time_ratios_are_the_medians_ratio_with_a_paired_interval():
    import pandas as pd
    load = [1.0, 3.0, 1.2, 0.9, 2.0, 1.1]          # a load common to both methods in each round
    rows = pd.DataFrame([{"method": m, "repeat": r, "seconds_per_epoch": base * f}
                         for m, base in (("at", 10.0), ("sml", 15.0)) for r, f in enumerate(load)])
    out = agk_analysis.time_ratios(rows).set_index("method")
    assert out.loc["at", "ratio"] == 1.0 and out.loc["sml", "ratio"] == pytest.approx(1.5)
    assert out.loc["sml", "low"] == pytest.approx(1.5) and out.loc["sml", "high"] == pytest.approx(1.5)  # paired: exact
    assert (out["rounds"] == 6).all()
    table = agk_studies.time_table(rows.assign(steps=7, epochs=10, seconds_per_run=0.0, device="cpu"))
    long = agk_studies.time_beside_rows(table)
    assert long.set_index(["method", "quantity"])["value"]["sml", "ratio_to_at"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"^the reference 'at' was not timed; timed: sml$"):
        agk_analysis.time_ratios(rows[rows.method == "sml"])


def test_columns_of_keeps_the_asked_evaluations_and_names_a_missing_one():
    import pandas as pd
    rows = pd.DataFrame({"method": ["a"] * 3, "evaluation": ["natural", "pgd:20", "fgsm"], "accuracy": [1, 2, 3]})
    assert agk_studies.columns_of(rows, ["natural", "fgsm"])["accuracy"].tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"^no results for cw:20; evaluated: natural, pgd:20, fgsm$"):
        agk_studies.columns_of(rows, ["cw:20"])


def test_the_paper_s_ratios_are_table_4_s_seconds_over_at_s():
    from advbook.book import report
    paper = report.paper_table("AGK-T4")
    ratios = agk_studies.paper_ratios(paper).set_index("method")["ratio"]
    seconds = paper[paper.quantity == "seconds_per_epoch"].set_index("method")["value"].astype(float)
    assert ratios.to_dict() == pytest.approx((seconds / seconds["at"]).to_dict(), abs=0.005)


def test_pulled_back_reads_the_saved_features_with_the_k_nn_and_the_model_s_own_head(tiny_model, images):
    index, x, y = images
    models = {"um": as_trained(tiny_model)}
    _, feats = agk_analysis.tsne_points(models, x=x, y=y, P=TSNE, index=index)
    # the clean features relabelled as an "attack": the head must give the model's own clean predictions,
    # and a 1-NN over the same images must find each image itself
    copy = feats[feats.kind == "clean"].assign(kind="copy")
    rows, flags = agk_analysis.pulled_back(models, copy, train_x=x, train_y=y, P=TSNE | {"knn_k": 1})
    assert rows[["classifier", "evaluation", "n"]].values.tolist() == [["knn", "copy", 32], ["softmax", "copy", 32]]
    soft = flags[flags.classifier == "softmax"].set_index("index")["correct"]
    assert (soft.loc[index.numpy()].to_numpy() == (tiny_model(x).argmax(1) == y).numpy()).all()
    assert flags[flags.classifier == "knn"]["correct"].all()
    # the real attacks: one row per (attack, classifier), on the attacked classes' images only
    rows, flags = agk_analysis.pulled_back(models, feats, train_x=x, train_y=y, P=TSNE | {"knn_k": 3})
    attacked = int(torch.isin(y, torch.tensor([0, 2])).sum())
    assert set(rows["evaluation"]) == {"pgd:2", "pgd:5"} and (rows["n"] == attacked).all()
    assert (flags.groupby(["classifier", "evaluation"])["correct"].mean() * 100).round(6).tolist() == \
        rows.set_index(["classifier", "evaluation"]).sort_index()["accuracy"].round(6).tolist()


def test_pick_keeps_the_asked_order_and_names_a_model_not_trained():
    models = {"um": "U", "at": "A", "sml": "S"}
    assert list(agk.pick(models, ["sml", "um"]).items()) == [("sml", "S"), ("um", "U")]
    with pytest.raises(ValueError, match=r"^no model for bml; trained: um, at, sml$"):
        agk.pick(models, ["at", "bml"])

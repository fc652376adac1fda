"""The library functions behind the VIR pages: the ablation variants, the cost of Table 8, the
training table and the sample weights of Fig. 3, several seeds and variants trained and evaluated,
the dataset loop of Tables 3-4 and the confusion matrices of Figs. 1-2; on hand-made cases, fake
trained models and tiny real trainings."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from advbook.data import registry
from advbook.data.cifar import DatasetUnavailable, balanced_subset
from advbook.core.tensors import to_float
from advbook.evaluation import confusion, evaluate, seeds as seed_eval
from advbook.models.predict import predict
from advbook.training import defenses

EPS = 8 / 255
PARAMS = dict(model="tiny_cnn", seed=0, train_per_class=25, epochs=3, batch_size=50, lr=0.05, weight_decay=5e-4,
              at_eps=8 / 255, at_step_size=4 / 255, at_steps=2, reweight_from=2, trades_beta=5.0,
              vir_trades_beta=5.0, eval_batch_size=64)
ABLATION = dict(tables=["T6", "T9", "T11"], at_betas=[0.0, 0.007], trades_betas=[1.6], at_alphas=[5.0],
                at_gammas=[2.0], trades_alphas=[8.0], trades_gammas=[3.0])


# ---------------------------------------------------------------- ablation variants and costs

def test_ablation_variants_label_the_rows_and_set_only_what_varies():
    tables = defenses.ablation_variants(ABLATION)
    assert list(tables) == ["T6", "T9", "T11"]                          # only the tables asked for
    assert tables["T6"] == {"plain": ("at", {}), "sv": ("vir_at", {"vir_use": "sv"}),
                            "sd": ("vir_at", {"vir_use": "sd"}), "full": ("vir_at", {}),
                            "mean (ours)": ("vir_at_mean", {}), "norm (ours)": ("vir_at_norm", {})}
    assert tables["T9"] == {"beta=0": ("vir_at", {"vir_beta": 0.0}), "beta=0.007": ("vir_at", {"vir_beta": 0.007})}
    # alpha varied at the paper's gamma (10), gamma varied at the paper's alpha (7)
    assert tables["T11"] == {"alpha=5,gamma=10": ("vir_at", {"vir_alpha": 5.0}),
                             "alpha=7,gamma=2": ("vir_at", {"vir_gamma": 2.0})}
    trades = defenses.ablation_variants({**ABLATION, "tables": ["T7", "T10", "T12"]})
    assert trades["T7"]["plain"] == ("trades", {}) and trades["T7"]["sd"] == ("vir_trades", {"vir_use": "sd"})
    assert trades["T10"] == {"beta=1.6": ("vir_trades", {"vir_beta": 1.6})}
    assert trades["T12"] == {"alpha=8,gamma=3": ("vir_trades", {"vir_gamma": 3.0})}   # alpha 8 at gamma 3: the
    assert defenses.ablation_variants({**ABLATION, "tables": []}) == {}               # same label, gamma's last


def test_every_ablation_variant_is_a_valid_training_configuration():
    for jobs in defenses.ablation_variants({**ABLATION, "tables": ["T6", "T7", "T9", "T10", "T11", "T12"]}).values():
        for defense, overrides in jobs.values():
            cfg = defenses.defense_config(defense, PARAMS, **overrides)
            assert all(cfg.key_fields()[k] == v for k, v in overrides.items())  # flat keywords of cfg.hyper


def test_wide_data_cost_in_closed_form():
    cost = defenses.wide_data_cost()
    assert list(cost.columns) == ["quantity", "value"] and len(cost) == 6
    # 20e6 images x 400 epochs = 8e9; x 11 passes = 8.8e10; x 3 x 5.25 GFLOP = 1.386e21 FLOP
    # -> 1.386e21 / 2e14 / 86400 = 80.2 days; / 5e10 / 86400 / 365 = 879 years; 20e6 x 3072 B = 61 GB
    assert cost["value"].tolist() == ["8.0e+09", "8.8e+10", "1.4e+21", "80", "879", "61"]
    assert cost["quantity"][1] == "forward-backward passes (10-step attack + update)"
    small = defenses.wide_data_cost(images=1e6, epochs=2, attack_steps=0, gflops_per_image=1.0)
    assert small["value"].tolist() == ["2.0e+06", "2.0e+06", "6.0e+15", "0", "0", "3"]
    assert small["quantity"][1] == "forward-backward passes (0-step attack + update)"


# ---------------------------------------------------------------- training table and weights (fakes)

def _fake(objective="vir_at", *, forked=None, cached=False, seconds=1.5, records=None):
    return SimpleNamespace(meta={"config": {"objective": objective}, "forked_from": forked, "train_seconds": seconds},
                           from_cache=cached, records=lambda: records or {})


def test_training_table_has_one_row_per_seed_and_model():
    trained = {0: {"at": _fake("pgd_at", seconds=2.0), "vir_at": _fake("vir_at", forked="x-e2.pt", cached=True)},
               1: {"at": _fake("pgd_at", cached=True, seconds=0.5)}}
    table = defenses.training_table(trained)
    assert list(table.columns) == ["seed", "model", "objective", "forked from the burn-in", "from cache",
                                   "train seconds"]
    assert table.values.tolist() == [[0, "at", "pgd_at", False, False, 2.0], [0, "vir_at", "vir_at", True, True, 1.5],
                                     [1, "at", "pgd_at", False, True, 0.5]]


def _record(index, w, s_v, s_d):
    t = lambda v: torch.tensor(v, dtype=torch.float32)
    return {"index": torch.tensor(index), "p_y": t([0.5] * len(index)), "S_v": t(s_v), "S_d": t(s_d), "w": t(w)}


def test_weight_records_and_summary_on_hand_weights():
    labels = torch.tensor([0, 0, 1, 1, 2])                                # the training split's labels
    records = {3: _record([0, 1, 2, 3], [1, 1, 1, 3], [0.1, 0.1, 0.1, 0.1], [0.07, 0.07, 0.07, 0.07]),
               4: _record([3, 2, 1, 0], [1, 1, 3, 3], [0.2, 0.2, 0.2, 0.2], [0.07, 0.07, 0.07, 0.07])}
    trades = {5: _record([4, 0], [2, 2], [0.8, 0.8], [1.0, 1.0])}
    models = {"vir_at": _fake(records=records), "at": _fake("pgd_at"), "vir_trades": _fake("vir_trades", records=trades)}
    sums, raw = defenses.weight_records(models, labels, names=["vir_at", "gairat", "vir_trades"], num_classes=3)
    assert list(sums) == ["vir_at", "vir_trades"]                         # gairat was not trained
    s = sums["vir_at"].set_index(["epoch", "class"])["share"]
    # epoch 3: class 0 holds 2 of 6, class 1 holds 4; epoch 4: class 0 holds 6 of 8
    assert s.tolist() == pytest.approx([1 / 3, 2 / 3, 0, 0.75, 0.25, 0])
    assert sums["vir_trades"]["weight_sum"].tolist() == pytest.approx([2, 0, 2])
    assert list(raw.columns) == ["index", "p_y", "S_v", "S_d", "w", "defense", "epoch"] and len(raw) == 8 + 2
    assert raw["epoch"].tolist() == [3] * 4 + [4] * 4 + [5] * 2
    assert raw["defense"].tolist() == ["vir_at"] * 8 + ["vir_trades"] * 2
    summary = defenses.weight_summary(sums, raw, classes=("plane", "car", "bird"))
    assert summary.index.tolist() == ["vir_at", "vir_trades"]
    row = summary.loc["vir_at"]
    # mean shares: plane (1/3 + 3/4) / 2 = 0.54, car 0.46, bird 0
    assert row["largest share"] == "plane" and row["smallest share"] == "bird"
    # mean S_v S_d = (0.007 + 0.014) / 2 against VIR-AT's beta 0.007; 0.8 against VIR-TRADES's 1.6
    assert row["mean S_v·S_d / beta"] == pytest.approx(1.5, rel=1e-5)
    assert summary.loc["vir_trades", "mean S_v·S_d / beta"] == pytest.approx(0.5, rel=1e-5)
    assert summary.loc["vir_trades", "smallest share"] == "car"


def test_weight_records_and_summary_of_nothing():
    sums, raw = defenses.weight_records({"at": _fake("pgd_at")}, torch.tensor([0, 1]), names=["vir_at"], num_classes=2)
    assert sums == {} and raw.empty
    assert defenses.weight_summary(sums, raw, classes=("a", "b")).empty


# ---------------------------------------------------------------- real tiny trainings

def test_train_seeds_then_variants_share_the_cache_and_the_burn_in(synth, fresh_cache):
    params = {**PARAMS, "train_per_class": 10}
    seen = []
    trained = defenses.train_seeds(["vir_at", "at"], params=params, dataset=synth, seeds=[0, 1], device="cpu",
                                   on_model=seen.append)
    assert list(trained) == [0, 1] and all(list(m) == ["at", "vir_at"] for m in trained.values())   # bases first
    assert [m.key for m in seen] == [trained[s][n].key for s in (0, 1) for n in ("at", "vir_at")]
    assert trained[0]["at"].key != trained[1]["at"].key                     # the seed is part of the model
    table = defenses.training_table(trained)
    assert table[["seed", "model", "objective"]].values.tolist() == [[0, "at", "pgd_at"], [0, "vir_at", "vir_at"],
                                                                     [1, "at", "pgd_at"], [1, "vir_at", "vir_at"]]
    assert table["forked from the burn-in"].tolist() == [False, True, False, True]
    assert not table["from cache"].any()
    assert defenses.training_table(defenses.train_seeds(["at", "vir_at"], params=params, dataset=synth, seeds=[0, 1],
                                                        device="cpu"))["from cache"].all()
    # Fig. 3's inputs from the real records: the one reweighted epoch, every training image once
    sums, raw = defenses.weight_records(trained[0], synth.train.labels, names=["vir_at", "vir_trades"], num_classes=4)
    assert list(sums) == ["vir_at"] and sorted(raw.epoch.unique()) == [3] and len(raw) == 4 * 10
    assert sums["vir_at"]["share"].sum() == pytest.approx(1.0)
    summary = defenses.weight_summary(sums, raw, classes=synth.classes)
    assert summary.loc["vir_at", "mean S_v·S_d / beta"] == pytest.approx((raw.S_v * raw.S_d).mean() / 0.007)
    # the variants: labelled "<table>:<row>", the plain row is the cached PGD-AT, the others fork
    tables = {"T6": {"plain": ("at", {}), "sv": ("vir_at", {"vir_use": "sv"})}}
    variants = defenses.train_variants(tables, params=params, dataset=synth, seeds=[0], device="cpu",
                                       on_model=seen.append)
    assert list(variants) == [0] and sorted(variants[0]) == ["T6:plain", "T6:sv"]
    assert variants[0]["T6:plain"].from_cache and variants[0]["T6:plain"].key == trained[0]["at"].key
    assert not variants[0]["T6:sv"].from_cache and variants[0]["T6:sv"].meta["forked_from"]
    assert len(seen) == 4 + 2


# ---------------------------------------------------------------- evaluating seeds and variants

def _as_trained(model, key):
    return SimpleNamespace(model=model, key=key)


@pytest.fixture
def white_black(synth):
    index = torch.arange(0, 16)
    x, y = to_float(synth.test.images[index]), synth.test.labels[index]
    return (x, y, index), (x[:6], y[:6], index[:6])


def test_evaluate_seeds_keeps_the_named_models_of_every_seed(tiny_model, white_black, fresh_cache):
    (x, y, index), _ = white_black
    trained = {s: {n: _as_trained(tiny_model, f"pages-vir-{s}-{n}") for n in ("a", "b")} for s in (0, 1)}
    results, flags, seconds = seed_eval.evaluate_seeds(trained, names=["a", "missing"], x=x, y=y, index=index,
                                                       attacks={"fgsm": dict(eps=EPS)}, batch_size=8)
    assert set(results.defense) == {"a"} and results.seed.tolist() == [0, 0, 0, 1, 1, 1]
    assert results.evaluation.tolist() == ["natural", "fgsm", "worst"] * 2
    natural = 100 * (predict(tiny_model, x).argmax(1) == y).float().mean().item()
    assert results[results.evaluation == "natural"].accuracy.tolist() == pytest.approx([natural] * 2)
    assert len(flags) == 2 * len(y) and flags["index"].tolist() == index.tolist() * 2
    assert {"seed", "defense", "index", "label", "natural", "fgsm"} <= set(flags.columns)
    assert set(seconds.evaluation) == {"fgsm"} and set(seconds.seed) == {0, 1}
    renamed = seed_eval.evaluate_seeds(trained, names=["b"], x=x, y=y, index=index, attacks={"fgsm": dict(eps=EPS)},
                                       batch_size=8, unit="variant")
    assert all("variant" in part and "defense" not in part and "model" not in part for part in renamed)


def test_evaluate_variants_counts_every_image_once(tiny_model, white_black, fresh_cache):
    white, black = white_black
    trained = {0: {name: _as_trained(tiny_model, f"pages-var-{name}") for name in ("T6:plain", "T6:full", "T9:beta=0")}}
    results, flags, seconds = seed_eval.evaluate_variants(
        trained, white=white, black=black, black_tables=("T6",), white_attacks={"fgsm": dict(eps=EPS)},
        black_attacks={"spsa": dict(eps=EPS, steps=2, samples=2, seed=0)}, batch_size=8)
    assert {"table", "variant", "seed", "evaluation", "accuracy"} <= set(results.columns)
    evals = results.groupby(["table", "variant"])["evaluation"].apply(list).to_dict()
    assert evals == {("T6", "full"): ["natural", "fgsm", "spsa"], ("T6", "plain"): ["natural", "fgsm", "spsa"],
                     ("T9", "beta=0"): ["natural", "fgsm"]}                 # no worst, one natural each
    natural = 100 * (predict(tiny_model, white[0]).argmax(1) == white[1]).float().mean().item()
    assert results[results.evaluation == "natural"].accuracy.tolist() == pytest.approx([natural] * 3)
    assert len(flags) == 3 * 16 + 2 * 6
    black_rows = flags["spsa"].notna()
    assert black_rows.sum() == 2 * 6 and flags.loc[black_rows, "natural"].isna().all()
    assert flags.loc[black_rows, "worst"].isna().all() and flags.loc[black_rows, "fgsm"].isna().all()
    # the natural flags: the white-box images once per variant, never the black-box subset again
    assert flags.groupby("variant")["natural"].count().to_dict() == {"plain": 16, "full": 16, "beta=0": 16}
    assert set(seconds.evaluation) == {"fgsm", "spsa"}


def test_train_evaluate_on_uses_the_given_architecture_and_a_balanced_subset(synth, fresh_cache):
    seen = []
    results, flags = seed_eval.train_evaluate_on(synth, names=["at"], params={**PARAMS, "model": "small_cnn"},
                                                 model="tiny_cnn", seeds=[0], n=8, attacks={"fgsm": dict(eps=EPS)},
                                                 device="cpu", on_model=seen.append)
    assert [m.meta["model"] for m in seen] == ["tiny_cnn"]
    assert results.evaluation.tolist() == ["natural", "fgsm"] and set(results.defense) == {"at"}
    expected = balanced_subset(synth.test.labels, n_per_class=2, seed=0)
    assert flags["index"].tolist() == expected.tolist() and flags["label"].tolist() == synth.test.labels[expected].tolist()
    assert set(flags.seed) == {0}


def test_on_datasets_runs_what_is_available_and_says_why_not_for_the_rest(synth, fresh_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("ADVBOOK_DATA_TINYIMAGENET", str(tmp_path / "nowhere"))
    monkeypatch.setitem(registry.DATASETS, "tiny_synth", lambda: synth)
    results, flags, status = seed_eval.on_datasets(["tinyimagenet", "tiny_synth"], defenses=["at"], params=PARAMS,
                                                   seeds=[0], n=8, attacks={"fgsm": dict(eps=EPS)}, device="cpu")
    assert list(status) == ["tinyimagenet", "tiny_synth"]
    assert status["tinyimagenet"].startswith("not run: dataset not available (tinyimagenet is not available (")
    assert "nowhere does not exist" in status["tinyimagenet"]
    assert status["tiny_synth"] == f"run ({synth.name}, 400 training images available)"
    assert results.evaluation.tolist() == ["tiny_synth:natural", "tiny_synth:fgsm"]
    assert set(results.dataset) == {"tiny_synth"} and set(flags.dataset) == {"tiny_synth"} and len(flags) == 8
    none = seed_eval.on_datasets(["tinyimagenet"], defenses=["at"], params=PARAMS, seeds=[0], n=8,
                                 attacks={"fgsm": dict(eps=EPS)}, device="cpu")
    assert none[0].empty and none[1].empty and list(none[2]) == ["tinyimagenet"]


def test_on_datasets_lets_other_errors_through(monkeypatch):
    def broken():
        raise RuntimeError("a bug, not missing data")

    monkeypatch.setitem(registry.DATASETS, "broken", broken)
    with pytest.raises(RuntimeError, match="a bug, not missing data"):
        seed_eval.on_datasets(["broken"], defenses=["at"], params=PARAMS, seeds=[0], n=8, attacks={}, device="cpu")
    # DatasetUnavailable is a RuntimeError too: only that class means "not available"
    assert issubclass(DatasetUnavailable, RuntimeError)


# ---------------------------------------------------------------- confusion matrices (Figs. 1-2)

def test_class_predictions_label_natural_and_pgd(tiny_model, test_batch):
    x, _, y = test_batch
    models = {"standard": _as_trained(tiny_model, "s"), "at": _as_trained(tiny_model, "a")}
    pgd = dict(eps=EPS, step_size=2 / 255, steps=5, batch_size=32, seed=0)
    preds = confusion.class_predictions(models, x, y, natural="standard", attacked=["at", "trades"], pgd=pgd)
    assert list(preds) == ["standard (natural)", "at (PGD)"]                 # trades was not trained
    natural = predict(tiny_model, x).argmax(1)
    assert torch.equal(preds["standard (natural)"], natural)
    assert torch.equal(preds["at (PGD)"], evaluate.pgd_predictions(tiny_model, x, y, **pgd))
    wrong = natural != y
    assert torch.equal(preds["at (PGD)"][wrong], natural[wrong])             # a wrong image is not attacked
    assert (preds["at (PGD)"] != y).sum() >= wrong.sum()


def test_confusion_frames_rows_are_percentages_and_the_long_table_matches():
    y = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = {"m (natural)": torch.tensor([0, 0, 1, 1, 0, 2, 2, 2, 0]),
             "m (PGD)": torch.tensor([1, 1, 1, 0, 0, 2, 0, 0, 0])}
    mats, long = confusion.confusion_frames(y, preds, num_classes=4)
    nat = mats["m (natural)"]
    np.testing.assert_allclose(nat[:3], [[200 / 3, 100 / 3, 0, 0], [50, 50, 0, 0], [25, 0, 75, 0]])
    np.testing.assert_allclose(nat.sum(1), [100, 100, 100, 0])               # class 3 has no image
    np.testing.assert_allclose(mats["m (PGD)"].sum(1)[:3], 100)
    assert list(long.columns) == ["matrix", "true", "predicted", "percent"] and len(long) == 2 * 16
    for name, m in mats.items():
        wide = long[long.matrix == name].pivot(index="true", columns="predicted", values="percent").to_numpy()
        np.testing.assert_array_equal(wide, m)


def test_lowest_classes_names_the_least_accurate_per_matrix():
    mats = {"a": np.diag([90.0, 10.0, 50.0, 70.0]), "b": np.diag([5.0, 80.0, 60.0, 1.0])}
    low = confusion.lowest_classes(mats, classes=("cat", "dog", "car", "ship"))
    assert low.to_dict() == {"a": "dog, car", "b": "ship, cat"} and low.name == "2 least accurate classes"
    assert confusion.lowest_classes(mats, classes=("cat", "dog", "car", "ship"), k=1).to_dict() == {"a": "dog",
                                                                                                  "b": "ship"}

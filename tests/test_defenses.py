"""The VIR defenses: their configurations, training them with a shared burn-in, and the summaries
the VIR figures are drawn from."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from advbook.evaluation import compare
from advbook.training import defenses

PARAMS = dict(model="tiny_cnn", seed=0, train_per_class=25, epochs=3, batch_size=50, lr=0.05, weight_decay=5e-4,
              at_eps=8 / 255, at_step_size=4 / 255, at_steps=2, reweight_from=2, trades_beta=5.0,
              vir_trades_beta=5.0)


def test_defense_configs_carry_the_papers_hyperparameters():
    assert defenses.defense_config("vir_at", PARAMS).hyper.alpha == 7.0
    vt = defenses.defense_config("vir_trades", {**PARAMS, "vir_trades_beta": 4.0})
    assert (vt.hyper.alpha, vt.hyper.gamma, vt.hyper.beta, vt.hyper.trades_beta) == (8.0, 3.0, 1.6, 4.0)
    assert defenses.defense_config("trades", PARAMS).hyper.beta == 5.0
    assert defenses.defense_config("vir_at", PARAMS, vir_use="sv").hyper.use == "sv"
    with pytest.raises(ValueError, match="unknown defense 'awp'; valid: standard, at, trades, mart, gairat"):
        defenses.defense_config("awp", PARAMS)
    with pytest.raises(ValueError, match="vir_use must be one of full, sv, sd, mean, norm, got 'both'"):
        defenses.defense_config("vir_at", PARAMS, vir_use="both")


def test_a_defense_takes_the_experiments_settings_it_has_and_no_foreign_override():
    std, at = defenses.defense_config("standard", PARAMS), defenses.defense_config("at", PARAMS)
    assert type(std.hyper).__name__ == "StandardConfig" and std.epochs == 3 and std.batch_size == 50
    assert (at.hyper.eps, at.hyper.step_size, at.hyper.steps) == (8 / 255, 4 / 255, 2)  # no reweight_from, no beta
    assert defenses.defense_config("mart", PARAMS).hyper.beta == 5.0  # MART's own, not trades_beta
    assert defenses.defense_config("gairat", PARAMS).hyper.reweight_from == 2
    with pytest.raises(ValueError, match=r"^objective 'pgd_at' takes no 'vir_use' \(a setting of vir_at, vir_trades\); "
                                         r"valid: epochs, .*, at_norm, at_eps, at_step_size, at_steps$"):
        defenses.defense_config("at", PARAMS, vir_use="sv")


def test_confusion_rows_are_percentages_of_the_true_class():
    m = compare.confusion(labels=[0, 0, 0, 1, 1, 2], predictions=[0, 1, 1, 1, 1, 0], num_classes=3)
    assert m[0].tolist() == pytest.approx([100 / 3, 200 / 3, 0])
    assert m[1].tolist() == [0, 100, 0] and m[2].tolist() == [100, 0, 0]
    with pytest.raises(TypeError):  # a swap would transpose the matrix: the arrays go by name
        compare.confusion([0, 1], [1, 1], num_classes=2)


def test_reweighting_defenses_fork_from_their_base_and_record_weights(synth, fresh_cache):
    trained = defenses.train_defenses(["vir_at", "at", "gairat"], params=PARAMS, dataset=synth, seed=0, device="cpu")
    assert list(trained) == ["at", "vir_at", "gairat"]  # bases first, whatever the order asked
    assert trained["at"].meta["forked_from"] is None
    assert trained["vir_at"].meta["forked_from"] and trained["gairat"].meta["forked_from"]
    sums = defenses.class_weight_sums(trained["vir_at"], synth.train.labels, num_classes=4)
    assert sorted(sums.epoch.unique()) == [3]  # the one reweighted epoch
    assert sums.groupby("epoch")["share"].sum().to_numpy() == pytest.approx([1.0])
    rec = trained["vir_at"].records()[3]
    by_class = np.bincount(synth.train.labels[rec["index"]].numpy(), weights=rec["w"].double().numpy(), minlength=4)
    assert sums.weight_sum.to_numpy() == pytest.approx(by_class)
    again = defenses.train_defenses(["vir_at"], params=PARAMS, dataset=synth, seed=0, device="cpu",
                                    variants={"sv": ("vir_at", {"vir_use": "sv"})})
    assert again["vir_at"].from_cache and not again["sv"].from_cache and again["sv"].meta["forked_from"]
    assert again["sv"].key != again["vir_at"].key
    assert torch.equal(again["sv"].records()[3]["w"], again["sv"].records()[3]["S_v"])


def test_the_controls_are_vir_with_one_setting_changed_and_marked_as_ours():
    assert set(defenses.CONTROLS) == {"vir_at_mean", "vir_at_norm", "vir_trades_mean", "vir_trades_norm"}
    for name in defenses.CONTROLS:
        base, use = name.rsplit("_", 1)
        cfg, ref = defenses.defense_config(name, PARAMS), defenses.defense_config(base, PARAMS)
        assert cfg.hyper == type(ref.hyper)(**{**ref.hyper.__dict__, "use": use})   # only vir_use differs
    assert defenses.paper_only(["at", "vir_at", "vir_at_mean", "vir_trades_norm"]) == ["at", "vir_at"]


def test_weight_scale_is_one_in_the_burn_in_and_the_recorded_mean_after(synth, fresh_cache):
    trained = defenses.train_defenses(["at", "vir_at", "vir_at_mean"], params=PARAMS, dataset=synth, seed=0,
                                      device="cpu")
    frame = defenses.weight_scale(trained, names=["at", "vir_at", "vir_at_mean"], params=PARAMS)
    lr = train_lr(PARAMS)
    for name, g in frame.groupby("defense"):
        assert g["lr"].tolist() == pytest.approx(lr)
        records = trained[name].records()
        expected = [float(records[e + 1]["w"].double().mean()) if e + 1 in records else 1.0
                    for e in range(PARAMS["epochs"])]
        assert g["mean weight"].tolist() == pytest.approx(expected)
        assert (g["lr x mean weight"] == g["lr"] * g["mean weight"]).all()
    at, vir = frame[frame.defense == "at"], frame[frame.defense == "vir_at"]
    assert (at["mean weight"] == 1.0).all() and vir["mean weight"].iloc[-1] < 0.5   # VIR-AT's weights are small
    mean_rec = trained["vir_at_mean"].records()
    assert all(torch.unique(r["w"]).numel() <= -(-len(r["w"]) // PARAMS["batch_size"]) for r in mean_rec.values())


def train_lr(params):
    from advbook.training import train

    cfg = defenses.defense_config("at", params)
    return train.lr_per_epoch(cfg, n_train=params["train_per_class"] * 4)


def test_lr_per_epoch_is_the_mean_of_the_one_cycle_steps():
    from advbook.training import train

    cfg = train.TrainConfig(epochs=2, batch_size=10, lr=0.4, warmup=0.15)
    # 2 steps per epoch, 4 in all, peak after 1: 0.4, 0.4 * 3/3, 0.4 * 2/3, 0.4 * 1/3
    assert train.lr_per_epoch(cfg, n_train=20) == pytest.approx([0.4, 0.2])
    with pytest.raises(ValueError, match="n_train must be >= 1, got 0"):
        train.lr_per_epoch(cfg, n_train=0)

"""Parameters and profiles: every profile is valid; bad input fails fast with the valid choices."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from advbook.book import cli
from advbook.book import experiment


@pytest.mark.parametrize("name", list(experiment.SCHEMAS))
@pytest.mark.parametrize("profile", experiment.PROFILES)
def test_every_profile_resolves(name, profile):
    params = experiment.resolve(name, profile=profile)
    assert set(params) == set(experiment.SCHEMAS[name])


def test_overrides_are_applied_and_coerced():
    p = experiment.resolve("hol_ddb", profile="cpu", overrides={"eps": "8/255", "n_samples": "500",
                                                                "attacks": "pgd", "random_start": "true"})
    assert p["eps"] == pytest.approx(8 / 255) and p["n_samples"] == 500
    assert p["attacks"] == ["pgd"] and p["random_start"] is True


@pytest.mark.parametrize("overrides, message", [
    ({"epsilon": 0.1}, r"unknown parameter\(s\) epsilon for hol_ddb; valid: attack_batch_size, attacks, "),
    ({"n_samples": 0}, r"n_samples=0 is out of range \[10, 10000\]"),
    ({"pgd_norm": "l1"}, r"pgd_norm='l1' is not one of: linf, l2"),
    ({"attacks": ["pgd", "cw"]}, r"each item must be one of pgd, deepfool"),
    ({"epochs": 2.5}, r"epochs=2.5 must be of type int"),
    ({"eps": "abc"}, r"^eps='abc' cannot be read as a number; valid: a number in \[1e-06, 100\]$"),
])
def test_bad_parameters_name_the_valid_choices(overrides, message):
    with pytest.raises(experiment.ParameterError, match=message):
        experiment.resolve("hol_ddb", profile="cpu", overrides=overrides)


def test_bad_profile_and_experiment():
    with pytest.raises(experiment.ParameterError, match=r"unknown profile 'gpu'; valid: smoke, cpu, paper"):
        experiment.resolve("hol_ddb", profile="gpu")
    with pytest.raises(experiment.ParameterError, match=r"unknown experiment 'hol_x'; valid: hol_ddb"):
        experiment.resolve("hol_x", profile="cpu")


def test_start_seeds_and_picks_a_device():
    run = experiment.start("hol_ddb", profile="smoke", overrides={"seed": 7})
    a = torch.rand(3)
    experiment.start("hol_ddb", profile="smoke", overrides={"seed": 7})
    assert torch.equal(a, torch.rand(3))
    assert run.device.type in ("cpu", "cuda") and run.seed == 7
    prov = run.provenance()
    for key in ("params", "profile", "dataset", "checkpoints", "versions", "git", "device", "seeds", "wall_seconds"):
        assert key in prov


def test_cli_rejects_a_bad_parameter_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVBOOK_EXECUTED", str(tmp_path / "executed"))
    assert cli.main(["run", "hol_ddb", "--profile", "smoke", "--set", "epsilon=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advbook: error: unknown parameter 'epsilon' for hol_ddb; valid: ")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "executed").exists()


def test_cli_params_lists_values_and_ranges(capsys):
    assert cli.main(["params", "hol_ddb", "--profile", "cpu", "--set", "eps=4/255"]) == 0
    out = capsys.readouterr().out
    assert "eps" in out and "0.015686" in out and "[1e-06, 100]" in out
    assert "[0, 2147483647]" in out


def test_cli_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "advbook", "params", "hol_ddb", "--profile", "smoke"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "tiny_cnn" in out.stdout


def test_cli_cache_info_and_clear(tmp_path, monkeypatch, capsys):
    from advbook.core import cache

    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "c"))
    (cache.cache_dir("models") / "m").mkdir()  # made by advbook: marked as its cache, so clear may remove it
    cache.cache_dir("data")
    assert cli.main(["cache", "info"]) == 0
    assert "models" in capsys.readouterr().out
    assert cli.main(["cache", "clear", "--only", "models"]) == 0
    assert not (tmp_path / "c" / "models").exists() and (tmp_path / "c" / "data").exists()
    assert cli.main(["cache", "clear"]) == 0
    assert not (tmp_path / "c" / "models").exists() and not (tmp_path / "c" / "data").exists()


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e999", "1/0", "0/0", "1e308/1e-308", "1/2/3", "8/",
                                  "/255", ""])
def test_unreadable_or_infinite_numbers_name_the_parameter_and_its_range(text):
    with pytest.raises(experiment.ParameterError) as err:
        experiment.resolve("hol_ddb", profile="cpu", overrides={"eps": text})
    message = str(err.value)
    assert message.startswith(f"eps={text!r} ") and "[1e-06, 100]" in message, message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_never_pass_a_range_check(value):
    with pytest.raises(experiment.ParameterError, match=r"^eps=(nan|inf|-inf) .*finite"):
        experiment.resolve("hol_ddb", profile="cpu", overrides={"eps": value})
    with pytest.raises(experiment.ParameterError, match=r"^taus="):
        experiment.resolve("hol_kd", profile="cpu", overrides={"taus": [8.0, value]})


def test_eps_range_agrees_with_its_help():
    """hol_ddb's eps: L-inf in (0, 1] pixel units; only an L2 radius may exceed 1."""
    help_text = experiment.SCHEMAS["hol_ddb"]["eps"].help
    assert "L-inf" in help_text and "[0, 1]" in help_text and "L2" in help_text
    with pytest.raises(experiment.ParameterError, match=r"^eps=2.0 .*pgd_norm=linf"):
        experiment.resolve("hol_ddb", profile="cpu", overrides={"eps": 2.0})
    assert experiment.resolve("hol_ddb", profile="cpu", overrides={"eps": 2.0, "pgd_norm": "l2"})["eps"] == 2.0


@pytest.mark.parametrize("name, overrides, message", [
    ("hol_kd", {"criteria": "random", "f6_criteria": "trust"},
     r"^f6_criteria=\['trust'\] must be among criteria=\['random'\]"),
    ("hol_kd", {"f6_tau": 10.0}, r"^f6_tau=10.0 must be one of taus=\[30.0, 8.0\]"),
    ("hol_kd", {"budgets": "100,500"}, r"^budgets=\[100, 500\] .*pool_per_class=400"),
    ("hol_kd", {"taus": "8,8"}, r"^taus=\[8.0, 8.0\] .*once"),
    ("hol_ddb", {"attacks": "pgd,pgd"}, r"^attacks=\['pgd', 'pgd'\] .*once"),
    ("vir_main", {"n_black": 500}, r"^n_black=500 must be at most n_eval=400"),
    ("vir_main", {"reweight_from": 10}, r"^reweight_from=10 must be less than epochs=10"),
    ("vir_main", {"mde_change_point": 20}, r"^mde_change_point=20 must be less than mde_steps=20"),
    ("vir_main", {"mde_targets": 10}, r"^mde_targets=10 .*cifar10.*10 classes"),
    ("hol_ddb", {"dataset": "cifar100", "n_samples": 50}, r"^n_samples=50 .*cifar100.*100 classes"),
    ("hol_ddb", {"dataset": "cifar100", "train_per_class": 600}, r"^train_per_class=600 .*500 training images per class"),
    ("hol_freq", {"dataset": "synthetic", "train_per_class": 20, "n_samples": 100, "example_index": 500},
     r"^example_index=500 .*100 test images"),
    ("hol_kd", {"dataset": "synthetic", "pool_per_class": 12, "budgets": "4,8", "n_eval": 3000},
     r"^n_eval=3000 must be at most 100: synthetic has 10 test images per class"),
    ("hol_kd", {"dataset": "tinyimagenet", "n_eval": 100}, r"^n_eval=100 must be at least 200: tinyimagenet has 200"),
])
def test_parameters_that_must_agree_are_checked_together(name, overrides, message):
    with pytest.raises(experiment.ParameterError, match=message) as err:
        experiment.resolve(name, profile="cpu", overrides=overrides)
    assert len(str(err.value).splitlines()) == 1


def test_calibration_leaves_two_images_to_cluster_and_one_to_flag():
    from advbook.book import schemas

    params = {**experiment.resolve("hol_trust", profile="cpu"), "n_samples": 20, "calibration_share": 0.05}
    with pytest.raises(experiment.ParameterError, match=r"^calibration_share=0.05 .*n_samples=20"):
        schemas.cross_check("hol_trust", params)
    params.update(calibration_share=1.0)
    with pytest.raises(experiment.ParameterError, match=r"^calibration_share=1.0 .*n_samples=20"):
        schemas.cross_check("hol_trust", params)
    params.update(calibration_share=0.5)
    schemas.cross_check("hol_trust", params)


def test_vir_trades_beta_help_says_what_a_different_value_does():
    """The paper's profile uses trades_beta=4, vir_trades_beta=5: valid, but VIR-TRADES then
    cannot fork from TRADES' burn-in; the help must not claim the two are always equal."""
    paper = experiment.resolve("vir_main", profile="paper")
    assert paper["trades_beta"] != paper["vir_trades_beta"]
    assert "own burn-in" in experiment.SCHEMAS["vir_main"]["vir_trades_beta"].help


def test_dataset_sizes_cover_every_dataset_and_match_the_synthetic_one():
    from advbook import data
    from advbook.book import schemas

    assert set(schemas.DATASET_SIZES) == set(data.DATASETS)
    synth = data.synthetic()
    classes, train, test, n_test = schemas.DATASET_SIZES["synthetic"]
    assert len(synth.classes) == classes and len(synth.test) == n_test
    assert torch.bincount(synth.train.labels).min() == train and torch.bincount(synth.test.labels).min() == test

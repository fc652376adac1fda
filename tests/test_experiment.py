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
    ({"eps": "abc"}, r"cannot read 'abc' as float"),
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
    monkeypatch.setenv("ADVBOOK_CACHE", str(tmp_path / "c"))
    (tmp_path / "c" / "models" / "m").mkdir(parents=True)
    (tmp_path / "c" / "data").mkdir()
    assert cli.main(["cache", "info"]) == 0
    assert "models" in capsys.readouterr().out
    assert cli.main(["cache", "clear", "--only", "models"]) == 0
    assert not (tmp_path / "c" / "models").exists() and (tmp_path / "c" / "data").exists()
    assert cli.main(["cache", "clear"]) == 0
    assert not (tmp_path / "c").exists()

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
    """smoke, cpu and paper exist for every page; gpu (issue 15) for the HOL pages so far, and any
    other page refuses it in one line naming the profiles it has."""
    from advbook.book.schemas import has_profile

    if profile == "gpu" and not name.startswith("hol_"):
        assert not has_profile(name, "gpu")
        with pytest.raises(experiment.ParameterError, match=rf"^{name} has no gpu profile yet; valid for it: "
                                                            r"smoke, cpu, paper$"):
            experiment.resolve(name, profile=profile)
        return
    params = experiment.resolve(name, profile=profile)
    assert set(params) == set(experiment.SCHEMAS[name])


def test_the_gpu_profile_is_the_paper_s_with_what_it_changes():
    for name in ("hol_ddb", "hol_toy", "hol_freq", "hol_trust", "hol_kd"):
        gpu, paper = (experiment.resolve(name, profile=p) for p in ("gpu", "paper"))
        changed = {k for k in paper if gpu[k] != paper[k]}
        assert changed <= {"epochs", "batch_size", "lr", "attack_batch_size"}, (name, changed)
    assert experiment.resolve("hol_ddb", profile="gpu")["epochs"] < experiment.resolve("hol_ddb", profile="paper")["epochs"]


def test_a_profile_that_starts_from_a_missing_one_is_refused(tmp_path, monkeypatch):
    from advbook.book import schemas, tomls

    (tmp_path / "profiles.d").mkdir()
    (tmp_path / "profiles.toml").write_text('[p]\nnotebook = "x"\n[p.cpu]\na = 1\n[p.gpu]\nfrom = "paper"\n')
    monkeypatch.setattr(tomls, "HERE", tmp_path)
    monkeypatch.setattr(tomls.load, "__kwdefaults__", {"folder": tmp_path})
    with pytest.raises(ValueError, match=r"^profile gpu of p starts from 'paper', which is not a profile of p "
                                         r"written out in full$"):
        schemas.load_profiles()


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
    with pytest.raises(experiment.ParameterError, match=r"unknown profile 'tpu'; valid: smoke, cpu, paper, gpu"):
        experiment.resolve("hol_ddb", profile="tpu")
    with pytest.raises(experiment.ParameterError, match=r"unknown experiment 'hol_x'; valid: hol_ddb"):
        experiment.resolve("hol_x", profile="cpu")


def test_start_seeds_and_picks_a_device():
    run = experiment.start("hol_ddb", profile="smoke", overrides={"seed": 7})
    a = torch.rand(3)
    experiment.start("hol_ddb", profile="smoke", overrides={"seed": 7})
    assert torch.equal(a, torch.rand(3))
    assert run.seed == 7
    assert experiment.start("hol_ddb", profile="smoke", overrides={"device": "cpu"}).device == torch.device("cpu")
    from unittest import mock

    with mock.patch("torch.cuda.is_available", return_value=False):  # no GPU, whatever this machine has
        with pytest.raises(experiment.ParameterError, match="^device=cuda but no CUDA device is visible"):
            experiment.start("hol_ddb", profile="smoke", overrides={"device": "cuda"})
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


def test_help_imports_no_torch():
    code = ("import sys\nfrom advbook.book import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "usage: advbook" in out.stdout and out.stderr.strip().endswith("False"), out.stderr


@pytest.fixture
def no_notebook(monkeypatch, tmp_path):
    """Any attempt to execute a notebook fails the test: the CLI must stop before."""
    import papermill

    monkeypatch.setenv("ADVBOOK_EXECUTED", str(tmp_path / "executed"))
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a notebook was executed"))
    return tmp_path / "executed"


def test_cli_run_stops_on_cuda_without_a_gpu_before_the_notebook(monkeypatch, capsys, no_notebook):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["run", "hol_ddb", "--profile", "smoke", "--set", "device=cuda"]) == 2
    err = capsys.readouterr().err
    assert err == "advbook: error: device=cuda but no CUDA device is visible; use device=auto or cpu\n"


@pytest.mark.parametrize("setting", ["nowhere", "empty", "text.tar.gz"])
def test_cli_run_stops_on_a_bad_data_setting_before_the_notebook(monkeypatch, capsys, tmp_path, no_notebook, setting):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.tar.gz").write_text("not an archive")
    monkeypatch.setenv("ADVBOOK_DATA", str(tmp_path / setting))
    assert cli.main(["run", "hol_ddb", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"advbook: error: ADVBOOK_DATA={tmp_path / setting} ") and err.count("\n") == 1
    assert "cifar-10-batches-py" in err and not no_notebook.exists()


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, capsys, tmp_path):
    import papermill

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setenv("ADVBOOK_EXECUTED", str(tmp_path / "executed"))
    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    assert cli.main(["run", "hol_toy", "--profile", "smoke"]) == 130
    assert capsys.readouterr().err.splitlines()[-1:] == ["advbook: interrupted; rerun resumes from the cache"]
    assert capsys.readouterr().err.count("Traceback") == 0


def executed_like(tmp_path):
    """A notebook as papermill leaves it: the source parameters cell, then the injected one."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "cpu"\nparams = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A page"), params,
                nbformat.v4.new_code_cell("P = {'profile': profile, **params}\nP")]
    nbformat.write(nb, tmp_path / "page.ipynb")
    return parameterize_notebook(load_notebook_node(str(tmp_path / "page.ipynb")),
                                 {"profile": "smoke", "params": {"eps": 0.1}})


def test_executed_pages_show_only_the_resolved_parameters(tmp_path):
    nb = cli.tag_parameter_cells(executed_like(tmp_path))
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags[1] == ["parameters", "remove-cell"] and tags[2] == ["injected-parameters", "remove-cell"]
    assert tags[0] == [] and tags[3] == []  # the markdown and the cell that shows the resolved values stay


def test_the_notebooks_show_the_resolved_parameters_right_after_the_parameters_cell():
    import json

    for name, entry in experiment.load_profiles().items():
        if not experiment.SCHEMAS[name]:  # pages built from the others' artifacts: no parameters to show
            continue
        cells = json.loads((experiment.repo_root() / entry["notebook"]).read_text())["cells"]
        at = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        shows = "".join(cells[at + 1]["source"])
        assert "experiment.start(" in shows and shows.rstrip().splitlines()[-1].startswith(
            ("report.params_table(P)", "pd.DataFrame({\"value\"")), name


def write_notebook(path, *cells):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "cpu"\nparams = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A page"), params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def toy_section(monkeypatch, tmp_path):
    """``advbook run hol_toy`` executes a notebook of the test's choosing."""
    profiles = experiment.load_profiles()

    def use(notebook):
        monkeypatch.setattr(cli, "load_profiles", lambda: {**profiles, "hol_toy": {**profiles["hol_toy"],
                                                                                     "notebook": str(notebook)}})
    monkeypatch.setenv("ADVBOOK_EXECUTED", str(tmp_path / "executed"))
    return use


def test_a_failing_notebook_gives_one_line_and_a_log_with_the_full_trace(toy_section, tmp_path, capfd):
    toy_section(write_notebook(
        tmp_path / "page.ipynb",
        'print("resolved", profile)',
        'import warnings\nclass RebuildWarning(UserWarning):\n    pass\n'
        'warnings.warn("model x is unusable (checksum mismatch); retraining", RebuildWarning)',
        'from tqdm import tqdm\nfor i in tqdm(range(3), desc="train tiny"):\n    pass',
        'def deep():\n    raise ValueError("boom:\\n  bad thing")\ndeep()'))
    assert cli.main(["run", "hol_toy", "--profile", "smoke"]) == 1
    out, err = capfd.readouterr()
    executed = tmp_path / "executed"
    log = executed / "page.log"
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert errors == [f"advbook: error: hol_toy failed in cell 6 (def deep():): ValueError: boom: bad thing "
                      f"(full trace: {log}; notebook: {executed / 'page.failed.ipynb'})"], err
    assert "Traceback" not in err and "TCP without encryption" not in err and "resolved smoke" not in err
    assert "advbook: hol_toy [3/6] print(\"resolved\", profile)" in err  # a line per code cell, first words
    assert "advbook: hol_toy: RebuildWarning: model x is unusable (checksum mismatch); retraining" in err
    assert "train tiny: 100%" in err and "\r" not in err  # the bar's last state (not a terminal)
    trace = log.read_text()
    assert "resolved smoke" in trace and "deep()" in trace and "ValueError" in trace and "\x1b[" not in trace
    assert (executed / "page.failed.ipynb").exists() and not (executed / "page.ipynb").exists()


def test_a_finished_notebook_is_tagged_and_replaces_the_page(toy_section, tmp_path, capfd):
    import json

    toy_section(write_notebook(tmp_path / "page.ipynb", 'P = {"profile": profile}\nP'))
    assert cli.main(["run", "hol_toy", "--profile", "smoke"]) == 0
    out, err = capfd.readouterr()
    page = tmp_path / "executed" / "page.ipynb"
    assert f"-> {page}" in out and "TCP without encryption" not in err
    cells = json.loads(page.read_text())["cells"]
    assert ["parameters", "remove-cell"] in [c["metadata"].get("tags") for c in cells]
    assert ["injected-parameters", "remove-cell"] in [c["metadata"].get("tags") for c in cells]
    assert "'smoke'" in json.dumps(cells[-1]["outputs"])


def test_progress_bars_are_live_on_a_terminal_and_warnings_one_line():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term, log = Terminal(), io.StringIO()
    console = cli._Console("hol_ddb", log, stream=term)
    console.stderr.write("\rtrain tiny_cnn:   0%|")
    console.stderr.write("\rtrain tiny_cnn:  50%|")
    assert term.getvalue().endswith("\rtrain tiny_cnn:  50%|\x1b[K")  # redrawn in place
    console.stderr.write("\rtrain tiny_cnn: 100%|\n")
    assert term.getvalue().endswith("\r\x1b[Ktrain tiny_cnn: 100%|\n")
    console.stderr.write("/lib/advbook/training/train.py:134: RebuildWarning: model m is unusable (checksum "
                         "mismatch); retraining\n  warnings.warn(f\"{what} is unusable\", cache.RebuildWarning)\n")
    assert term.getvalue().endswith(
        "\r\x1b[Kadvbook: hol_ddb: RebuildWarning: model m is unusable (checksum mismatch); retraining\n")
    assert "warnings.warn" not in term.getvalue() and "warnings.warn" in log.getvalue()
    verbose = Terminal()
    cli._Console("hol_ddb", io.StringIO(), verbose=True, stream=verbose).stdout.write("printed\n")
    assert verbose.getvalue() == "printed\n"

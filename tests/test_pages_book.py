"""The page blocks of the book: parameter and paper tables, the paper beside ours cell by cell, the
model note, a comparison table with its claims (run or not run), the claims page and where a
profile's artifacts live; with fake runs and temporary artifact folders."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import IPython.display
import numpy as np
import pandas as pd
import pytest
import torch

from advbook.analysis import claims as engine
from advbook.book import experiment, report, verdicts
from advbook.core.paths import repo_root
from advbook.data.cifar import Split

PAPER = Path(report.__file__).with_name("paper_results.toml")


# ---------------------------------------------------------------- tables

def test_params_table_has_one_row_per_parameter_as_text():
    table = report.params_table({"eps": 0.5, "attacks": ["pgd", "deepfool"], "model": "tiny_cnn", "n": 3})
    assert table.index.name == "parameter" and list(table.columns) == ["value"]
    assert table.index.tolist() == ["eps", "attacks", "model", "n"]
    assert table["value"].tolist() == ["0.5", "['pgd', 'deepfool']", "tiny_cnn", "3"]
    assert report.params_table({}).empty


@pytest.mark.parametrize("artifact_id", ["HOL-T1", "HOL-T2", "HOL-T3", "HOL-F6", "VIR-T1", "VIR-T6"])
def test_paper_table_is_the_recorded_rows(artifact_id):
    with open(PAPER, "rb") as f:
        recorded = tomllib.load(f)[artifact_id]
    table = report.paper_table(artifact_id)
    assert list(table.columns) == recorded["columns"]
    assert table.values.tolist() == recorded["rows"]


def test_paper_table_without_rows_and_unknown_ids():
    assert report.paper_table("HOL-F2").empty                          # a figure with claims, no numbers
    with pytest.raises(KeyError, match="no paper result recorded for HOL-T99"):
        report.paper_table("HOL-T99")
    with pytest.raises(ValueError, match="artifact ID 'T3' is not of the form"):
        report.paper_table("T3")


def _students(rows):
    return pd.DataFrame(rows, columns=["budget", "criterion", "tau", "accuracy", "seed"])


def test_cells_beside_puts_the_paper_and_ours_side_by_side_with_mean_and_std():
    ours = _students([[100, "trust", 30.0, 40.0, 0], [100, "trust", 30.0, 44.0, 1],
                      [100, "random", 30.0, 30.0, 0], [100, "random", 30.0, 31.0, 1],
                      [50, "trust", 30.0, 20.0, 0], [50, "trust", 30.0, 22.0, 1]])
    side = report.cells_beside(ours, "HOL-T3", keys=["budget", "criterion", "tau"], value="accuracy",
                               index=["budget", "criterion"], columns="tau", label="ours (smoke)")
    assert side.index.names == ["budget", "criterion"]
    assert side.loc[(100, "trust"), ("paper", 30.0)] == 41.63 and side.loc[(100, "trust"), ("paper", 8.0)] == 36.65
    assert side.loc[(100, "trust"), ("ours (smoke)", 30.0)] == "42.0 ± 2.8"      # sample std: sqrt(8)
    assert side.loc[(100, "random"), ("ours (smoke)", 30.0)] == "30.5 ± 0.7"
    assert pd.isna(side.loc[(150, "closest"), ("ours (smoke)", 30.0)])          # the paper's, not ours
    assert pd.isna(side.loc[(50, "trust"), ("paper", 30.0)])                    # ours, not the paper's
    assert side.loc[(50, "trust"), ("ours (smoke)", 30.0)] == "21.0 ± 1.4"
    assert len(side) == 9 + 1


def test_cells_beside_with_one_seed_shows_the_rounded_value():
    ours = _students([[100, "trust", 8.0, 40.04, 0], [150, "closest", 8.0, 12.36, 0]])
    side = report.cells_beside(ours, "HOL-T3", keys=["budget", "criterion", "tau"], value="accuracy",
                               index=["budget", "criterion"], columns="tau")
    assert side.loc[(100, "trust"), ("ours", 8.0)] == 40.0 and side.loc[(150, "closest"), ("ours", 8.0)] == 12.4
    assert side.loc[(150, "closest"), ("paper", 8.0)] == 24.92
    no_seed = report.cells_beside(ours.drop(columns="seed"), "HOL-T3", keys=["budget", "criterion", "tau"],
                                  value="accuracy", index=["budget", "criterion"], columns="tau")
    assert no_seed.loc[(100, "trust"), ("ours", 8.0)] == 40.0


def test_cells_beside_keeps_only_the_asked_cells_of_both_tables():
    ours = _students([[100, "trust", 8.0, 40.04, 0], [150, "closest", 30.0, 12.36, 0]])
    full = report.cells_beside(ours, "HOL-T3", keys=["budget", "criterion", "tau"], value="accuracy",
                               index=["budget", "criterion"], columns="tau")
    kept = report.cells_beside(ours, "HOL-T3", keys=["budget", "criterion", "tau"], value="accuracy",
                               index=["budget", "criterion"], columns="tau", keep={"tau": [8.0]})
    assert set(kept.columns) == {("paper", 8.0), ("ours", 8.0)} and len(full.columns) > len(kept.columns)
    assert kept.loc[(100, "trust"), ("ours", 8.0)] == 40.0


class Constant(torch.nn.Module):
    """Always class ``c``: its accuracy is the share of that class."""

    def __init__(self, c: int, classes: int = 3):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.nn.functional.one_hot(torch.tensor(c), classes).float())

    def forward(self, x):
        return self.bias.expand(len(x), -1)


def _note_inputs(*, model_name="tiny_cnn", dataset_name="synthetic-x", from_cache=True):
    labels = torch.tensor([0, 0, 1, 2, 0, 1, 0, 2])                      # 4 of 8 are class 0
    ds = SimpleNamespace(name=dataset_name, test=Split(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), labels))
    trained = SimpleNamespace(model=Constant(0), from_cache=from_cache,
                              meta={"model": model_name, "train_seconds": 12.4, "n_train": 400})
    return trained, ds


def test_model_note_returns_the_clean_accuracy_and_says_what_the_model_stands_in_for(monkeypatch):
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    trained, ds = _note_inputs()
    assert report.model_note(trained, ds, paper_model="resnet18", robust=" (PGD-AT)") == 50.0
    (md,) = shown
    assert isinstance(md, IPython.display.Markdown)
    assert md.data.startswith("**tiny_cnn** (PGD-AT) (loaded from the cache, 12 s of training on 400 images of "
                              "`synthetic-x`): clean accuracy on the 8 test images **50.00%**.")
    assert "substitutes `tiny_cnn` for the paper's `resnet18`" in md.data
    assert "Data: `synthetic-x`, not the original CIFAR-10" in md.data
    shown.clear()
    trained, ds = _note_inputs(model_name="resnet18", dataset_name="cifar10", from_cache=False)
    report.model_note(trained, ds, paper_model="resnet18")
    assert "trained now" in shown[0].data and "substitutes" not in shown[0].data and "Data:" not in shown[0].data


def test_model_note_runs_in_a_plain_process_without_a_notebook(capsys):
    trained, ds = _note_inputs()
    assert report.model_note(trained, ds, paper_model="resnet18") == 50.0
    assert "Markdown" in capsys.readouterr().out                      # no shell: display prints the object


# ---------------------------------------------------------------- a table with its claims

class FakeRun:
    """What ``table_with_claims`` uses of a run: its profile, artifact folder and provenance."""

    def __init__(self, folder: Path, profile: str = "fake"):
        self.folder, self.profile = folder, profile

    def artifact_dir(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def provenance(self) -> dict:
        return {"profile": self.profile, "dataset": {"name": "synthetic"}, "params": {}, "seeds": {"seed": 0}}


def _ablation(n: int = 30):
    """VIR-T6-like rows and flags: ``full`` robust on every image; ``plain`` right on a third of the
    natural images and robust on none; a T7 variant that a ``where`` must leave out."""
    flags = []
    for variant, table, natural, pgd in (("full", "T6", [True] * n, [True] * n),
                                        ("plain", "T6", [i < n // 3 for i in range(n)], [False] * n),
                                        ("full", "T7", [False] * n, [False] * n)):
        flags.append(pd.DataFrame({"table": table, "variant": variant, "seed": 0, "index": range(n),
                                   "label": 0, "natural": natural, "pgd": pgd}))
    flags = pd.concat(flags, ignore_index=True)
    results = (flags.melt(id_vars=["table", "variant", "seed"], value_vars=["natural", "pgd"], var_name="evaluation",
                          value_name="robust")
               .groupby(["table", "variant", "seed", "evaluation"], as_index=False)["robust"].mean()
               .assign(accuracy=lambda f: 100 * f.robust).drop(columns="robust"))
    return results, flags


def _quiet(monkeypatch):
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: None)


def test_table_with_claims_writes_the_rows_and_decides_every_claim(tmp_path, monkeypatch):
    _quiet(monkeypatch)
    monkeypatch.setenv("ADVBOOK_ARTIFACTS", str(tmp_path))
    run = experiment.start("vir_main", profile="smoke")
    results, flags = _ablation()
    out = verdicts.table_with_claims(run, "VIR-T6", results=results, samples=flags, where={"table": "T6"},
                                     row="variant", evaluations=["natural", "pgd", "cw"], label="ours (test)")
    folder = tmp_path / "smoke"
    assert sorted(p.name for p in folder.iterdir()) == ["VIR-T6.claims.json", "VIR-T6.csv", "VIR-T6.manifest.json",
                                                        "VIR-T6.provenance.json", "VIR-T6.samples.csv"]
    written = pd.read_csv(folder / "VIR-T6.csv")
    assert set(written.table) == {"T6"} and len(written) == 4                  # the T7 rows are left out
    assert set(pd.read_csv(folder / "VIR-T6.samples.csv").table) == {"T6"}
    assert json.loads((folder / "VIR-T6.provenance.json").read_text())["experiment"] == "vir_main"
    saved = json.loads((folder / "VIR-T6.claims.json").read_text())
    ids = [c["id"] for c in verdicts.load_claims("VIR-T6")]
    assert [v["claim"] for v in saved] == ids == [v.claim for v in out]
    outcome = {v["claim"]: v["outcome"] for v in saved}
    # full beats plain on 20 of 30 natural images and on all 30 under PGD, never the other way
    assert outcome["VIR-T6.natural"] == outcome["VIR-T6.pgd"] == "holds"
    assert all(outcome[c] == "not run" for c in ids if c not in ("VIR-T6.natural", "VIR-T6.pgd"))


def test_table_with_claims_without_rows_writes_a_not_run_artifact(tmp_path, monkeypatch):
    _quiet(monkeypatch)
    run = FakeRun(tmp_path / "fake")
    empty = pd.DataFrame()
    out = verdicts.table_with_claims(run, "VIR-T4", results=empty, samples=empty, where={"dataset": "tinyimagenet"},
                                     row="defense", evaluations=["tinyimagenet:natural"], label="ours",
                                     reason="Tiny ImageNet is not here")
    data = json.loads((tmp_path / "fake" / "VIR-T4.json").read_text())
    assert data == {"status": "not run", "reason": "Tiny ImageNet is not here", "profile": "fake"}
    saved = json.loads((tmp_path / "fake" / "VIR-T4.claims.json").read_text())
    assert len(saved) == len(verdicts.load_claims("VIR-T4")) == len(out) == 3
    assert all(v["outcome"] == "not run" and v["why"] == "Tiny ImageNet is not here" for v in saved)
    assert not (tmp_path / "fake" / "VIR-T4.csv").exists()


def test_table_with_claims_whose_filter_leaves_nothing_says_so(tmp_path, monkeypatch):
    _quiet(monkeypatch)
    results, flags = _ablation()
    keep = results.table == "T7"
    out = verdicts.table_with_claims(FakeRun(tmp_path), "VIR-T6", results=results[keep],
                                     samples=flags[flags.table == "T7"], where={"table": "T6"}, row="variant",
                                     evaluations=["natural"], label="ours")
    assert json.loads((tmp_path / "VIR-T6.json").read_text())["reason"] == "VIR-T6 is not among this run's tables"
    assert {v.outcome for v in out} == {"not run"}


# ---------------------------------------------------------------- the claims page

def test_decide_all_on_an_empty_folder_gives_every_claim_not_run(tmp_path):
    folder = tmp_path / "cpu"
    folder.mkdir()
    out = verdicts.decide_all(folder)
    assert [v.claim for v in out] == [c["id"] for c in verdicts.load_claims()]
    assert {v.outcome for v in out} == {"not run"}
    assert {v.why for v in out} == {"its page has not been executed in this profile"}
    assert {v.profile for v in out} == {"cpu"}
    assert list(folder.iterdir()) == []                                   # nothing to decide, nothing written


def test_decide_all_redecides_the_artifacts_in_the_folder(tmp_path, monkeypatch):
    _quiet(monkeypatch)
    results, flags = _ablation()
    verdicts.table_with_claims(FakeRun(tmp_path), "VIR-T6", results=results, samples=flags, where={"table": "T6"},
                               row="variant", evaluations=["natural"], label="ours")
    (tmp_path / "VIR-T6.claims.json").unlink()
    out = {v.claim: v for v in verdicts.decide_all(tmp_path)}
    assert out["VIR-T6.natural"].outcome == "holds" and out["VIR-T6.natural"].profile == "fake"
    assert (tmp_path / "VIR-T6.claims.json").exists()                      # written again
    assert out["VIR-T7.natural"].why == "its page has not been executed in this profile"
    # a set altered after it was written is refused with its reason, never judged
    (tmp_path / "VIR-T6.samples.csv").write_text("table,variant\nT6,full\n")
    again = {v.claim: v for v in verdicts.decide_all(tmp_path)}
    assert again["VIR-T6.natural"].outcome == "not run" and "VIR-T6.samples.csv does not match" in again["VIR-T6.natural"].why


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_claims_page_counts_outcomes_and_has_one_row_per_claim_with_pipes_escaped(tmp_path, monkeypatch):
    _quiet(monkeypatch)
    results, flags = _ablation()
    verdicts.table_with_claims(FakeRun(tmp_path), "VIR-T6", results=results, samples=flags, where={"table": "T6"},
                               row="variant", evaluations=["natural"], label="ours")
    verdicts.table_with_claims(FakeRun(tmp_path), "VIR-T4", results=pd.DataFrame(), samples=pd.DataFrame(),
                               row="defense", evaluations=["tinyimagenet:natural"], label="ours",
                               reason="no data | no time")
    page = verdicts.claims_page(tmp_path).splitlines()
    assert page[0].startswith(f"Decided from the artifacts of the **{tmp_path.name} profile**")
    page = page[2:]
    n = len(verdicts.load_claims())
    assert page[0] == f"**{n} claims**: 2 holds, 0 does not hold, 0 inconclusive, {n - 2} not run."
    header = _cells(page[2])
    assert len(header) == 6 and header[:2] == ["claim", "verdict"] and header[-1] == "the paper's claim"
    rows = page[4:]
    assert len(rows) == n and all(len(_cells(r)) == 6 for r in rows)
    by_claim = {re.sub(r"^\[(.*)\]\(.*\)$", r"\1", _cells(r)[0]): _cells(r) for r in rows}
    assert list(by_claim) == [c["id"] for c in verdicts.load_claims()]
    t4 = by_claim["VIR-T4.tinyimagenet:natural"]
    assert t4[1] == "**not run**" and t4[2] == "no data \\| no time" and t4[3] == "—"
    assert rows[[c["id"] for c in verdicts.load_claims()].index("VIR-T4.tinyimagenet:natural")].startswith(
        "| [VIR-T4.tinyimagenet:natural](08_vir_scale.html) |")
    natural = by_claim["VIR-T6.natural"]
    assert natural[1] == "**holds**" and natural[4] == "30 × 1" and natural[3] != "—"
    assert natural[2].startswith("smallest lead of full (points) ")


def test_claims_page_counts_match_decide_all(tmp_path):
    verdicts_all = verdicts.decide_all(tmp_path)
    head = verdicts.claims_page(tmp_path).splitlines()[2]
    counts = {o: sum(v.outcome == o for v in verdicts_all) for o in engine.OUTCOMES}
    assert head == f"**{len(verdicts_all)} claims**: " + ", ".join(f"{k} {o}" for o, k in counts.items()) + "."


# ---------------------------------------------------------------- where artifacts live

def test_artifact_dir_follows_the_setting_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBOOK_ARTIFACTS", str(tmp_path / "arts"))
    assert experiment.artifact_dir("cpu") == tmp_path / "arts" / "cpu"
    assert not (tmp_path / "arts").exists()
    run = experiment.start("hol_ddb", profile="smoke")
    assert run.artifact_dir() == experiment.artifact_dir("smoke") and (tmp_path / "arts" / "smoke").is_dir()
    monkeypatch.delenv("ADVBOOK_ARTIFACTS")
    assert experiment.artifact_dir("paper") == repo_root() / "artifacts" / "paper"
    monkeypatch.setenv("ADVBOOK_ARTIFACTS", "")                            # empty: the default
    assert experiment.artifact_dir("paper") == repo_root() / "artifacts" / "paper"

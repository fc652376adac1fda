"""Artifacts: every file is written, with provenance and checksums, and IDs are checked."""
from __future__ import annotations

import pandas as pd
import pytest

from advbook.core import cache
from advbook.book import experiment
from advbook.book import report


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBOOK_ARTIFACTS", str(tmp_path))
    r = experiment.start("hol_ddb", profile="smoke")
    r.dataset = {"name": "synthetic", "sha256": "0" * 64}
    return r


def test_figure_artifact_writes_data_image_samples_and_provenance(run, tmp_path):
    fig = report.new_figure(width=3, height=2)
    fig.subplots().plot([0, 1], [1, 0])
    paths = report.write_artifact(run, "HOL-F2", data=pd.DataFrame({"a": [1, 2]}), figure=fig,
                                  samples=pd.DataFrame({"index": [0, 1], "ddb": [0.1, 0.2]}),
                                  tables={"bins": pd.DataFrame({"bin": [0]})})
    names = sorted(p.name for p in (tmp_path / "smoke").iterdir())
    assert names == ["HOL-F2.bins.csv", "HOL-F2.csv", "HOL-F2.manifest.json", "HOL-F2.png", "HOL-F2.provenance.json",
                     "HOL-F2.samples.csv"]
    assert paths["image"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = cache.read_json(paths["provenance"])
    assert prov["artifact"] == "HOL-F2" and prov["profile"] == "smoke"
    assert prov["dataset"]["name"] == "synthetic" and prov["params"]["model"] == "tiny_cnn"
    assert prov["files"]["image"]["sha256"] == cache.sha256_file(paths["image"])
    assert set(prov["files"]) == {"data", "image", "samples", "bins"}


def test_table_artifact_as_json(run):
    paths = report.write_artifact(run, "HOL-T1", data={"accuracy": 0.5})
    assert cache.read_json(paths["data"]) == {"accuracy": 0.5}


def test_bad_ids_and_missing_figures_fail(run):
    with pytest.raises(ValueError, match=r"artifact ID 'HOL-2' is not of the form"):
        report.write_artifact(run, "HOL-2", data={})
    with pytest.raises(ValueError, match=r"HOL-F2 is a figure: pass figure="):
        report.write_artifact(run, "HOL-F2", data={})


def test_paper_results_are_recorded_with_their_source():
    hol = report.paper_result("HOL-F2")
    assert "Fig. 2" in hol["cite"] and len(hol["claims"]) >= 2
    t1 = report.paper_result("HOL-T1")
    assert t1["rows"][0][1:] == [92.50, 64.80, 1.06]
    with pytest.raises(KeyError, match="no paper result recorded for HOL-T99"):
        report.paper_result("HOL-T99")


def test_compare_labels_the_profile_and_dataset(run):
    table = report.compare(run, [("x", "low", 0.1)], paper_label="HOL Fig. 2")
    assert list(table.columns) == ["quantity", "paper (HOL Fig. 2)", "reproduced (smoke profile, synthetic)"]


def _ours(rows):
    return pd.DataFrame(rows, columns=["variant", "evaluation", "accuracy", "seed"])


def test_paper_beside_ours_one_seed_shows_the_mean_and_fills_gaps():
    ours = _ours([["plain", "pgd", 40.0, 0], ["full", "pgd", 42.5, 0], ["full", "mde", 30.0, 0]])
    frame = report.paper_beside_ours(ours, "VIR-T6", row="variant", label="ours", evaluations=["pgd", "mde"],
                                     rows=["plain", "sv", "full"])
    assert list(frame.index) == ["plain", "sv", "full"]
    assert frame.loc["plain", ("paper", "pgd")] == "51.58 ± 0.17"
    assert frame.loc["full", ("ours", "pgd")] == "42.5"          # one seed: no ± at all
    assert frame.loc["sv", ("ours", "pgd")] == "not run"         # ours lacks it
    assert frame.loc["full", ("paper", "mde")] == "—"            # the paper lacks it


def test_paper_beside_ours_several_seeds_shows_mean_and_sample_std():
    ours = _ours([["full", "pgd", 40.0, 0], ["full", "pgd", 44.0, 1], ["plain", "pgd", 41.0, 0], ["plain", "pgd", 41.0, 1]])
    frame = report.paper_beside_ours(ours, "VIR-T6", row="variant", label="ours", evaluations=["pgd"])
    assert frame.loc["full", ("ours", "pgd")] == "42.0 ± 2.8"     # std with ddof=1: sqrt(8)
    assert frame.loc["plain", ("ours", "pgd")] == "41.0 ± 0.0"


def _figure():
    fig = report.new_figure(width=3, height=2)
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_an_artifact_set_is_sealed_by_a_manifest_and_read_back_whole(run, tmp_path):
    paths = report.write_artifact(run, "HOL-F2", data=pd.DataFrame({"a": [1, 2]}), figure=_figure(),
                                  samples=pd.DataFrame({"index": [0, 1]}))
    manifest = cache.read_json(tmp_path / "smoke" / "HOL-F2.manifest.json")
    assert manifest["artifact"] == "HOL-F2"
    assert {k: v["sha256"] for k, v in manifest["files"].items()} == {
        k: cache.sha256_file(p) for k, p in paths.items() if k != "manifest"}
    assert set(manifest["files"]) == {"data", "image", "samples", "provenance"}
    assert report.read_artifact(tmp_path / "smoke", "HOL-F2") == {k: p for k, p in paths.items() if k != "manifest"}


def test_a_run_killed_midway_leaves_a_set_the_reader_refuses(run, tmp_path):
    folder = tmp_path / "smoke"
    report.write_artifact(run, "HOL-F2", data=pd.DataFrame({"a": [1, 2]}), figure=_figure())
    killed = _figure()

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # the run stops after the new CSV, before the new PNG and provenance

    killed.savefig = die
    with pytest.raises(KeyboardInterrupt):
        report.write_artifact(run, "HOL-F2", data=pd.DataFrame({"a": [3, 4]}), figure=killed)
    assert pd.read_csv(folder / "HOL-F2.csv")["a"].tolist() == [3, 4]  # new data beside the old figure
    with pytest.raises(report.IncompleteArtifact, match=r"HOL-F2\.csv does not match HOL-F2\.manifest\.json"):
        report.read_artifact(folder, "HOL-F2")
    report.write_artifact(run, "HOL-F2", data=pd.DataFrame({"a": [3, 4]}), figure=_figure())
    assert pd.read_csv(report.read_artifact(folder, "HOL-F2")["data"])["a"].tolist() == [3, 4]
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_an_unfinished_artifact_has_no_manifest_and_is_refused(run, tmp_path):
    report.write_artifact(run, "HOL-T1", data={"accuracy": 0.5})
    (tmp_path / "smoke" / "HOL-T1.manifest.json").unlink()
    with pytest.raises(report.IncompleteArtifact, match=r"HOL-T1 has no HOL-T1\.manifest\.json .*did not finish"):
        report.read_artifact(tmp_path / "smoke", "HOL-T1")


def test_writing_an_artifact_sweeps_the_temporary_files_of_killed_runs(run, tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    folder = run.artifact_dir()
    orphan = folder / f".HOL-F2.csv.{dead}.abcd1234.tmp"
    live = folder / f".HOL-F2.png.{os.getpid()}.abcd1234.tmp"  # a write in progress in a live process
    for path in (orphan, live):
        path.write_bytes(b"x" * 1000)
    report.write_artifact(run, "HOL-T1", data={"accuracy": 0.5})
    assert not orphan.exists() and live.exists()

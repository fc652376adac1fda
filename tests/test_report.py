"""Artifacts: every file is written, with provenance and checksums, and IDs are checked."""
from __future__ import annotations

import pandas as pd
import pytest

from advbook import cache, experiment, report


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
    assert names == ["HOL-F2.bins.csv", "HOL-F2.csv", "HOL-F2.png", "HOL-F2.provenance.json", "HOL-F2.samples.csv"]
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
    with pytest.raises(KeyError, match="no paper result recorded for RRM-T1"):
        report.paper_result("RRM-T1")


def test_compare_labels_the_profile_and_dataset(run):
    table = report.compare(run, [("x", "low", 0.1)], paper_label="HOL Fig. 2")
    assert list(table.columns) == ["quantity", "paper (HOL Fig. 2)", "reproduced (smoke profile, synthetic)"]

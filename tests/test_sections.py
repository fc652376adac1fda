"""The section map (lib/advbook/book/sections.toml) matches the notebooks and tests, and every
function and test it names exists."""
import importlib
import re
from pathlib import Path

import pytest

from advbook.book import sections

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO.parent / "shared" / "ARTIFACTS.md"


def test_the_map_is_what_the_sources_say():
    assert sections.load() == sections.generate(REPO), "run: python -m advbook.book.sections"


def test_every_entry_points_at_something_that_exists():
    for artifact, entry in sections.load().items():
        assert (REPO / entry["notebook"]).exists(), artifact
        for path in entry["functions"]:
            module, name = path.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(module), name)), path
        for node in entry["tests"]:
            file, test = node.split("::")
            assert re.search(rf"^def {test}\(", (REPO / file).read_text(), re.M), node


def test_every_built_chapter_artifact_is_mapped():
    if not CATALOGUE.exists():
        pytest.skip("shared/ARTIFACTS.md is not beside the repository")
    built = {a for a in re.findall(r"\b((?:HOL|VIR)-[FT]\d+)\b", CATALOGUE.read_text())}
    assert built <= set(sections.load()), sorted(built - set(sections.load()))


def test_generate_reads_calls_and_covering_tests(tmp_path):
    import json
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "tests").mkdir()
    cells = ["from advbook.analysis import claims\nfrom advbook.book import report",
             "v = claims.decide(claim, tables, ctx)\nreport.write_artifact(run, \"HOL-F2\", data=d)",
             "claims.not_run(claim, ctx, 'x')\nreport.write_artifact(run, \"HOL-T1\", data=d)"]
    nb = {"cells": [{"cell_type": "code", "source": c, "metadata": {}} for c in cells]}
    (tmp_path / "notebooks" / "01_x.ipynb").write_text(json.dumps(nb))
    (tmp_path / "tests" / "test_x.py").write_text(
        "from advbook.analysis import claims\n\ndef test_decides():\n    claims.decide(1, 2, 3)\n\n"
        "def test_other():\n    claims.not_run(1, 2, 3)\n")
    found = sections.generate(tmp_path)
    assert found["HOL-F2"] == {"notebook": "notebooks/01_x.ipynb", "functions": ["advbook.analysis.claims.decide"],
                               "tests": ["tests/test_x.py::test_decides"]}
    assert found["HOL-T1"]["functions"] == ["advbook.analysis.claims.not_run"]   # only the cells since HOL-F2

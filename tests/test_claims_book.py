"""On the built smoke book: every page's claims, re-decided from its saved artifacts by the engine
alone, equal what the page showed; every claim of claims.toml is on the claims page; no page keeps
verdict logic of its own."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from advbook.book import verdicts

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_pages_claims_are_redecided_from_the_artifacts_alone(built_book):
    folder = built_book / "artifacts" / "smoke"
    saved = sorted(folder.glob("*.claims.json"))
    assert saved, "no page decided a claim"
    for path in saved:
        artifact = path.name.split(".")[0]
        shown = json.loads(path.read_text())
        again = [v.to_dict() for v in verdicts.decide_artifact(folder, artifact, write=False)]
        key = lambda v: (v["claim"], v["outcome"], repr(float(v["p"])), repr(float(v["estimate"])))   # NaN-safe
        assert [key(v) for v in again] == [key(v) for v in shown], artifact


def test_the_claims_page_lists_every_claim(built_book):
    html = (built_book / "_build" / "html" / "book" / "executed" / "09_claims.html").read_text()
    for claim in verdicts.load_claims():
        assert f">{claim['id']}<" in html, claim["id"]


def test_no_notebook_defines_a_function_or_decides_a_verdict():
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        assert not re.search(r"^\s*(def |class |lambda\b)|\blambda\b", code, re.M), nb.name
        assert not re.search(r"holds|does not hold|inconclusive", code), nb.name

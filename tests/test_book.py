"""End to end: every notebook runs in the smoke profile, the book builds with -W, and every
artifact a notebook writes has its files and appears in the HTML as an image or table.
The build is the ``built_book`` fixture of tests/conftest.py, shared with tests/test_browser.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from advbook.book import experiment
from advbook.book import report

REPO = Path(__file__).resolve().parents[1]
WRITES = re.compile(r"write_artifact\(\s*run,\s*\"([A-Z]{3}-[FTX]\d+)\"")
CATALOGUE = REPO.parent / "shared" / "ARTIFACTS.md"

pytestmark = pytest.mark.slow


def notebooks():
    profiles = experiment.load_profiles()
    return [REPO / profiles[name]["notebook"] for name in experiment.SCHEMAS]


def written_ids(root: Path, nb_path: Path) -> list[str]:
    """The artifacts a notebook wrote: its literal ``write_artifact(run, "ID"`` calls, and every
    provenance file of the smoke build whose experiment is this notebook's (IDs built at run time)."""
    source = "".join("".join(c["source"]) for c in json.loads(nb_path.read_text())["cells"])
    names = [n for n, p in experiment.load_profiles().items() if p["notebook"].endswith(nb_path.name)]
    provs = [json.loads(p.read_text()) for p in (root / "artifacts" / "smoke").glob("*.provenance.json")]
    return sorted(set(WRITES.findall(source)) | {p["artifact"] for p in provs if p["experiment"] in names})


def test_every_notebook_has_a_parameters_cell_and_is_listed_in_the_toc():
    toc = (REPO / "_toc.yml").read_text()
    for nb_path in notebooks():
        nb = json.loads(nb_path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, nb_path.name
        assert "profile" in "".join(tagged[0]["source"]) and "params" in "".join(tagged[0]["source"])
        assert f"book/executed/{nb_path.stem}" in toc
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), \
            f"{nb_path.name}: commit notebooks without outputs"


PAGES_OF_PAGES = {"09_claims.ipynb", "10_where.ipynb"}   # built from the other pages' artifacts and sources


def test_every_artifact_has_its_files_and_is_shown_in_the_html(built_book):
    from bs4 import BeautifulSoup

    found = 0
    for nb_path in notebooks():
        executed = built_book / "book" / "executed" / nb_path.name
        assert executed.exists(), f"{nb_path.name} was not executed"
        ids = written_ids(built_book, executed)
        if nb_path.name in PAGES_OF_PAGES:
            assert not ids, f"{nb_path.name} only reads the other pages' artifacts"
            continue
        assert ids, f"{nb_path.name} writes no artifact"
        html = (built_book / "_build" / "html" / "book" / "executed" / f"{nb_path.stem}.html").read_text()
        soup = BeautifulSoup(html, "html.parser")
        for artifact_id in ids:
            folder = built_book / "artifacts" / "smoke"
            data = [folder / f"{artifact_id}.csv", folder / f"{artifact_id}.json"]
            assert any(p.exists() for p in data), f"{artifact_id}: no data file"
            prov = json.loads((folder / f"{artifact_id}.provenance.json").read_text())
            assert prov["profile"] == "smoke" and prov["dataset"]["sha256"] and prov["wall_seconds"] > 0
            assert prov["git"].keys() == {"commit", "dirty"} and prov["versions"]["torch"]
            if report.ARTIFACT_ID.match(artifact_id) and ("-F" in artifact_id or "-X" in artifact_id):
                assert (folder / f"{artifact_id}.png").read_bytes()[:4] == b"\x89PNG"
                figure = soup.find(id=artifact_id.lower())
                assert figure is not None, f"{artifact_id}: no element labelled {artifact_id.lower()}"
                if figure.find("img") is None and figure.name == "span":   # a label MyST renders as an anchor
                    figure = figure.find_parent("section")                    # of the section that holds the figure
                img = figure.find("img")
                assert img is not None, f"{artifact_id}: the figure is not rendered as an image"
                assert (built_book / "_build" / "html" / "book" / "executed" / img["src"]).resolve().exists()
            else:  # a table: a labelled section of the page that holds an HTML table
                label = soup.find(id=artifact_id.lower())
                assert label is not None, f"{artifact_id}: no element labelled {artifact_id.lower()}"
                # MyST renders a label as an empty anchor at the top of the section it names
                section = label if label.name == "section" else label.find_parent("section")
                shown_as_figure = label.name == "figure" and label.find("img") is not None   # a table drawn as a figure
                assert shown_as_figure or section.find("table") is not None, f"{artifact_id}: no table under its label"
            found += 1
    assert found >= 1


def test_every_catalogued_artifact_of_a_built_chapter_is_written(built_book):
    """A chapter (HOL, VIR, ...) that has a page must write every artifact the catalogue lists for it."""
    if not CATALOGUE.exists():
        pytest.skip(f"no artifact catalogue at {CATALOGUE}")
    catalogue = set(re.findall(r"^\| ([A-Z]{3}-[FT]\d+) \|", CATALOGUE.read_text(), flags=re.M))
    written = {i for nb in notebooks() for i in written_ids(built_book, built_book / "book" / "executed" / nb.name)}
    chapters = {i.split("-")[0] for i in written}
    missing = sorted(i for i in catalogue if i.split("-")[0] in chapters and i not in written)
    assert chapters >= {"HOL", "VIR"} and not missing, f"catalogued but not written: {missing}"


def colab_link(stem: str) -> str:
    """The Colab button's link for a notebook page: its source in git, on the repository and branch
    of _config.yml's `repository:` (book/_ext/advbook_html.py rewrites the theme's link)."""
    import yaml

    repo = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]
    owner_name = repo["url"].removeprefix("https://github.com/").strip("/")
    return f'href="https://colab.research.google.com/github/{owner_name}/blob/{repo["branch"]}/notebooks/{stem}.ipynb"'


def test_pages_show_no_errors_and_label_the_profile(built_book):
    for nb_path in notebooks():
        html = (built_book / "_build" / "html" / "book" / "executed" / f"{nb_path.stem}.html").read_text()
        assert "Traceback" not in html and "Error" not in re.sub(r"<[^>]+>", "", html).split("References")[0]
        assert "smoke profile" in html
        assert colab_link(nb_path.stem) in html, f"{nb_path.stem}: no Colab button on its source notebook"


def test_bibliography_lists_the_five_sources(built_book):
    html = (built_book / "_build" / "html" / "book" / "bibliography.html").read_text().lower()
    for words in ("holistic approach", "vulnerability-aware instance reweighting", "robust representation matching",
                  "agkd-bml", "adversarial robustness (lecture 76"):
        assert words in html, words


def _title(nb_path: Path) -> str:
    """A notebook's first level-1 heading."""
    for cell in json.loads(nb_path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:]
    return ""


def test_the_sidebar_lists_each_papers_sections_in_order():
    """Within each part of _toc.yml, pages titled "<PAPER> §n.m" come in the order of their sections."""
    import yaml

    for part in yaml.safe_load((REPO / "_toc.yml").read_text())["parts"]:
        numbered = []
        for chapter in part["chapters"]:
            nb_path = REPO / "notebooks" / f"{Path(chapter['file']).name}.ipynb"
            found = re.match(r"([A-Z]{3}) §(\d+(?:\.\d+)*)", _title(nb_path)) if nb_path.exists() else None
            if found:
                numbered.append((found.group(1), tuple(int(n) for n in found.group(2).split(".")), chapter["file"]))
        for paper in {p for p, _, _ in numbered}:
            sections = [(s, f) for p, s, f in numbered if p == paper]
            assert sections == sorted(sections), f"{part['caption']}: {[f for _, f in sections]} is not in section order"


def test_bibliography_labels_are_author_year_like_the_citations(built_book):
    from bs4 import BeautifulSoup

    soup = BeautifulSoup((built_book / "_build" / "html" / "book" / "bibliography.html").read_text(), "html.parser")
    labels = [label.get_text() for label in soup.select(".citation .label")]
    assert labels, "no bibliography entries"
    bad = [label for label in labels if not re.fullmatch(r"\[[^\]]+, \d{4}[a-z]?\]", label)]
    assert not bad, f"labels that are not author, year: {bad}"
    assert "[Nayak et al., 2022]" in labels and "[Fakorede et al., 2023]" in labels
    intro = (built_book / "_build" / "html" / "book" / "intro.html").read_text()
    assert re.search(r"Nayak\s+<em>et al\.</em>\s+\[<a[^>]*>2022</a>\]", intro), "the text no longer cites Nayak et al. [2022]"


def test_figures_say_what_they_show_and_open_at_full_size(built_book):
    from bs4 import BeautifulSoup

    figures = 0
    for nb_path in notebooks():
        soup = BeautifulSoup((built_book / "_build" / "html" / "book" / "executed" / f"{nb_path.stem}.html").read_text(),
                             "html.parser")
        for img in soup.select(".cell_output img"):
            figures += 1
            assert img.get("alt") and ".png" not in img["alt"], f"{nb_path.stem}: alt {img.get('alt')!r}"
            link = img.find_parent("a")
            assert link is not None and link["href"] == img["src"], f"{nb_path.stem}: {img['src']} opens nothing"
    assert figures >= 1


def test_paper_beside_ours_tables_keep_their_headers_short(built_book):
    """What "ours" is (profile, dataset, model, seeds) is said once, in the caption, not in every header."""
    from bs4 import BeautifulSoup

    tables = 0
    for nb_path in notebooks():
        soup = BeautifulSoup((built_book / "_build" / "html" / "book" / "executed" / f"{nb_path.stem}.html").read_text(),
                             "html.parser")
        for table in soup.select("table.advbook-captioned"):
            tables += 1
            caption = table.find("caption")
            assert caption is not None and "paper:" in caption.get_text() and "ours:" in caption.get_text()
            long_headers = [th.get_text() for th in table.select("thead th") if len(th.get_text()) > 24]
            assert not long_headers, f"{nb_path.stem}: long headers {long_headers}"
    assert tables >= 1

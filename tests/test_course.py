"""The course kit: student notebooks lose every solution and keep every exercise (advbook.book.course,
`advbook student`), every exercise of the book has its solution, and the launch buttons of a page
open its source notebook in git (book/_ext/advbook_html.py). Fast: no notebook runs, no book builds."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from advbook.book import cli, course

REPO = Path(__file__).resolve().parents[1]
HOL = ["01_hol_ddb", "02_hol_toy_paths", "03_hol_frequency", "04_hol_trust", "05_hol_distillation"]
# any trace of a solution, found without the fence parser under test
LEAK = re.compile(r"\{solution(-start|-end)?\}")


def _md(text: str, cell_id: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": text.splitlines(keepends=True)}


def _notebook() -> dict:
    """A code cell, then two exercises with solutions: one colon fence, one backtick fence whose
    solution holds a shorter code fence, and a cell tagged as a solution as a whole."""
    return {"cells": [
        {"cell_type": "code", "id": "c0", "metadata": {"tags": ["parameters"]}, "execution_count": None,
         "outputs": [], "source": ["profile = \"cpu\"\n"]},
        _md("## Exercises\n\nTwo of them.\n", "m1"),
        _md(":::{exercise} Bound the norm\n:label: ex-one\n\nShow that ALPHA holds.\n:::\n\n"
            ":::{solution} ex-one\n:class: dropdown\n\nSECRET-ONE by the triangle inequality.\n:::\n", "m2"),
        _md("````{exercise} Rerun\n:label: ex-two\n\n```bash\nadvbook run hol_ddb --set seed=1\n```\n````\n\n"
            "````{solution} ex-two\n:class: dropdown\n\n```python\nprint('SECRET-TWO')\n```\n\nMore SECRET-TWO.\n"
            "````\n\nA closing remark stays.\n", "m3"),
        {"cell_type": "code", "id": "c4", "metadata": {"tags": ["solution"]}, "execution_count": None,
         "outputs": [], "source": ["answer = 'SECRET-THREE'\n"]},
    ], "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}


def test_student_copy_keeps_the_exercises_and_loses_every_solution():
    nb = _notebook()
    student, removed = course.student_notebook(nb, name="demo.ipynb")
    text = json.dumps(student)
    assert removed == 3
    assert "SECRET" not in text and not LEAK.search(text)
    assert course.exercise_labels(student) == ["ex-one", "ex-two"]
    assert "Show that ALPHA holds." in text and "advbook run hol_ddb --set seed=1" in text
    assert "A closing remark stays." in text
    assert [c["id"] for c in student["cells"]] == ["c0", "m1", "m2", "m3"]
    assert student["cells"][0] == nb["cells"][0] and student["cells"][1] == nb["cells"][1]
    assert student["metadata"] == nb["metadata"]
    assert "".join(student["cells"][2]["source"]) == \
        ":::{exercise} Bound the norm\n:label: ex-one\n\nShow that ALPHA holds.\n:::\n"
    assert nb == _notebook(), "the source notebook must not be changed"


def test_student_copy_is_idempotent():
    once, _ = course.student_notebook(_notebook(), name="demo.ipynb")
    twice, removed = course.student_notebook(once, name="demo.ipynb")
    assert twice == once and removed == 0


def test_gated_solutions_and_solution_only_cells_are_removed():
    nb = {"cells": [_md(":::{exercise} Gate\n:label: ex-g\nQ\n:::\n", "a"),
                    _md("```{solution-start} ex-g\n:class: dropdown\n```\nGATED-SECRET\n```{solution-end}\n```\n", "b")],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    assert course.solution_targets(nb) == ["ex-g"]
    student, removed = course.student_notebook(nb, name="g.ipynb")
    assert removed == 1 and [c["id"] for c in student["cells"]] == ["a"] and "GATED" not in json.dumps(student)


@pytest.mark.parametrize("text, what", [
    (":::{exercise} Open\n:label: ex-o\nQ\n:::\n\n:::{solution} ex-o\nnever closed\n", "{solution} fence opened on line 6"),
    ("````{solution} ex-o\nclosed by a shorter fence only\n```\n", "{solution} fence opened on line 1"),
    ("```{solution-start} ex-o\n```\nno end\n", "{solution-start} on line 1 has no {solution-end}"),
])
def test_an_unclosed_solution_is_a_one_line_error_naming_the_cell(text, what):
    nb = {"cells": [_md("# Title\n", "t"), _md(text, "bad-cell")], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    with pytest.raises(ValueError) as info:
        course.student_notebook(nb, name="broken.ipynb")
    message = str(info.value)
    assert "\n" not in message and "broken.ipynb, cell 1 (id bad-cell)" in message and what in message


def test_a_solution_nested_in_another_block_is_refused_rather_than_handed_out():
    nb = {"cells": [_md("::::{exercise} Nested\n:label: ex-n\nQ\n\n:::{solution} ex-n\nNESTED-SECRET\n:::\n::::\n", "n")],
          "metadata": {}}
    with pytest.raises(ValueError, match=r"n.ipynb, cell 0 \(id n\): \{solution\} on line 5 is inside another fenced block"):
        course.student_notebook(nb, name="n.ipynb")


def test_an_exercise_without_a_label_is_refused():
    nb = {"cells": [_md(":::{exercise} No label\nQ\n:::\n", "x")], "metadata": {}}
    with pytest.raises(ValueError, match=r"x.ipynb: an \{exercise\} \(No label\) has no :label:"):
        course.exercise_labels(nb, name="x.ipynb")


def test_every_exercise_of_the_book_has_a_solution_and_every_student_copy_has_none():
    for path in course.source_notebooks(REPO):
        nb = course.read_notebook(path)
        exercises, solutions = course.exercise_labels(nb, name=path.name), course.solution_targets(nb, name=path.name)
        assert sorted(exercises) == sorted(solutions), f"{path.name}: exercises {exercises}, solutions {solutions}"
        assert len(set(exercises)) == len(exercises), f"{path.name}: a label is used twice"
        if path.stem in HOL:
            assert len(exercises) >= 2, f"{path.name}: fewer than two exercises"
        student, removed = course.student_notebook(nb, name=path.name)
        assert removed == len(solutions)
        assert not LEAK.search(json.dumps(student)), f"{path.name}: a solution survives in the student copy"
        assert course.exercise_labels(student, name=path.name) == exercises
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert [c for c in student["cells"] if c["cell_type"] == "code"] == code, f"{path.name}: code cells changed"
    labels = [label for p in course.source_notebooks(REPO) for label in course.exercise_labels(course.read_notebook(p))]
    assert len(labels) == len(set(labels)), "exercise labels must be unique across the book"


def test_the_student_command_writes_every_notebook_and_refuses_a_broken_one(tmp_path, monkeypatch, capsys):
    assert cli.main(["student", "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").glob("*.ipynb"))
    assert written == [p.name for p in course.source_notebooks(REPO)]
    assert not any(LEAK.search(p.read_text()) for p in (tmp_path / "out").glob("*.ipynb"))
    assert "student notebooks" in capsys.readouterr().out

    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    good, bad = _notebook(), _notebook()
    bad["cells"][2]["source"] = ":::{solution} ex-one\nno end\n"
    course.write_notebook(good, root / "notebooks" / "01_good.ipynb")
    course.write_notebook(bad, root / "notebooks" / "02_bad.ipynb")
    monkeypatch.setattr(cli, "repo_root", lambda: root)
    assert cli.main(["student", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advbook: error: 02_bad.ipynb, cell 2") and "\n" not in err
    assert not (tmp_path / "none").exists(), "nothing is written when one notebook is broken"
    with pytest.raises(ValueError, match="source notebooks"):
        course.write_student_notebooks(course.source_notebooks(root), out=root / "notebooks")


def test_written_notebooks_keep_jupyters_format(tmp_path):
    source = REPO / "notebooks" / "01_hol_ddb.ipynb"
    course.write_notebook(course.read_notebook(source), tmp_path / "copy.ipynb")
    assert (tmp_path / "copy.ipynb").read_bytes() == source.read_bytes()


# ---------------------------------------------------------------- launch buttons

def _ext():
    spec = importlib.util.spec_from_file_location("advbook_html", REPO / "book" / "_ext" / "advbook_html.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _repository() -> tuple[str, str, str]:
    """(owner/name, branch, path_to_book) from _config.yml's `repository:`."""
    import yaml

    repo = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]
    owner_name = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)/?", repo["url"])
    assert owner_name, f"repository url {repo['url']!r} is not a GitHub repository"
    return owner_name[1], repo["branch"], repo.get("path_to_book") or ""


def test_launch_links_of_a_page_open_its_source_notebook():
    url = _ext().source_launch_url
    page = "book/executed/01_hol_ddb"
    colab = "https://colab.research.google.com/github/org/repo/blob/main/book/executed/01_hol_ddb.ipynb"
    binder = "https://mybinder.org/v2/gh/org/repo/main?urlpath=lab/tree/book/executed/01_hol_ddb.ipynb"
    hub = ("https://hub.example.org/hub/user-redirect/git-pull?repo=https://github.com/org/repo"
           "&urlpath=lab/tree/repo/book/executed/01_hol_ddb.ipynb&branch=main")
    assert url(colab, pagename=page) == colab.replace("book/executed/01_hol_ddb", "notebooks/01_hol_ddb")
    assert url(colab, pagename=page).endswith("/github/org/repo/blob/main/notebooks/01_hol_ddb.ipynb")
    assert url(binder, pagename=page).endswith("/v2/gh/org/repo/main?urlpath=lab/tree/notebooks/01_hol_ddb.ipynb")
    assert url(hub, pagename=page).endswith("urlpath=lab/tree/repo/notebooks/01_hol_ddb.ipynb&branch=main")
    # a book kept in a subfolder of its repository
    sub = "https://colab.research.google.com/github/org/repo/blob/main/docs/book/executed/01_hol_ddb.ipynb"
    assert url(sub, pagename=page, path_to_docs="/docs/").endswith("/blob/main/docs/notebooks/01_hol_ddb.ipynb")
    # pages that are not executed notebooks keep their links; a link that lost the page's path is an error
    assert url("https://mybinder.org/v2/gh/org/repo/main?urlpath=lab/tree/book/intro.md", pagename="book/intro") \
        == "https://mybinder.org/v2/gh/org/repo/main?urlpath=lab/tree/book/intro.md"
    with pytest.raises(ValueError, match="does not name the page's notebook book/executed/01_hol_ddb.ipynb"):
        url("https://colab.research.google.com/github/org/repo/blob/main/elsewhere.ipynb", pagename=page)


def test_launch_buttons_come_from_the_repository_setting_and_name_existing_notebooks():
    """What the theme builds from _config.yml, rewritten: Colab and Binder open notebooks/<name>.ipynb
    of the configured repository and branch, and that notebook exists in git."""
    import yaml

    config = yaml.safe_load((REPO / "_config.yml").read_text())
    buttons = config["launch_buttons"]
    assert buttons["colab_url"] and buttons["binderhub_url"] and config["html"]["use_download_button"] is True
    owner_name, branch, book = _repository()
    url = _ext().source_launch_url
    prefix = f"{book.strip('/')}/" if book.strip("/") else ""
    for stem in HOL:
        page = f"book/executed/{stem}"
        colab = url(f"{buttons['colab_url']}/github/{owner_name}/blob/{branch}/{prefix}{page}.ipynb", pagename=page,
                    path_to_docs=book)
        binder = url(f"{buttons['binderhub_url']}/v2/gh/{owner_name}/{branch}?urlpath=lab/tree/{prefix}{page}.ipynb",
                     pagename=page, path_to_docs=book)
        assert colab.endswith(f"/github/{owner_name}/blob/{branch}/{prefix}notebooks/{stem}.ipynb")
        assert binder.endswith(f"/v2/gh/{owner_name}/{branch}?urlpath=lab/tree/{prefix}notebooks/{stem}.ipynb")
        assert (REPO / "notebooks" / f"{stem}.ipynb").exists()

"""The book's data files merge a chapter's parts (``<kind>.d/*.toml``) into the main file."""
from __future__ import annotations

import pytest

from advbook.book import tomls


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_parts_merge_tables_and_concatenate_arrays_in_name_order(tmp_path):
    write(tmp_path, "claims.toml", '[[claim]]\nid = "A"\n\n[section_a]\nx = 1\n')
    write(tmp_path, "claims.d/b.toml", '[[claim]]\nid = "C"\n')
    write(tmp_path, "claims.d/a.toml", '[[claim]]\nid = "B"\n\n[section_b]\ny = 2\n')
    merged = tomls.load("claims", folder=tmp_path)
    assert [c["id"] for c in merged["claim"]] == ["A", "B", "C"]
    assert merged["section_a"] == {"x": 1} and merged["section_b"] == {"y": 2}


def test_a_name_defined_twice_fails_naming_both_files(tmp_path):
    write(tmp_path, "profiles.toml", "[lec_examples]\nnotebook = 'a'\n")
    write(tmp_path, "profiles.d/lec.toml", "[lec_examples]\nnotebook = 'b'\n")
    with pytest.raises(ValueError, match=r"^'lec_examples' is defined twice: in profiles.toml and profiles.d/lec.toml$"):
        tomls.load("profiles", folder=tmp_path)


def test_without_parts_it_is_the_file_itself(tmp_path):
    write(tmp_path, "paper_results.toml", '["HOL-T1"]\ncite = "x"\n')
    assert tomls.load("paper_results", folder=tmp_path) == {"HOL-T1": {"cite": "x"}}
    assert tomls.parts("paper_results", folder=tmp_path) == [tmp_path / "paper_results.toml"]

"""Sphinx additions for the book's HTML (a local extension named in ``_config.yml``).

* Alt text for notebook images: ``report.show_image`` puts what a figure shows into the image
  output's metadata (``{"image/png": {"alt": ...}}``); MyST-NB 1.x keeps only ``width`` and
  ``height`` from there, so the image node gets its ``alt`` here.
* One copy of each script: sphinx-thebe adds its inline configuration (``const THEBE_JS_URL``)
  once with the file name None and once with '', which Sphinx keeps as two scripts, and the
  second declaration is a console error on every page.
* Launch buttons on the notebooks in git: a page is rendered from ``book/executed/<name>.ipynb``,
  which `advbook run` writes and git ignores, so the Colab/Binder/JupyterHub links that
  sphinx-book-theme builds from ``repository:`` and ``launch_buttons:`` in ``_config.yml`` are
  pointed at the source ``notebooks/<name>.ipynb`` instead (:func:`source_launch_url`).
* Author-year bibliography labels: the text cites "Nayak et al. [2022]"
  (``bibtex_reference_style: author_year``), so the bibliography is labelled "Nayak et al., 2022"
  rather than pybtex's alpha "NRL+22" (the ``advbook_author_year`` style, sorted by author and year).
"""
from __future__ import annotations

from collections import Counter
from string import ascii_lowercase

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle

STYLE = "advbook_author_year"


def _last_name(person) -> str:
    return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")


class AuthorYearLabelStyle(BaseLabelStyle):
    """"Last", "Last and Other" or "Last et al.", then ", year"; same labels get a, b, ... after the year."""

    def format_label(self, entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        if not persons:
            who = Text.from_latex(entry.fields.get("title", entry.key)).render_as("text")
        elif len(persons) == 1:
            who = _last_name(persons[0])
        elif len(persons) == 2:
            who = f"{_last_name(persons[0])} and {_last_name(persons[1])}"
        else:
            who = f"{_last_name(persons[0])} et al."
        year = entry.fields.get("year", "")
        return f"{who}, {year}" if year else who

    def format_labels(self, sorted_entries):
        labels = [self.format_label(entry) for entry in sorted_entries]
        counts, seen = Counter(labels), Counter()
        for label in labels:
            if counts[label] > 1:
                seen[label] += 1
                label = f"{label}{ascii_lowercase[seen[label] - 1]}"
            yield label


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entries, labelled and sorted by author and year."""

    default_label_style = STYLE
    default_sorting_style = "author_year_title"


def _alt_from_output_metadata():
    """Let MyST-NB's image renderer take ``alt`` from the output's metadata as well."""
    from myst_nb.core.render import NbElementRenderer

    original = NbElementRenderer.render_image
    if getattr(original, "_advbook_alt", False):
        return

    def render_image(self, data):
        rendered = original(self, data)
        alt = data.output_metadata.get(data.mime_type, {}).get("alt")
        if alt:
            for node in rendered:
                node["alt"] = str(alt)
        return rendered

    render_image._advbook_alt = True
    NbElementRenderer.render_image = render_image


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for script in scripts:
        key = (getattr(script, "filename", None) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


EXECUTED = "book/executed/"   # where the rendered notebooks live (not in git)
SOURCES = "notebooks/"         # where their sources live (in git)


def source_launch_url(url: str, *, pagename: str, path_to_docs: str = "") -> str:
    """``url``, a launch link sphinx-book-theme built for the page ``pagename``, pointed at the
    page's source notebook: ``<path_to_docs>/book/executed/<name>.ipynb`` becomes
    ``<path_to_docs>/notebooks/<name>.ipynb``. Other pages' links are returned unchanged; a link of
    an executed page that does not contain the page's path is an error (the theme changed how it
    builds them), which the build reports as a warning, so ``-W`` fails."""
    if not pagename.startswith(EXECUTED):
        return url
    prefix = path_to_docs.strip("/") + "/" if path_to_docs.strip("/") else ""
    name = pagename[len(EXECUTED):]
    executed, source = f"{prefix}{pagename}.ipynb", f"{prefix}{SOURCES}{name}.ipynb"
    if executed not in url:
        raise ValueError(f"launch link {url!r} does not name the page's notebook {executed}")
    return url.replace(executed, source)


def _launch_sources(app, pagename, templatename, context, doctree):
    """Point the launch buttons of an executed page at its source notebook (after the theme's
    ``add_launch_buttons``, which runs at priority 501)."""
    from sphinx.util import logging

    path_to_docs = app.config.html_theme_options.get("path_to_docs", "") or ""
    for group in context.get("header_buttons", []):
        if group.get("label") != "launch-buttons":
            continue
        for button in group.get("buttons", []):
            if button.get("type") == "link":
                try:
                    button["url"] = source_launch_url(button["url"], pagename=pagename, path_to_docs=path_to_docs)
                except ValueError as exc:
                    logging.getLogger(__name__).warning(str(exc))


def setup(app):
    register_plugin("pybtex.style.labels", STYLE, AuthorYearLabelStyle, force=True)
    register_plugin("pybtex.style.formatting", STYLE, AuthorYearStyle, force=True)
    _alt_from_output_metadata()
    app.connect("html-page-context", _drop_duplicate_scripts)
    app.connect("html-page-context", _launch_sources, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

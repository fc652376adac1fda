"""Artifacts: data, image and provenance files per artifact ID, and paper-vs-reproduced tables.

``write_artifact`` writes, atomically, into ``artifacts/<profile>/``:

* ``<ID>.csv`` (a table) or ``<ID>.json`` (a dict of numbers) — the artifact's data;
* ``<ID>.samples.csv`` — the per-sample table behind it, so any number can be audited,
  and ``<ID>.<name>.csv`` for any further named table;
* ``<ID>.png`` — the figure, if there is one;
* ``<ID>.provenance.json`` — parameters, profile, dataset and checksum, checkpoints,
  versions, git commit, device, seeds, wall time, and the sha256 of every file above;
* ``<ID>.manifest.json`` — written last: the sha256 of every file of the set, provenance
  included. :func:`read_artifact` checks it, so a set that a killed run left mixed (new
  tables beside an old figure and provenance) or unfinished is refused, never read.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot state, no backend
dependence) and shown in notebooks as PNG images, so the book embeds them as ``<img>``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from advbook.core import cache
from advbook.book import tomls
from advbook.book.experiment import Run

__all__ = ["ARTIFACT_ID", "write_artifact", "read_artifact", "IncompleteArtifact", "paper_result", "compare",
           "show_image", "new_figure", "paper_beside_ours"]

ARTIFACT_ID = re.compile(r"^(HOL|VIR|RRM|AGK|LEC)-[FTX]\d+$")   # X: an artifact of ours, with no paper counterpart


def _check_id(artifact_id: str) -> None:
    if not ARTIFACT_ID.match(artifact_id):
        raise ValueError(f"artifact ID {artifact_id!r} is not of the form HOL-F2, VIR-T1, ... "
                         "(paper HOL|VIR|RRM|AGK|LEC, F or T or X for ours, number); see shared/ARTIFACTS.md")


def new_figure(*, width: float = 10, height: float = 4):
    """A pyplot-free figure, safe under any backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def write_artifact(run: Run, artifact_id: str, *, data: pd.DataFrame | dict, figure=None,
                   samples: pd.DataFrame | None = None,
                   tables: dict[str, pd.DataFrame] | None = None, figures: dict | None = None) -> dict[str, Path]:
    """Write an artifact's data, per-sample table, extra tables, figure and provenance.

    ``tables`` holds further named tables (``<ID>.<name>.csv``), ``figures`` further named figures
    (``<ID>.<name>.png``, path key ``image_<name>``: AGK-F1 has one per attack). Returns the paths
    written.
    """
    _check_id(artifact_id)
    if figure is None and artifact_id.split("-")[1].startswith("F"):
        raise ValueError(f"{artifact_id} is a figure: pass figure=")
    out = run.artifact_dir()
    cache.sweep_orphans(out)  # temporary files of runs killed while writing
    paths: dict[str, Path] = {}
    if isinstance(data, pd.DataFrame):
        paths["data"] = out / f"{artifact_id}.csv"
        with cache.atomic_path(paths["data"]) as tmp:
            data.to_csv(tmp, index=False)
    else:
        paths["data"] = cache.write_json(out / f"{artifact_id}.json", data)
    for name, table in {**(tables or {}), **({"samples": samples} if samples is not None else {})}.items():
        if not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"table name {name!r} must be lower-case letters, digits and underscores")
        paths[name] = out / f"{artifact_id}.{name}.csv"
        with cache.atomic_path(paths[name]) as tmp:
            table.to_csv(tmp, index=False)
    for name in figures or {}:
        if not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"figure name {name!r} must be lower-case letters, digits and underscores")
    if figure is not None:
        paths["image"] = out / f"{artifact_id}.png"
        with cache.atomic_path(paths["image"]) as tmp:
            figure.savefig(tmp, format="png", dpi=150)
    for name, fig in (figures or {}).items():
        paths[f"image_{name}"] = out / f"{artifact_id}.{name}.png"
        with cache.atomic_path(paths[f"image_{name}"]) as tmp:
            fig.savefig(tmp, format="png", dpi=150)
    provenance = run.provenance()
    provenance["artifact"] = artifact_id
    provenance["files"] = _file_sums(paths)
    paths["provenance"] = cache.write_json(out / f"{artifact_id}.provenance.json", provenance)
    cache.write_json(out / f"{artifact_id}.manifest.json", {"artifact": artifact_id, "files": _file_sums(paths)})
    return paths


def _file_sums(paths: dict[str, Path]) -> dict[str, dict]:
    return {kind: {"name": p.name, "sha256": cache.sha256_file(p)} for kind, p in paths.items()}


class IncompleteArtifact(RuntimeError):
    """An artifact's files are not one whole set written by one finished run."""


def read_artifact(folder: str | Path, artifact_id: str) -> dict[str, Path]:
    """The files of artifact ``artifact_id`` in ``folder`` by kind (``data``, ``image``, ``samples``,
    table names, ``provenance``), each checked against ``<ID>.manifest.json``.

    Raises :class:`IncompleteArtifact` when the manifest is missing (the run did not finish) or a
    file is missing or differs from it (a mixed set: a later run was killed midway).
    """
    _check_id(artifact_id)
    folder = Path(folder)
    manifest_path = folder / f"{artifact_id}.manifest.json"
    if not manifest_path.is_file():
        raise IncompleteArtifact(f"{artifact_id} has no {manifest_path.name} in {folder}: its run did not finish; "
                                 "rerun the experiment")
    manifest = cache.read_json(manifest_path)
    paths = {kind: folder / entry["name"] for kind, entry in manifest["files"].items()}
    for kind, path in paths.items():
        if not path.is_file() or cache.sha256_file(path) != manifest["files"][kind]["sha256"]:
            raise IncompleteArtifact(f"{path.name} does not match {manifest_path.name}: a mixed or altered set "
                                     "(a later run stopped midway?); rerun the experiment")
    return paths


def paper_result(artifact_id: str) -> dict:
    """What the paper reports for ``artifact_id`` (``cite``, ``claims``, ``columns``/``rows``)."""
    _check_id(artifact_id)
    table = tomls.load("paper_results")
    if artifact_id not in table:
        raise KeyError(f"no paper result recorded for {artifact_id}; recorded: {', '.join(table)}")
    return table[artifact_id]


def compare(run: Run, rows: list[tuple[str, object, object]], *, paper_label: str) -> pd.DataFrame:
    """A paper-vs-reproduced table; the reproduced column is labelled with profile and dataset."""
    dataset = (run.dataset or {}).get("name", "?")
    return pd.DataFrame(rows, columns=["quantity", f"paper ({paper_label})",
                                       f"reproduced ({run.profile} profile, {dataset})"])


def show_image(path: str | Path, *, alt: str | None = None):
    """Display a PNG in a notebook as an image output, rendered by the book as an ``<img>`` with
    ``alt`` text, at its size in print (inches x 96 px, about the column's width for the book's
    figures) and linked to the full-size image, so that a click opens it.

    ``alt`` says what the figure shows; by default it is built from the artifact ID (the file
    name), what the paper's figure is and what the book's figure draws (``plots.FIGURES``)."""
    import base64

    from IPython.display import display
    from PIL import Image

    path = Path(path)
    raw = path.read_bytes()
    with Image.open(path) as im:
        width = im.size[0]
        dpi = float((im.info.get("dpi") or (96, 96))[0]) or 96.0
    alt = alt if alt is not None else _default_alt(path.stem.split(".")[0])   # AGK-F1.pgd_100 -> AGK-F1
    # The alt text rides in the output's metadata: book/_ext/advbook_html.py puts it on the <img>;
    # a width makes Sphinx link the image to its full-size file (html_scaled_image_link).
    display({"image/png": base64.b64encode(raw).decode("ascii"), "text/plain": alt}, raw=True,
            metadata={"image/png": {"alt": alt, "width": round(width * 96 / dpi)}})


def show_images(paths: dict[str, Path]) -> None:
    """:func:`show_image` for every image :func:`write_artifact` wrote (``image``, then ``image_<name>``)."""
    for kind, path in paths.items():
        if kind == "image" or kind.startswith("image_"):
            show_image(path)


def _default_alt(artifact_id: str) -> str:
    """Alt text for a figure from its ID: what the book's figure draws and the paper's figure it stands for."""
    from advbook.book.plots import FIGURES

    what = FIGURES.get(artifact_id, "")
    try:
        cite = paper_result(artifact_id)["cite"] if ARTIFACT_ID.match(artifact_id) else ""
    except KeyError:
        cite = ""
    parts = [p for p in (what, f"after {cite}" if cite else "") if p]
    return f"{artifact_id}: " + "; ".join(parts) if parts else f"figure {artifact_id}"


def _paper_frame(artifact_id: str, row: str) -> pd.DataFrame:
    """The paper's rows of ``artifact_id`` (columns: ``row``, evaluation, mean, std)."""
    paper = paper_result(artifact_id)
    return pd.DataFrame(paper["rows"], columns=paper["columns"]).rename(columns={paper["columns"][0]: row})


class CaptionedFrame(pd.DataFrame):
    """A table with a caption: shown above it (an HTML ``<caption>``) in notebooks and in the book.
    Columns that are (side, evaluation) pairs are shown grouped by evaluation, "paper | ours" below."""

    _metadata = ["caption"]

    @property
    def _constructor(self):
        return CaptionedFrame

    def _shown(self) -> pd.DataFrame:
        frame = pd.DataFrame(self)
        if frame.columns.nlevels == 2 and set(frame.columns.get_level_values(0)) <= {"paper", "ours"}:
            frame = frame.swaplevel(axis=1)
        return frame

    def _repr_html_(self) -> str | None:
        from html import escape

        html = self._shown()._repr_html_()
        caption = getattr(self, "caption", None)
        if html is None or not caption:
            return html
        html = html.replace('class="dataframe"', 'class="dataframe advbook-captioned"', 1)
        return re.sub(r"(<table[^>]*>)", lambda m: f'{m.group(1)}\n  <caption>{escape(caption)}</caption>', html, count=1)

    def __repr__(self) -> str:
        caption = getattr(self, "caption", None)
        return (f"{caption}\n" if caption else "") + repr(self._shown())


def paper_beside_ours(results: pd.DataFrame, artifact_id: str, *, row: str, label: str,
                      evaluations: list[str], rows: list[str] | None = None, ours=()) -> pd.DataFrame:
    """The paper's table (``mean ± std``) beside ours (mean, ± std when there are several seeds):
    one row per ``row`` value, a ("paper", evaluation) and ("ours", evaluation) column per
    evaluation; cells of ours that the profile did not run read "not run", and evaluations the
    paper lacks read "—". ``results`` has columns ``row``, evaluation, accuracy and seed.

    The headers stay short; ``label`` (what "ours" is: profile, dataset, model, seeds) and the
    paper's source are said once, in the table's caption (a ``CaptionedFrame``). Rows named in
    ``ours`` (our controls, which the paper does not have) are labelled "(ours)"."""
    caption = _beside_caption(artifact_id, label)
    label = "ours"
    pt = _paper_frame(artifact_id, row)
    out: dict = {}
    for _, r in pt.iterrows():
        out.setdefault(r[row], {})[("paper", r.evaluation)] = f"{r['mean']:.2f} ± {r['std']:.2f}"
    if len(results):
        n_seeds = results["seed"].nunique()
        agg = results.groupby([row, "evaluation"], sort=False)["accuracy"].agg(["mean", "std"])
        for (key, evaluation), r in agg.iterrows():
            out.setdefault(key, {})[(label, evaluation)] = (f"{r['mean']:.1f} ± {r['std']:.1f}" if n_seeds > 1
                                                            else f"{r['mean']:.1f}")
    frame = pd.DataFrame(out).T
    cols = [(w, e) for e in evaluations for w in ("paper", label)]
    frame = frame.reindex(columns=pd.MultiIndex.from_tuples(cols))
    if rows is not None:
        frame = frame.reindex(rows)
    frame = frame.astype(object)        # all-missing columns are float; the fill below is text
    for col in frame.columns:
        frame[col] = frame[col].fillna("—" if col[0] == "paper" else "not run")
    frame.index = [f"{r} (ours)" if r in set(ours) else r for r in frame.index]
    frame = CaptionedFrame(frame)
    frame.caption = caption
    return frame


def _beside_caption(artifact_id: str, label: str) -> str:
    """The caption of ``paper_beside_ours``: the paper's source, then what "ours" is."""
    inner = re.fullmatch(r"ours \((.*)\)(.*)", label.strip(), flags=re.S)
    ours = f"{inner.group(1)}{inner.group(2)}" if inner else label
    return f"paper: {paper_result(artifact_id)['cite']}. ours: {ours}."


def params_table(params: dict) -> pd.DataFrame:
    """The resolved parameters of a page, one row each (what the page actually ran with)."""
    return pd.DataFrame({"value": [str(v) for v in params.values()]}, index=pd.Index(list(params), name="parameter"))


def model_note(trained, dataset, *, paper_model: str, robust: str = ""):
    """One Markdown line on a page's model: architecture, cached or trained now, training time and
    images, clean accuracy on the whole test split, and what it stands in for."""
    from IPython.display import Markdown, display

    from advbook.models.predict import predict

    pred = predict(trained.model, dataset.test.images).argmax(1)
    acc = 100 * (pred == dataset.test.labels).float().mean().item()
    name = trained.meta["model"]
    display(Markdown(
        f"**{name}**{robust} ({'loaded from the cache' if trained.from_cache else 'trained now'}, "
        f"{trained.meta['train_seconds']:.0f} s of training on {trained.meta['n_train']} images of `{dataset.name}`): "
        f"clean accuracy on the {len(dataset.test)} test images **{acc:.2f}%**."
        + ("" if name == paper_model else f" This profile substitutes `{name}` for the paper's `{paper_model}`.")
        + ("" if dataset.name == "cifar10" else f" Data: `{dataset.name}`, not the original CIFAR-10 "
           "(see the Reproducing page).")))
    return acc


def paper_table(artifact_id: str) -> pd.DataFrame:
    """The numbers the paper prints for ``artifact_id``, as a table (its ``columns`` and ``rows``)."""
    paper = paper_result(artifact_id)
    return pd.DataFrame(paper.get("rows", []), columns=paper.get("columns"))


def cells_beside(ours: pd.DataFrame, artifact_id: str, *, keys: list[str], value: str, index: list[str],
                 columns: str, label: str = "ours", keep: dict | None = None) -> pd.DataFrame:
    """The paper's numbers beside ours, cell by cell: both tables are matched on ``keys`` and
    pivoted to ``index`` rows and (paper | ours) x ``columns`` columns. The paper's value column is
    the last of its ``columns``; ours is ``value``, as mean ± std over seeds where ``ours`` has
    several (a ``seed`` column). ``keep`` (column -> values) keeps only those rows of both tables,
    so that a wide table can be shown a few columns at a time."""
    paper = paper_table(artifact_id)
    for column, values in (keep or {}).items():
        paper, ours = (t[t[column].isin(list(values))] for t in (paper, ours))
    paper = paper.rename(columns={paper.columns[-1]: "paper"})
    several = "seed" in ours and ours["seed"].nunique() > 1
    agg = ours.groupby(keys, sort=False)[value].agg(["mean", "std"]).reset_index()
    agg[label] = [f"{m:.1f} ± {s:.1f}" if several else round(m, 1) for m, s in zip(agg["mean"], agg["std"])]
    side = paper.merge(agg[keys + [label]], on=keys, how="outer")
    return side.pivot_table(index=index, columns=columns, values=["paper", label], aggfunc="first", sort=False)

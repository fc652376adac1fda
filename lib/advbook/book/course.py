"""Student notebooks: the book's notebooks with every solution removed and the exercises kept.

Exercises and their solutions are sphinx-exercise directives in markdown cells, written as fenced
blocks (backticks or colons, MyST's ``colon_fence``)::

    :::{exercise} Title
    :label: hol-ddb-bound
    ...
    :::

    :::{solution} hol-ddb-bound
    :class: dropdown
    ...
    :::

:func:`student_notebook` removes every ``{solution}`` block, every gated block from
``{solution-start}`` to ``{solution-end}``, and every cell tagged ``solution``; the rest of the
notebook (its cells, ids, metadata and formatting) is kept as it is. A fence closes at the first
line of the same character at least as long as the one that opened it (CommonMark's rule), so a
solution may hold code blocks behind a longer fence. A solution that is never closed is an error
naming the notebook and the cell, raised before anything is written, and so is a solution nested
inside another fenced block, which could not be cut out alone. Nothing here imports torch.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SOLUTION_TAG", "Block", "blocks", "strip_solutions", "student_notebook", "exercise_labels",
           "solution_targets", "read_notebook", "write_notebook", "source_notebooks", "write_student_notebooks"]

SOLUTION_TAG = "solution"   # a cell with this tag is a solution as a whole (e.g. a worked code cell)

# An opening fence: up to 3 spaces, 3+ backticks or colons, then `{name}` and the directive's argument.
_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|:{3,})(?P<info>.*)$")
_DIRECTIVE = re.compile(r"^\{(?P<name>[A-Za-z][\w-]*)\}\s*(?P<arg>.*?)\s*$")
_OPTION = re.compile(r"^\s*:(?P<key>[\w-]+):\s*(?P<value>.*?)\s*$")
_LEFT = re.compile(r"\{solution(?:-start|-end)?\}")   # any solution directive left after stripping


@dataclass(frozen=True)
class Block:
    """One top-level fenced block of a markdown cell: a directive (``name`` set) or a code block."""

    name: str | None            # "exercise", "solution", ...; None for a plain code fence
    argument: str               # the directive's argument (a solution's: the exercise label)
    options: dict = field(default_factory=dict)   # ``:key: value`` lines right after the opening
    start: int = 0              # index of the opening line
    end: int = 0                # index of the closing line (the last line if never closed)
    closed: bool = True


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _set_source(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True) if isinstance(cell.get("source"), list) else text


def blocks(text: str) -> list[Block]:
    """The top-level fenced blocks of a markdown text, in order (fences inside them are content)."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        fence = match["fence"]
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
        directive = _DIRECTIVE.match(match["info"].strip())
        options = {}
        for line in lines[i + 1:(len(lines) if end is None else end)]:
            option = _OPTION.match(line)
            if not option:
                break
            options[option["key"]] = option["value"]
        out.append(Block(name=directive["name"] if directive else None, argument=directive["arg"] if directive else "",
                         options=options, start=i, end=len(lines) - 1 if end is None else end, closed=end is not None))
        i = len(lines) if end is None else end + 1
    return out


def strip_solutions(text: str, *, where: str) -> tuple[str, int]:
    """``text`` without its ``{solution}`` blocks and gated ``{solution-start}`` ... ``{solution-end}``
    spans, and how many were removed. ``where`` names the cell in the one-line error raised when a
    solution is never closed."""
    lines = text.split("\n")
    found = blocks(text)
    spans, k = [], 0
    while k < len(found):
        block = found[k]
        if block.name == "solution":
            if not block.closed:
                raise ValueError(f"{where}: the {{solution}} fence opened on line {block.start + 1} is never closed")
            spans.append((block.start, block.end))
        elif block.name == "solution-start":
            end = next((b for b in found[k + 1:] if b.name == "solution-end"), None)
            if end is None or not end.closed:
                raise ValueError(f"{where}: the {{solution-start}} on line {block.start + 1} has no {{solution-end}}")
            spans.append((block.start, end.end))
            k = found.index(end)
        elif block.name == "solution-end":
            raise ValueError(f"{where}: a {{solution-end}} on line {block.start + 1} has no {{solution-start}}")
        k += 1
    for start, end in reversed(spans):
        after = end + 1
        # drop the blank line the block leaves behind when blank lines surround it
        if (start == 0 or not lines[start - 1].strip()) and after < len(lines) and not lines[after].strip():
            after += 1
        del lines[start:after]
    return "\n".join(lines), len(spans)


def _tags(cell: dict) -> list:
    return cell.get("metadata", {}).get("tags", [])


def student_notebook(nb: dict, *, name: str) -> tuple[dict, int]:
    """A copy of ``nb`` without solutions, and how many were removed: cells tagged ``solution`` are
    dropped, solution blocks are cut out of markdown cells, a markdown cell that held nothing but
    solutions is dropped; every other cell is kept unchanged. ``name`` labels errors."""
    out = copy.deepcopy(nb)
    cells, removed = [], 0
    for index, cell in enumerate(out.get("cells", [])):
        if SOLUTION_TAG in _tags(cell):
            removed += 1
            continue
        if cell.get("cell_type") == "markdown":
            where = f"{name}, cell {index} (id {cell.get('id', '?')})"
            text, n = strip_solutions(_source(cell), where=where)
            left = _LEFT.search(text)
            if left:  # inside another fenced block, where it cannot be cut out alone: never hand it out
                line = text.count("\n", 0, left.start()) + 1
                raise ValueError(f"{where}: {left[0]} on line {line} is inside another fenced block; move it out")
            if n:
                removed += n
                if not text.strip():
                    continue
                _set_source(cell, text)
        cells.append(cell)
    out["cells"] = cells
    return out, removed


def _markdown_blocks(nb: dict):
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            yield from blocks(_source(cell))


def exercise_labels(nb: dict, *, name: str = "notebook") -> list[str]:
    """The ``:label:`` of every ``{exercise}`` (and ``{exercise-start}``) in the markdown cells, in
    order; an exercise without a label cannot be answered by a solution, so it is an error."""
    labels = []
    for block in _markdown_blocks(nb):
        if block.name in ("exercise", "exercise-start"):
            if "label" not in block.options:
                raise ValueError(f"{name}: an {{{block.name}}} ({block.argument or 'untitled'}) has no :label:")
            labels.append(block.options["label"])
    return labels


def solution_targets(nb: dict, *, name: str = "notebook") -> list[str]:
    """The exercise label each ``{solution}`` (and ``{solution-start}``) answers, in order, plus one
    ``""`` per cell tagged ``solution``."""
    targets = [b.argument for b in _markdown_blocks(nb) if b.name in ("solution", "solution-start")]
    return targets + ["" for cell in nb.get("cells", []) if SOLUTION_TAG in _tags(cell)]


def read_notebook(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_notebook(nb: dict, path: Path) -> None:
    """Write as Jupyter does (indent 1, UTF-8 unescaped, final newline), so diffs stay small."""
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def source_notebooks(root: Path) -> list[Path]:
    """Every notebook of ``root/notebooks``, in name order (the names carry the book's numbering)."""
    found = sorted((Path(root) / "notebooks").glob("*.ipynb"))
    if not found:
        raise ValueError(f"no notebooks in {Path(root) / 'notebooks'}")
    return found


def write_student_notebooks(sources: list[Path], *, out: Path) -> list[tuple[Path, int]]:
    """Write the student copy of every notebook in ``sources`` into ``out`` (same file names);
    return (written path, solutions removed) per notebook. Every notebook is transformed before the
    first is written, so a broken one writes nothing."""
    out = Path(out)
    sources = [Path(p) for p in sources]
    if any(p.parent.resolve() == out.resolve() for p in sources):
        raise ValueError(f"--out {out} is where the source notebooks are; choose another folder")
    copies = [(p, *student_notebook(read_notebook(p), name=p.name)) for p in sources]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb, removed in copies:
        target = out / path.name
        write_notebook(nb, target)
        written.append((target, removed))
    return written

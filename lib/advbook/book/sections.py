"""The section map: for every artifact, its notebook, the library functions behind it and the tests
that cover them (``sections.toml``, rendered as the book's "Where things are" page).

:func:`generate` reads it off the sources: the notebook cells from the previous artifact up to the
one that writes an artifact, the ``advbook`` functions those cells call (through their imports), and
the test functions that call each of them. ``tests/test_sections.py`` checks that the committed file
equals what :func:`generate` finds and that every function and test in it exists, so the map
cannot drift from the code. Regenerate it with ``python -m advbook.book.sections``.
"""
from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

from advbook.core.paths import repo_root

__all__ = ["generate", "load", "write", "render", "MAP_FILE"]

MAP_FILE = Path(__file__).with_name("sections.toml")
_ID = re.compile(r'"((?:HOL|VIR|RRM|AGK|LEC)-[FTX]\d+)"')
_WRITES = re.compile(r'(?:write_artifact|table_with_claims|verdicts\.show)\(\s*run,\s*"((?:HOL|VIR|RRM|AGK|LEC)-[FTX]\d+)"')


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> ``advbook`` module path, from ``from advbook... import ...`` lines."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("advbook"):
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _calls(tree: ast.AST, aliases: dict[str, str]) -> set[str]:
    """``module.function`` for every call ``alias.function(...)`` whose alias is an advbook module."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            if node.func.value.id in aliases:
                found.add(f"{aliases[node.func.value.id]}.{node.func.attr}")
    return found


def _cells(notebook: Path) -> list[str]:
    nb = json.loads(notebook.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


# Plumbing every page uses; the map lists what is particular to each artifact.
PLUMBING = {"advbook.book.report.write_artifact", "advbook.book.report.show_image", "advbook.book.report.params_table",
            "advbook.data.registry.load_dataset", "advbook.core.tensors.to_float", "advbook.data.cifar.balanced_subset",
            "advbook.book.experiment.start", "advbook.book.experiment.resolve", "advbook.book.experiment.artifact_dir"}


def canonical(path: str) -> str:
    """``package.function`` as the module that defines it (``advbook.data.load_dataset`` ->
    ``advbook.data.registry.load_dataset``); unchanged where it cannot be imported."""
    import importlib

    module, name = path.rsplit(".", 1)
    try:
        obj = getattr(importlib.import_module(module), name)
        return f"{obj.__module__}.{obj.__qualname__}"
    except (ImportError, AttributeError):
        return path


def _tests(root: Path) -> dict[str, set[str]]:
    """Test node id -> the advbook functions it calls through its module's imports (canonical)."""
    out = {}
    for path in sorted((root / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        aliases = _aliases(tree)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                local = {**aliases, **_aliases(node)}
                calls = _calls(node, local) | {local[n.func.id] for n in ast.walk(node) if isinstance(n, ast.Call)
                                                and isinstance(n.func, ast.Name) and n.func.id in local}
                out[f"tests/{path.name}::{node.name}"] = {canonical(c) for c in calls}
    return out


def generate(root: Path | None = None) -> dict[str, dict]:
    """The section map read off the notebooks and tests under ``root`` (default: the repository)."""
    root = root or repo_root()
    tests = _tests(root)
    out: dict[str, dict] = {}
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        cells = _cells(notebook)
        aliases = _aliases(ast.parse("\n".join(c for c in cells if "import" in c)))
        pending: set[str] = set()
        for source in cells:
            try:
                pending |= _calls(ast.parse(source), aliases)
            except SyntaxError:   # a cell with IPython magics: no library calls to read
                continue
            for artifact in dict.fromkeys(_WRITES.findall(source)):
                if artifact in out:
                    continue
                functions = sorted({canonical(f) for f in pending} - PLUMBING)
                covered = sorted(t for t, called in tests.items() if called & set(functions))
                out[artifact] = {"notebook": f"notebooks/{notebook.name}", "functions": functions, "tests": covered}
            if _WRITES.search(source):
                pending = set()
    return dict(sorted(out.items(), key=lambda kv: (kv[0][:3], kv[0][4], int(kv[0][5:]))))


def _toml(entries: dict[str, dict]) -> str:
    lines = ["# Where things are: for every artifact, its notebook, the library functions behind it and the tests",
             "# that call them. Generated by `python -m advbook.book.sections`; tests/test_sections.py checks it.", ""]
    for artifact, e in entries.items():
        lines += [f'["{artifact}"]', f'notebook = "{e["notebook"]}"',
                  "functions = [" + ", ".join(f'"{f}"' for f in e["functions"]) + "]",
                  "tests = [" + ", ".join(f'"{t}"' for t in e["tests"]) + "]", ""]
    return "\n".join(lines)


def write(root: Path | None = None) -> Path:
    """Regenerate ``sections.toml`` from the sources."""
    MAP_FILE.write_text(_toml(generate(root)))
    return MAP_FILE


def load() -> dict[str, dict]:
    with open(MAP_FILE, "rb") as f:
        return tomllib.load(f)


def render(entries: dict[str, dict] | None = None) -> str:
    """The "Where things are" page: one block per artifact with links to its section."""
    entries = entries or load()
    lines = []
    for artifact, e in entries.items():
        page = Path(e["notebook"]).stem
        short = lambda f: f.replace("advbook.", "", 1)
        tests = sorted({t.split("::")[0] for t in e["tests"]})
        lines += [f"**{artifact}** — [{page}]({page}.html), `{e['notebook']}`",
                  f"- code: {', '.join(f'`{short(f)}`' for f in e['functions']) or '—'}",
                  f"- tests ({len(e['tests'])}): {', '.join(f'`{t}`' for t in tests) or '—'}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"wrote {write()}")

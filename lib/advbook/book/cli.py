"""Command line: run notebooks with overrides, show parameters, manage the cache, write student notebooks.

    advbook run hol_ddb --profile cpu --set eps=4/255 --set n_samples=500
    advbook run all --profile smoke
    advbook params hol_ddb --profile paper
    advbook cache info | advbook cache clear [--only data|models]
    advbook student [--out DIR]     # the notebooks with their solutions removed, for a course

Parameters, the device and the data setting are checked before anything runs; a notebook is
executed by papermill into ``book/executed/`` (what the book renders) and replaces the previous
copy only when it finished; a failed execution is kept as ``<name>.failed.ipynb`` for inspection.
The console shows a line per code cell, the notebook's warnings and progress bars; a failure is
one line naming the section, the cell and the exception, with the full trace in ``<name>.log``
beside the executed notebook. Torch is imported only by the commands that need it, so ``--help``
is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
import traceback
from pathlib import Path

from advbook.book.schemas import PROFILES, SCHEMAS, ParameterError, has_profile, load_profiles
from advbook.core.paths import repo_root

__all__ = ["main", "execute", "run_notebook", "tag_parameter_cells", "NotebookFailed"]


class _Lazy:
    """A module imported on first use (``advbook.core.cache`` imports torch)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


cache = _Lazy("advbook.core.cache")


def resolve(experiment: str, *, profile: str, overrides: dict | None = None) -> dict:
    from advbook.book.experiment import resolve as _resolve

    return _resolve(experiment, profile=profile, overrides=overrides)


def _overrides(pairs: list[str], experiment: str) -> dict:
    out = {}
    schema = SCHEMAS[experiment]
    for pair in pairs:
        if "=" not in pair:
            raise ParameterError(f"--set takes name=value, got {pair!r}")
        name, value = pair.split("=", 1)
        name = name.strip()
        if name not in schema:
            raise ParameterError(f"unknown parameter {name!r} for {experiment}; valid: {', '.join(sorted(schema))}")
        out[name] = schema[name].check(name, value)
    return out


def executed_dir() -> Path:
    return Path(os.environ.get("ADVBOOK_EXECUTED") or repo_root() / "book" / "executed")


class NotebookFailed(RuntimeError):
    """A notebook stopped with an error; the message is one line (section, cell, exception, log)."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# "<file>:<line>: <Category>: <message>", as warnings.showwarning prints it (then the quoted source line)
_WARNING = re.compile(r"^(?P<where>.+?):(?P<line>\d+): (?P<category>[A-Za-z_]\w*Warning): (?P<message>.*)$")


class _Console:
    """What the terminal sees of a running notebook, and its log file.

    The console gets a line per code cell (its first words), each warning the notebook prints as
    one line (a cache entry that is rebuilt says so with a ``RebuildWarning``), and the progress
    bars it draws on stderr: live on a terminal, their last state otherwise. The log file gets all
    of it plus the notebook's stdout and, on failure, the full trace. ``verbose`` (``--log``) shows
    the notebook's stdout and stderr as they come instead.
    """

    def __init__(self, label: str, log, *, verbose: bool = False, stream=None):
        self.label, self.log, self.verbose = label, log, verbose
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.partial = ""           # stderr text after its last newline
        self.after_warning = False  # the next line is the source line a warning quotes
        self.stdout, self.stderr = _Sink(self._stdout), _Sink(self._stderr)

    def cell(self, cell, index: int, cells: list) -> None:
        if cell.get("cell_type") != "code":
            return
        ordinal = sum(c.get("cell_type") == "code" for c in cells[:index + 1])
        total = sum(c.get("cell_type") == "code" for c in cells)
        first = next((re.sub(r"\s+#.*$", "", line.strip()) for line in cell.get("source", "").splitlines()
                      if line.strip() and not line.strip().startswith("#")), "")
        self._emit(f"advbook: {self.label} [{ordinal}/{total}] {first[:70] + ('...' if len(first) > 70 else '')}")

    def _stdout(self, text: str) -> None:
        self.log.write(text)
        if self.verbose:
            self.stream.write(text)
            self.stream.flush()

    def _stderr(self, text: str) -> None:
        self.log.write(text)
        if self.verbose:
            self.stream.write(text)
            self.stream.flush()
            return
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self._line(line.rsplit("\r", 1)[-1])  # a progress bar's last state
        if self.tty and self.partial:
            self.stream.write("\r" + self.partial.rsplit("\r", 1)[-1] + "\x1b[K")
            self.stream.flush()

    def _line(self, line: str) -> None:
        if self.after_warning and line.startswith("  "):
            self.after_warning = False
            return
        match = _WARNING.match(line)
        self.after_warning = match is not None
        if match:
            line = f"advbook: {self.label}: {match['category']}: {match['message']}"
        if line.strip():
            self._emit(line)

    def _emit(self, line: str) -> None:
        self.log.write(line + "\n")
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.partial and not self.verbose:
            self._line(self.partial.rsplit("\r", 1)[-1])
        self.partial = ""


class _Sink:
    """A file-like ``write`` for papermill's ``stdout_file``/``stderr_file``."""

    def __init__(self, write):
        self.write = write

    def flush(self) -> None:
        pass


_ENGINE = "advbook"


def _register_engine() -> None:
    """Papermill's nbclient engine, telling the console when each cell starts."""
    from papermill.engines import NBClientEngine, papermill_engines

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, *, on_cell=None, **kwargs):
            if on_cell is not None:
                start = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    on_cell(cell, cell_index, nb_man.nb.cells)
                    return start(cell, cell_index, **kw)
                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(_ENGINE, Engine)


def tag_parameter_cells(nb):
    """Hide the notebook's own ``parameters`` cell (``profile = "cpu"``) and papermill's
    ``injected-parameters`` cell on the page (Jupyter Book's ``remove-cell``): the page shows the
    values it ran with once, in the table the cell after them prints (``report.params_table``)."""
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if ("parameters" in tags or "injected-parameters" in tags) and "remove-cell" not in tags:
            cell["metadata"]["tags"] = [*tags, "remove-cell"]
    return nb


def _trace(exc: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return _ANSI.sub("", "\n".join(exc.traceback)) + "\n"
    return "".join(traceback.format_exception(exc))


def run_notebook(source: Path, *, label: str, parameters: dict, verbose: bool = False) -> Path:
    """Execute ``source`` with papermill into :func:`executed_dir` (the page replaced only when it
    finished, its parameter cells tagged by :func:`tag_parameter_cells`); return the page's path.
    A failure raises :class:`NotebookFailed` (one line; the trace is in ``<name>.log`` and the
    notebook in ``<name>.failed.ipynb``); Ctrl-C propagates as ``KeyboardInterrupt``."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    _register_engine()
    out_dir = executed_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / source.name
    partial = out_dir / f".{source.stem}.partial.ipynb"
    failed = out_dir / f"{source.stem}.failed.ipynb"
    log_path = out_dir / f"{source.stem}.log"
    t0 = time.perf_counter()
    with open(log_path, "w", buffering=1) as log:
        log.write(f"advbook: {label} {source} {parameters}\n")
        console = _Console(label, log, verbose=verbose)
        try:
            papermill.execute_notebook(
                str(source), str(partial), parameters=parameters, engine_name=_ENGINE, kernel_name="python3",
                cwd=str(source.parent), progress_bar=False, log_output=False, stdout_file=console.stdout,
                stderr_file=console.stderr, on_cell=console.cell,
                config=Config({"KernelManager": {"transport": "ipc"}}))  # local sockets: no TCP warning per run
        except BaseException as exc:
            console.close()
            log.write(_trace(exc))
            kept = partial.exists()
            if kept:
                os.replace(partial, failed)
            where = f"full trace: {log_path}" + (f"; notebook: {failed}" if kept else "")
            if isinstance(exc, PapermillExecutionError):
                cell = next((line.strip() for line in exc.source.splitlines() if line.strip()), "")
                raise NotebookFailed(f"{label} failed in cell {exc.exec_count} ({cell[:60]}): {exc.ename}: "
                                     f"{_one_line(exc.evalue)} ({where})") from exc
            if isinstance(exc, Exception):  # the kernel died, could not start, ...
                raise NotebookFailed(f"{label} failed: {type(exc).__name__}: {_one_line(exc)} ({where})") from exc
            log.write("interrupted\n")
            raise
        console.close()
        nb = tag_parameter_cells(nbformat.read(partial, as_version=4))
        nbformat.write(nb, partial)
        os.replace(partial, target)
        failed.unlink(missing_ok=True)
        log.write(f"finished in {time.perf_counter() - t0:.0f} s\n")
    return target


def execute(experiment: str, *, profile: str, overrides: dict, log_output: bool = False) -> Path:
    """Execute one experiment's notebook with papermill; return the executed copy's path."""
    resolve(experiment, profile=profile, overrides=overrides)  # fail before any work
    source = repo_root() / load_profiles()[experiment]["notebook"]
    if executed_dir().is_dir():   # the .partial.ipynb and temp files a killed run left behind
        from advbook.core.cache import sweep_orphans
        sweep_orphans(executed_dir())
    t0 = time.perf_counter()
    target = run_notebook(source, label=experiment, parameters={"profile": profile, "params": overrides},
                          verbose=log_output)
    print(f"advbook: {experiment} ({profile}) executed in {time.perf_counter() - t0:.0f} s -> {target}")
    return target


def _cmd_run(args) -> int:
    profiles = load_profiles()
    names = (sorted(SCHEMAS, key=lambda name: profiles[name]["notebook"])  # in book order
             if args.experiment == "all" else [args.experiment])
    if args.experiment != "all" and args.experiment not in SCHEMAS:
        raise ParameterError(f"unknown experiment {args.experiment!r}; valid: all, {', '.join(SCHEMAS)}")
    if args.set and args.experiment == "all":
        raise ParameterError("--set applies to one experiment; name it instead of 'all'")
    if args.experiment == "all":  # a profile written for some pages only (gpu) runs those
        skipped = [n for n in names if not has_profile(n, args.profile)]
        names = [n for n in names if n not in skipped]
        if skipped:
            print(f"advbook: no {args.profile} profile yet for {', '.join(skipped)}: not run")
    plans = [(name, _overrides(args.set or [], name)) for name in names]
    from advbook.book.experiment import preflight

    for name, overrides in plans:  # validate everything first: parameters, device, data
        preflight(name, profile=args.profile, params=resolve(name, profile=args.profile, overrides=overrides))
    for name, overrides in plans:
        execute(name, profile=args.profile, overrides=overrides, log_output=args.log)
    return 0


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _cmd_params(args) -> int:
    params = resolve(args.experiment, profile=args.profile, overrides=_overrides(args.set or [], args.experiment))
    schema = SCHEMAS[args.experiment]
    width = max(map(len, params))
    for name, value in params.items():
        p = schema[name]
        valid = (", ".join(p.valid_choices()) if p.choices else
                 f"[{_fmt(p.low)}, {_fmt(p.high)}]" if p.low is not None else p.kind.__name__)
        print(f"{name:<{width}}  {value!r:<24}  {p.help} ({valid})")
    return 0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cmd_cache(args) -> int:
    root = cache.cache_dir()
    if args.action == "info":
        swept = cache.sweep_cache() + (cache.sweep_orphans(executed_dir()) if executed_dir().is_dir() else [])
        print(f"cache: {root}" + ("" if (root / cache.MARKER).is_file() else
                                  f" (no {cache.MARKER} marker: not created by advbook, `cache clear` refuses it)"))
        if swept:
            print(f"  removed {len(swept)} orphaned temporary files of killed runs "
                  f"({sum(1 for p in swept if p.name.endswith('.partial.ipynb'))} unfinished notebooks)")
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            print(f"  {sub.name:<8} {_size(sub) / 2**20:8.1f} MiB  {sum(1 for _ in sub.iterdir())} entries")
        return 0
    try:
        removed = cache.clear(args.only)
    except cache.NotACache as exc:
        print(f"advbook: error: {exc}", file=sys.stderr)
        return 1
    print(f"removed {', '.join(map(str, removed)) or 'nothing (already empty)'}")
    return 0


def _cmd_student(args) -> int:
    from advbook.book import course

    root = repo_root()
    out = args.out if args.out is not None else root / "_build" / "student"
    try:
        written = course.write_student_notebooks(course.source_notebooks(root), out=out)
    except ValueError as exc:
        print(f"advbook: error: {exc}", file=sys.stderr)
        return 2
    print(f"advbook: wrote {len(written)} student notebooks to {out} "
          f"({sum(n for _, n in written)} solutions removed)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advbook", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks into book/executed/")
    run.add_argument("experiment", help=f"all, or one of: {', '.join(SCHEMAS)}")
    run.add_argument("--profile", default="cpu", choices=PROFILES)
    run.add_argument("--set", action="append", metavar="NAME=VALUE", help="override one parameter (repeatable)")
    run.add_argument("--log", action="store_true",
                     help="stream the notebook's stdout and stderr as they are (always written to <name>.log)")
    run.set_defaults(func=_cmd_run)
    params = sub.add_parser("params", help="show an experiment's resolved parameters and their valid values")
    params.add_argument("experiment", choices=list(SCHEMAS))
    params.add_argument("--profile", default="cpu", choices=PROFILES)
    params.add_argument("--set", action="append", metavar="NAME=VALUE")
    params.set_defaults(func=_cmd_params)
    c = sub.add_parser("cache", help="show or clear the cache")
    c.add_argument("action", choices=("info", "clear"))
    c.add_argument("--only", choices=("data", "models", "evals"), help="clear only this part")
    c.set_defaults(func=_cmd_cache)
    student = sub.add_parser("student", help="write the notebooks without their solutions (exercises kept)")
    student.add_argument("--out", type=Path, metavar="DIR",
                         help="folder for the student notebooks (default: _build/student)")
    student.set_defaults(func=_cmd_student)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ParameterError as exc:
        print(f"advbook: error: {exc}", file=sys.stderr)
        return 2
    except NotebookFailed as exc:
        print(f"advbook: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(("\n" if sys.stderr.isatty() else "") + "advbook: interrupted; rerun resumes from the cache",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

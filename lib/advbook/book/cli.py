"""Command line: run notebooks with a profile and overrides, show parameters, manage the cache.

    advbook run hol_ddb --profile cpu --set eps=4/255 --set n_samples=500
    advbook run all --profile smoke
    advbook params hol_ddb --profile paper
    advbook cache info | advbook cache clear [--only data|models]

Parameters are checked before anything runs; a notebook is executed by papermill into
``book/executed/`` (what the book renders) and replaces the previous copy only when it
finished; a failed execution is kept as ``<name>.failed.ipynb`` for inspection.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from advbook.core import cache
from advbook.book.experiment import PROFILES, SCHEMAS, ParameterError, load_profiles, repo_root, resolve

__all__ = ["main", "execute"]


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


def execute(experiment: str, *, profile: str, overrides: dict, log_output: bool = False) -> Path:
    """Execute one experiment's notebook with papermill; return the executed copy's path."""
    import papermill

    resolve(experiment, profile=profile, overrides=overrides)  # fail before any work
    source = repo_root() / load_profiles()[experiment]["notebook"]
    out_dir = executed_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / source.name
    partial = out_dir / f".{source.stem}.partial.ipynb"
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(partial), parameters={"profile": profile, "params": overrides},
                                   kernel_name="python3", cwd=str(source.parent), log_output=log_output,
                                   progress_bar=not log_output)
    except BaseException:
        failed = out_dir / f"{source.stem}.failed.ipynb"
        if partial.exists():
            os.replace(partial, failed)
            print(f"advbook: {experiment} failed; the executed notebook is kept at {failed}", file=sys.stderr)
        raise
    os.replace(partial, target)
    (out_dir / f"{source.stem}.failed.ipynb").unlink(missing_ok=True)
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
    plans = [(name, _overrides(args.set or [], name)) for name in names]
    for name, overrides in plans:  # validate everything first
        resolve(name, profile=args.profile, overrides=overrides)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advbook", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks into book/executed/")
    run.add_argument("experiment", help=f"all, or one of: {', '.join(SCHEMAS)}")
    run.add_argument("--profile", default="cpu", choices=PROFILES)
    run.add_argument("--set", action="append", metavar="NAME=VALUE", help="override one parameter (repeatable)")
    run.add_argument("--log", action="store_true", help="stream the notebook's output instead of a progress bar")
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ParameterError as exc:
        print(f"advbook: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

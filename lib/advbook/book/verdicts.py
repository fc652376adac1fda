"""Verdicts on a page: the claims of ``claims.toml`` decided from an artifact's saved files.

A page calls :func:`show` right after writing an artifact. The claims are decided by the engine
(:mod:`advbook.analysis.claims`) from the files on disk, not from the notebook's variables, so
:func:`decide_artifact` re-decides any page from its artifacts alone, and the claims page
(:func:`claims_table`) is built from the ``<ID>.claims.json`` files the pages leave.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from advbook.analysis import claims as engine
from advbook.book import report, tomls
from advbook.core import cache

__all__ = ["load_claims", "artifact_tables", "context", "decide_artifact", "show", "claims_table", "SECTIONS",
           "decide_all", "claims_page", "table_with_claims", "what_ran"]

# artifact prefix -> the page (MyST label) it is shown on, for links from the claims page
SECTIONS = {"HOL-F2": "hol-ddb", "HOL-F3": "hol-toy", "HOL-T1": "hol-freq", "HOL-F4": "hol-freq",
            "HOL-T2": "hol-trust", "HOL-T3": "hol-kd", "HOL-F6": "hol-kd", "VIR-T1": "vir-main",
            "VIR-T2": "vir-scale", "VIR-T3": "vir-scale", "VIR-T4": "vir-scale", "VIR-T5": "vir-scale",
            **{f"VIR-T{i}": "vir-ablations" for i in (6, 7, 9, 10, 11, 12)},
            "LEC-F1": "lec-examples", "LEC-F2": "lec-examples",
            **{f"LEC-F{i}": "lec-whitebox" for i in range(3, 9)}, "LEC-F9": "lec-beyond", "LEC-F10": "lec-beyond",
            "LEC-F11": "lec-defenses", "LEC-T1": "lec-tradeoff",
            "RRM-T1": "rrm-speedup", "RRM-T2": "rrm-transfer", "RRM-F3": "rrm-lambda", "RRM-F4": "rrm-capacity",
            "AGK-T1": "agk-attacks", "AGK-T4": "agk-attacks", "AGK-T2": "agk-autoattack", "AGK-T3": "agk-attention",
            "AGK-T5": "agk-cat", "AGK-T6": "agk-features", "AGK-F1": "agk-features"}


def _expand_paper_best(claim: dict) -> list[dict]:
    """One claim per evaluation of the paper's table: its best row there must be the best here, among
    the rows the paper has (rows of ours alone, such as the controls of the VIR ablations, are shown
    beside them but are no rivals of a claim about the paper's table)."""
    paper = report.paper_result(claim["artifact"])
    rows = pd.DataFrame(paper["rows"], columns=paper["columns"])
    value = "mean" if "mean" in rows else rows.columns[-1]
    out = []
    for evaluation, g in rows.groupby("evaluation", sort=False):
        best = g[g[value] == g[value].max()]
        if len(best) != 1:
            continue   # a tie in the paper: no single best row to test
        winner = best.iloc[0, 0]
        where = dict(claim.get("where", {}))
        dataset, _, name = evaluation.rpartition(":")
        where["evaluation"] = name
        if dataset:
            where["dataset"] = dataset
        rivals = claim.get("rivals") or list(dict.fromkeys(rows.iloc[:, 0]))   # the paper's rows, not our controls
        out.append({**claim, "id": f"{claim['id']}.{evaluation}", "rule": "paired_best", "winner": winner,
                    "rivals": rivals,
                    "where": where, "paper_rule": "paper_best",
                    "statement": f"{claim['statement'].split(':')[0]}: under {evaluation}, the paper's best "
                                 f"{claim['unit']} ({winner}, {best.iloc[0][value]:.2f}%) is also the best here."})
    return out


def load_claims(artifact_id: str | None = None) -> list[dict]:
    """The claims of ``claims.toml`` (``paper_best`` entries expanded), of one artifact or all."""
    raw = tomls.load("claims")["claim"]
    out = []
    for c in raw:
        if artifact_id is not None and c["artifact"] != artifact_id:
            continue
        out += _expand_paper_best(c) if c["rule"] == "paper_best" else [c]
    return out


def artifact_tables(folder: Path, artifact_id: str) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    """An artifact's CSV tables by kind (``data``, ``samples``, every named table), its provenance
    and its JSON data, read through :func:`report.read_artifact`, so a set that a killed run left
    mixed or unfinished is refused (:class:`report.IncompleteArtifact`), never judged."""
    paths = report.read_artifact(folder, artifact_id)
    tables = {kind: pd.read_csv(path) for kind, path in paths.items() if path.suffix == ".csv"}
    provenance = json.loads(paths["provenance"].read_text()) if "provenance" in paths else {}
    data = json.loads(paths["data"].read_text()) if paths.get("data", Path()).suffix == ".json" else {}
    return tables, provenance, data


def context(provenance: dict, tables: dict[str, pd.DataFrame]) -> engine.Context:
    """Profile, dataset, seeds and parameters of an artifact, from its provenance (seeds from the
    per-sample table where it has a ``seed`` column)."""
    seeds = (provenance.get("seeds") or {}).get("seed", 0)
    for name in ("samples", "correct"):
        t = tables.get(name)
        if t is not None and "seed" in t:
            seeds = sorted(int(s) for s in t["seed"].unique())
            break
    if "correct" in tables and not isinstance(seeds, list):
        found = tables["correct"].columns.str.extract(r"_s(\d+)_tau")[0].dropna().astype(int).unique()
        seeds = sorted(found.tolist()) or seeds
    seeds = tuple(seeds) if isinstance(seeds, list) else (int(seeds),)
    return engine.Context(profile=provenance.get("profile", "?"),
                          dataset=(provenance.get("dataset") or {}).get("name", "?"),
                          seeds=seeds, params=provenance.get("params", {}))


def decide_artifact(folder: Path, artifact_id: str, *, write: bool = True) -> list[engine.Verdict]:
    """Decide every claim of ``artifact_id`` from its files in ``folder``; write ``<ID>.claims.json``.
    An artifact whose set is missing, unfinished or mixed gives "not run" with the reason."""
    folder = Path(folder)
    try:
        tables, provenance, data = artifact_tables(folder, artifact_id)
    except report.IncompleteArtifact as exc:
        ctx = engine.Context(profile=folder.name, dataset="—", seeds=())
        verdicts = [engine.not_run(c, ctx, str(exc)) for c in load_claims(artifact_id)]
    else:
        ctx = context(provenance, tables)
        status = str(data.get("status", "")) if isinstance(data, dict) else ""
        verdicts = [engine.not_run(c, ctx, str(data.get("reason", status))) if status.startswith("not run")
                    else engine.decide(c, tables, ctx) for c in load_claims(artifact_id)]
    if write:
        cache.write_json(folder / f"{artifact_id}.claims.json", [v.to_dict() for v in verdicts])
    return verdicts


def show(run, artifact_id: str):
    """Decide the claims of an artifact the page has just written and display them: the paper's
    statement, then the verdict line with its statistic, interval, p, n, seeds, profile and data."""
    from IPython.display import Markdown, display

    verdicts = decide_artifact(run.artifact_dir(), artifact_id)
    if not verdicts:
        return verdicts
    lines = [f"**Claims of {artifact_id}, decided by the claims engine** (rules fixed in advance: "
             "see the *Claims* page).", ""]
    for v in verdicts:
        lines.append(f"- *{v.statement}* ({v.claim}) {v.line()}")
    display(Markdown("\n".join(lines)))
    return verdicts


def comparisons(verdicts: list[engine.Verdict]) -> pd.DataFrame:
    """Every comparison behind the verdicts, one row each (estimate, interval, adjusted p, n)."""
    rows = [{"claim": v.claim, "comparison": c["label"], "estimate": c["estimate"], "low": c["low"],
             "high": c["high"], "p (Holm)": c["p"], "n": c["n"]} for v in verdicts for c in v.comparisons]
    return pd.DataFrame(rows).round(3)


def claims_table(folder: Path) -> pd.DataFrame:
    """One row per claim of every ``<ID>.claims.json`` in ``folder``: for the claims page."""
    rows = []
    for path in sorted(Path(folder).glob("*.claims.json")):
        for v in json.loads(path.read_text()):
            fmt = lambda x: "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"
            rows.append({"claim": v["claim"], "verdict": v["outcome"], "statistic": v["statistic"],
                         "estimate": fmt(v["estimate"]), "95% CI": f"[{fmt(v['low'])}, {fmt(v['high'])}]",
                         "p": fmt(v["p"]), "n": v["n"], "seeds": v["seeds"], "profile": v["profile"],
                         "dataset": v["dataset"], "statement": v["statement"], "section": SECTIONS.get(v["artifact"], "")})
    return pd.DataFrame(rows)


def table_with_claims(run, artifact_id: str, *, results: pd.DataFrame, samples: pd.DataFrame, row: str,
                      evaluations: list[str], label: str, rows: list[str] | None = None, where: dict | None = None,
                      reason: str | None = None):
    """A comparison table's page block: write the artifact (accuracy rows and per-sample flags),
    show the paper's table beside ours and decide its claims. With no rows (the table was not run
    in this profile) the paper's table is shown alone and every claim is "not run". ``where``
    keeps only the rows whose columns hold the given values; ``reason`` says why a table was not run."""
    from IPython.display import Markdown, display

    for column, value in (where or {}).items():   # one table of several evaluated together
        keep = value if isinstance(value, list) else [value]
        results = results[results[column].isin(keep)] if len(results) else results
        samples = samples[samples[column].isin(keep)] if len(samples) else samples
    if len(results):
        report.write_artifact(run, artifact_id, data=results, samples=samples)
    else:
        reason = reason or f"{artifact_id} is not among this run's tables"
        report.write_artifact(run, artifact_id, data={"status": "not run", "reason": reason, "profile": run.profile})
        display(Markdown(f"**{artifact_id}: not run in the `{run.profile}` profile: {reason}.** The paper's numbers "
                         "alone:"))
    evals = [e for e in evaluations if (len(results) and e in set(results.evaluation))
             or e in set(report.paper_table(artifact_id)["evaluation"])]
    display(report.paper_beside_ours(results, artifact_id, row=row, label=label, evaluations=evals, rows=rows))
    what_ran(results)
    return show(run, artifact_id)


PAGES = {"hol-ddb": "01_hol_ddb", "hol-toy": "02_hol_toy_paths", "hol-freq": "03_hol_frequency",
         "hol-trust": "04_hol_trust", "hol-kd": "05_hol_distillation", "vir-main": "06_vir_main",
         "vir-ablations": "07_vir_ablations", "vir-scale": "08_vir_scale", "lec-examples": "11_lec_examples",
         "lec-whitebox": "12_lec_whitebox", "lec-beyond": "13_lec_beyond", "lec-defenses": "14_lec_defenses",
         "lec-tradeoff": "15_lec_tradeoff", "rrm-speedup": "16_rrm_speedup", "rrm-transfer": "17_rrm_transfer",
         "rrm-lambda": "18_rrm_lambda", "rrm-capacity": "19_rrm_capacity", "agk-attacks": "20_agk_attacks",
         "agk-autoattack": "21_agk_autoattack", "agk-attention": "22_agk_attention", "agk-cat": "23_agk_cat",
         "agk-features": "24_agk_features"}


def decide_all(folder: Path) -> list[engine.Verdict]:
    """Every claim of ``claims.toml`` re-decided from the artifacts in ``folder`` by the engine
    alone; an artifact whose page has not run gives "not run" for its claims."""
    folder = Path(folder)
    out = []
    for artifact in dict.fromkeys(c["artifact"] for c in load_claims()):
        if (folder / f"{artifact}.manifest.json").exists() or (folder / f"{artifact}.provenance.json").exists():
            out += decide_artifact(folder, artifact)
        else:
            ctx = engine.Context(profile=folder.name, dataset="—", seeds=())
            out += [engine.not_run(c, ctx, "its page has not been executed in this profile")
                    for c in load_claims(artifact)]
    return out


def claims_page(folder: Path) -> str:
    """The claims page as Markdown: the count of each outcome, then one row per claim with its
    verdict, statistic, interval, p, n and seeds, statement and a link to its section."""
    verdicts = decide_all(folder)
    counts = pd.Series([v.outcome for v in verdicts]).value_counts().reindex(list(engine.OUTCOMES), fill_value=0)
    fmt = lambda x: "—" if x is None or not math.isfinite(x) else f"{x:.2f}"
    fmt_p = lambda p: "—" if p is None or not math.isfinite(p) else ("< 0.0001" if p < 1e-4 else f"{p:.2g}")
    cell = lambda text: str(text).replace("|", "\\|")
    lines = [f"Decided from the artifacts of the **{Path(folder).name} profile** in `{folder}`.", "",
             f"**{len(verdicts)} claims**: " + ", ".join(f"{n} {o}" for o, n in counts.items()) + ".", "",
             "| claim | verdict | statistic [CI] | p | n × seeds | the paper's claim |",
             "|---|---|---|---|---|---|"]
    for v in verdicts:
        page = PAGES.get(SECTIONS.get(v.artifact, ""), "")
        link = f"[{v.claim}]({page}.html)" if page else v.claim
        stat = (f"{v.statistic} {fmt(v.estimate)} [{fmt(v.low)}, {fmt(v.high)}]"
                if v.outcome != "not run" and math.isfinite(v.estimate) else v.why)
        lines.append(f"| {link} | **{v.outcome}** | {cell(stat)} | {fmt_p(v.p)} | {v.n} × {v.seeds} | "
                     f"{cell(v.statement)} |")
    return "\n".join(lines)


def what_ran(results: pd.DataFrame):
    """A line under a table saying what each evaluation column actually ran, where a profile
    reduces it (``autoattack`` -> "APGD-CE", ``mde`` -> "MD + MD-MT", ``pgd`` -> "PGD-20")."""
    from IPython.display import Markdown, display

    if not len(results) or "ran" not in results:
        return None
    ran = results.drop_duplicates("evaluation").set_index("evaluation")["ran"]
    text = "; ".join(f"`{e}` = {r}" for e, r in ran.items() if isinstance(r, str))
    display(Markdown(f"*What ran in this profile:* {text}."))
    return ran

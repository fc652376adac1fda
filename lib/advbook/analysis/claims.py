"""The claims engine: one place where a paper's claim meets the reproduced per-sample data.

A claim is data, written before any number is seen (``lib/advbook/book/claims.toml``): the paper's
statement, the artifact whose saved per-sample table it is decided on, a **rule** from
:data:`RULES`, and that rule's settings (which model is claimed to win, against which rivals, under
which evaluations; which fixed classes, windows or thresholds). Nothing in a rule is chosen on the
data it judges: windows are fixed quantile bins, classes are the paper's, winners are the paper's.

:func:`decide` applies the rule and returns a :class:`Verdict`: ``holds``, ``does not hold`` or
``inconclusive`` (with how many images would decide, where a rule can say), or ``not run`` with the
reason. Every verdict carries its statistic, interval, p-value, n, seeds, profile and dataset, and
its comparisons one by one. The rules' statistics are in :mod:`advbook.analysis.stats`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import numpy as np
import pandas as pd

from advbook.analysis import stats
from advbook.analysis.trust import kmeans_flags

__all__ = ["Verdict", "Context", "RULES", "VIEWS", "decide", "not_run", "ALPHA", "OUTCOMES"]

ALPHA = 0.05
MIN_WINDOW = 20   # samples a window needs before its spread can decide anything
OUTCOMES = ("holds", "does not hold", "inconclusive", "not run")


@dataclasses.dataclass(frozen=True)
class Context:
    """What a verdict line must say besides the statistic."""
    profile: str
    dataset: str
    seeds: tuple[int, ...]
    params: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Verdict:
    claim: str
    artifact: str
    statement: str
    outcome: str
    statistic: str
    estimate: float
    low: float
    high: float
    p: float
    n: int
    seeds: int
    profile: str
    dataset: str
    rule: str
    why: str = ""
    comparisons: list = dataclasses.field(default_factory=list)
    level: float = 0.95   # of the interval: simultaneous (Bonferroni) where a claim rests on several comparisons

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One Markdown line: outcome, statistic, interval, p, n, seeds, profile, dataset, why."""
        if self.outcome == "not run":
            return f"**not run** — {self.why}"
        num = lambda v: "—" if v is None or not math.isfinite(v) else f"{v:.2f}"
        p = "" if not math.isfinite(self.p) else (f", p = {self.p:.2g}" if self.p >= 1e-4 else ", p < 0.0001")
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        return (f"**{self.outcome}** — {self.statistic} {num(self.estimate)} "
                f"[{100 * self.level:.4g}% CI {num(self.low)}, {num(self.high)}]{p}; n = {self.n}, {seeds}, "
                f"{self.profile} profile, `{self.dataset}`. {self.why}").rstrip()


def not_run(claim: dict, ctx: Context, why: str) -> Verdict:
    return Verdict(claim["id"], claim["artifact"], claim["statement"], "not run", "", math.nan, math.nan, math.nan,
                   math.nan, 0, len(ctx.seeds), ctx.profile, ctx.dataset, claim["rule"], why)


def _verdict(claim: dict, ctx: Context, outcome: str, test: stats.Test, why: str, comparisons=(), *,
             level: float = 0.95) -> Verdict:
    return Verdict(claim["id"], claim["artifact"], claim["statement"], outcome, test.name, test.estimate, test.low,
                   test.high, test.p, test.n, len(ctx.seeds), ctx.profile, ctx.dataset, claim["rule"], why,
                   [dataclasses.asdict(c) | {"label": lbl} for lbl, c in comparisons], level)


# ---------------------------------------------------------------------------------------------
# Views: how a saved table becomes the long per-sample frame a rule reads
# ---------------------------------------------------------------------------------------------

_STUDENT = re.compile(r"^(?P<criterion>[a-z]+)_(?P<budget>\d+)_s(?P<seed>\d+)_tau(?P<tau>[0-9.e+-]+)$")


def _students_long(frame: pd.DataFrame) -> pd.DataFrame:
    """HOL-T3's ``correct`` table (one column per student) as rows criterion, budget, seed, tau, image, correct."""
    cols = [c for c in frame.columns if _STUDENT.match(c)]
    long = frame.melt(id_vars=["test_index"], value_vars=cols, var_name="student", value_name="correct")
    parts = long["student"].str.extract(_STUDENT)
    return pd.concat([long, parts], axis=1).astype({"budget": int, "seed": int, "tau": float})


def _flags_long(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-sample robustness flags (one boolean column per evaluation) as rows evaluation, robust."""
    flags = [c for c in frame.columns
             if frame[c].dtype == bool or (frame[c].dtype == object and len(frame[c].dropna())
                                           and frame[c].dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all())]
    ids = [c for c in frame.columns if c not in flags]
    long = frame.melt(id_vars=ids, value_vars=flags, var_name="evaluation", value_name="robust")
    return long.dropna(subset=["robust"]).astype({"robust": bool})


VIEWS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {"students_long": _students_long,
                                                            "flags_long": _flags_long}


def _table(claim: dict, tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    frame = tables.get(claim.get("table", "samples"))
    if frame is None:
        return None
    if "view" in claim:
        frame = VIEWS[claim["view"]](frame)
    for column, value in claim.get("where", {}).items():
        frame = frame[frame[column].isin(value if isinstance(value, list) else [value])]
    return frame


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------

def _wide(frame: pd.DataFrame, *, unit: str, value: str, pair_on: list[str]) -> pd.DataFrame:
    """One column of ``value`` per ``unit``, one row per image (``pair_on``); NaN where a unit has no
    flag for an image. The same image twice for one unit is an error, not a cross product."""
    keys = [*pair_on, unit]
    dup = frame.duplicated(keys)
    if dup.any():
        first = frame.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(f"several rows for one image and {unit} ({first}); add the column that tells them "
                         "apart to the claim's cells or where")
    return frame.set_index(keys)[value].unstack(unit).astype(float)


def _shared_flags(wide: pd.DataFrame, a, b) -> tuple[np.ndarray, np.ndarray]:
    """A's and B's flags on the images both were evaluated on (a missing flag drops the image: NaN is
    not "right"); empty when one of them has no column."""
    if a not in wide or b not in wide:
        return np.zeros(0, bool), np.zeros(0, bool)
    va, vb = wide[a].to_numpy(float), wide[b].to_numpy(float)
    ok = np.isfinite(va) & np.isfinite(vb)
    return va[ok] != 0, vb[ok] != 0


def _pair_test(wide: pd.DataFrame, a, b, *, level: float = 0.95) -> stats.Test:
    """A minus B on the images both were evaluated on."""
    return stats.mcnemar(*_shared_flags(wide, a, b), level=level)


def _rivals(claim: dict, frame: pd.DataFrame | None, focus) -> tuple[list, str]:
    """The claim's rivals of ``focus`` that were run, or why the claim cannot be judged."""
    if frame is None or not len(frame):
        return [], claim.get("empty", "not run in this profile")
    units = set(frame[claim["unit"]].unique())
    if focus not in units:
        return [], f"{focus} was not run in this profile"
    rivals = [r for r in (claim.get("rivals") or sorted(units)) if r != focus and r in units]
    return rivals, "" if rivals else "none of the rivals was run in this profile"


def _paired_flags(claim: dict, frame: pd.DataFrame, pairs: list[tuple]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """For every cell (the claim's ``cells`` columns) and every pair (A, B): a label and A's and B's
    flags (the claim's ``value``) on the images (``pair_on``) both were evaluated on."""
    unit, value = claim["unit"], claim.get("value", "robust")
    pair_on, cells = claim.get("pair_on", ["seed", "index"]), claim.get("cells", [])
    out = []
    for key, g in (frame.groupby(cells, sort=False) if cells else [((), frame)]):
        key = key if isinstance(key, tuple) else (key,)
        wide = _wide(g, unit=unit, value=value, pair_on=pair_on)
        out += [(", ".join([*(str(k) for k in key), f"{a} vs {b}"]), *_shared_flags(wide, a, b)) for a, b in pairs]
    return out


def simultaneous(m: int) -> float:
    """The confidence level of each of ``m`` intervals so that all hold together at 95 % (Bonferroni);
    it matches the Holm-adjusted p-values printed beside them."""
    return 1 - ALPHA / max(1, m)


def _paired(frame: pd.DataFrame, *, unit: str, a: str, b: str, value: str, pair_on: list[str]) -> stats.Test:
    return _pair_test(_wide(frame[frame[unit].isin([a, b])], unit=unit, value=value, pair_on=pair_on), a, b)


def _size_hint(tests: list[stats.Test], seeds: int, labels: list[str] | None = None) -> str:
    """How many images would decide the least decided comparison (largest p), if its gap is real.
    Each test is oriented so that a positive estimate is the claimed direction; pairs are pooled
    over ``seeds``, so the count is given per seed, as the run's size is."""
    open_ = [(i, t) for i, t in enumerate(tests) if t.n and math.isfinite(t.estimate)]
    if not open_:
        return ""
    i, worst = max(open_, key=lambda it: it[1].p if math.isfinite(it[1].p) else 1.0)
    what = f"the least decided comparison ({labels[i]})" if labels else "the comparison"
    m = re.match(r"(\d+) images only A gets right, (\d+) only B", worst.detail)
    if not m or worst.estimate == 0:
        return f"In {what} the two sides are level: no sample size would decide it."
    discordant = (int(m.group(1)) + int(m.group(2))) / worst.n
    need = stats.mcnemar_sample_size(difference=worst.estimate / 100, discordant=discordant,
                                     alpha=ALPHA / max(1, len(tests)))
    seeds = max(1, seeds)
    per = f" per seed ({seeds} seeds pooled)" if seeds > 1 else ""
    side = "for" if worst.estimate > 0 else "against"
    return (f"If the gap in {what} ({worst.estimate:+.1f} points) is real, about {math.ceil(need / seeds):,} "
            f"paired images{per} (now {worst.n // seeds:,}) would decide it, {side} the claim, at 80% power.")


def paired_best(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """``winner`` is more accurate than every rival (or, with ``loser``, every rival is more accurate
    than ``loser``) in every cell (e.g. evaluation), on the same images: exact McNemar per (cell,
    rival), seeds pooled, Holm over all of them. Holds when every adjusted p < alpha in the claimed
    direction; does not hold when any comparison is significant the other way; else inconclusive."""
    frame = _table(claim, tables)
    focus = claim.get("winner", claim.get("loser"))
    rivals, why_not = _rivals(claim, frame, focus)
    if why_not:
        return not_run(claim, ctx, why_not)
    pairs = [(focus, r) for r in rivals] if "winner" in claim else [(r, focus) for r in rivals]
    compared = _paired_flags(claim, frame, pairs)
    level = simultaneous(len(compared))
    labels = [label for label, _, _ in compared]
    tests = [stats.mcnemar(a, b, level=level) for _, a, b in compared]
    if not any(t.n for t in tests):
        return not_run(claim, ctx, "no image was evaluated by both sides")
    adjusted = stats.holm([t.p for t in tests])
    tests = [dataclasses.replace(t, p=p) for t, p in zip(tests, adjusted)]
    ahead = [t.estimate > 0 and t.p < ALPHA for t in tests]
    behind = [t.estimate < 0 and t.p < ALPHA for t in tests]
    closest = min(tests, key=lambda t: (t.estimate if math.isfinite(t.estimate) else math.inf))
    if all(ahead):
        outcome, why = "holds", f"significant in all {len(tests)} comparisons after Holm correction."
    elif any(behind):
        outcome = "does not hold"
        why = f"significant the other way in {sum(behind)} of {len(tests)} comparisons (Holm)."
    else:
        outcome = "inconclusive"
        why = (f"significant in the claimed direction in {sum(ahead)} of {len(tests)} comparisons, the other way "
               "in none. " + _size_hint(tests, len(ctx.seeds), labels))
    name = (f"smallest lead of {focus} (points)" if "winner" in claim
            else f"smallest lead over {focus} (points)")
    return _verdict(claim, ctx, outcome, dataclasses.replace(closest, name=name), why, list(zip(labels, tests)),
                    level=level)


def _positive(claim: dict, key: str, what: str) -> float:
    """The claim's setting ``key`` as a number above 0, or a one-line error naming the claim."""
    v = claim.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"claim {claim.get('id')!r}: {key} must be {what} above 0, got {v!r}")
    return float(v)


def noninferior(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """``winner`` is not worse than any rival by ``margin`` points or more, in every cell, on the
    same images (settings as :func:`paired_best`, plus ``margin``, in points, declared in the claim).

    For each (cell, rival): the paired difference winner minus rival with the Agresti-Min interval
    at the simultaneous (Bonferroni) level, and the one-sided z-test of H0: difference <= -margin,
    Holm-adjusted over the comparisons (:func:`advbook.analysis.stats.noninferiority`; the plain
    Wald interval of :func:`paired_best` would prove any margin on a handful of images two models
    both get right). Holds when every interval lies above -margin (then every adjusted p is below
    alpha too); does not hold when any lies below -margin; else inconclusive, with how many images
    would move the least decided interval (largest p) off -margin if its difference stays.

    The RRM paper's "comparable adversarial accuracy" (Ethos-lab/robust-representation-matching,
    README.md line 19) is such a claim: a point-estimate comparison cannot show "not worse", only a
    margin declared before the run can."""
    margin = _positive(claim, "margin", "a number of points")
    if "winner" not in claim:
        raise ValueError(f"claim {claim.get('id')!r}: noninferior needs a winner")
    frame = _table(claim, tables)
    winner = claim["winner"]
    rivals, why_not = _rivals(claim, frame, winner)
    if why_not:
        return not_run(claim, ctx, why_not)
    compared = _paired_flags(claim, frame, [(winner, r) for r in rivals])
    level = simultaneous(len(compared))
    labels = [label for label, _, _ in compared]
    tests = [stats.noninferiority(a, b, margin=margin, level=level) for _, a, b in compared]
    if not any(t.n for t in tests):
        return not_run(claim, ctx, "no image was evaluated by both sides")
    adjusted = stats.holm([t.p for t in tests])
    tests = [dataclasses.replace(t, p=p) for t, p in zip(tests, adjusted)]
    above = [t.low > -margin for t in tests]
    below = [t.high < -margin for t in tests]
    if all(above):
        outcome, why = "holds", (f"every interval lies above -{margin:g} points ({len(tests)} comparison"
                                 f"{'s' if len(tests) != 1 else ''}).")
    elif any(below):
        outcome = "does not hold"
        why = f"the interval lies below -{margin:g} points in {sum(below)} of {len(tests)} comparisons."
    else:
        outcome = "inconclusive"
        why = (f"the interval lies above -{margin:g} points in {sum(above)} of {len(tests)} comparisons, below it "
               "in none. " + _margin_hint(tests, [(a, b) for _, a, b in compared], labels, margin=margin,
                                          seeds=len(ctx.seeds)))
    closest = min(tests, key=lambda t: (t.estimate if math.isfinite(t.estimate) else math.inf))
    head = dataclasses.replace(closest, name=f"smallest difference of {winner} (points)")
    return _verdict(claim, ctx, outcome, head, f"Margin {margin:g} points, fixed in advance: {why}",
                    list(zip(labels, tests)), level=level)


def _margin_hint(tests: list[stats.Test], flags: list[tuple], labels: list[str], *, margin: float,
                 seeds: int) -> str:
    """How many images would decide the least decided comparison (largest p among those whose
    interval holds -margin), if its difference and spread stay; per seed, as :func:`_size_hint`."""
    open_ = [i for i, t in enumerate(tests) if t.n and t.low <= -margin <= t.high]
    if not open_:
        return ""
    i = max(open_, key=lambda j: tests[j].p if math.isfinite(tests[j].p) else 1.0)
    t, seeds = tests[i], max(1, seeds)
    need = stats.noninferiority_sample_size(*flags[i], margin=margin, alpha=ALPHA / len(tests))
    if need < 0:
        return f"In {labels[i]} the difference is exactly -{margin:g} points: no number of images would decide it."
    per = f" per seed ({seeds} seeds pooled)" if seeds > 1 else ""
    side, way = ("above", "for") if t.estimate > -margin else ("below", "against")
    return (f"If the difference in {labels[i]} ({t.estimate:+.1f} points) is real, about "
            f"{math.ceil(need / seeds):,} paired images{per} (now {t.n // seeds:,}) would put its interval {side} "
            f"-{margin:g}, {way} the claim, at 80% power (normal approximation).")


def paper_best(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """:func:`paired_best` with the paper's own best row under one evaluation as the winner; the
    winner is read from the paper's table (fixed before our numbers exist) by the loader."""
    return paired_best(claim, tables, ctx)


def within_model(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """Under one model, evaluation ``a`` leaves fewer images robust than evaluation ``b`` (paired
    on the same images). With ``control`` set, the attack must first show power: it must lower
    accuracy significantly below ``control`` (e.g. natural) on the same model, or the verdict is
    inconclusive, because a weak attack cannot reveal masking."""
    frame = _table(claim, tables)
    if frame is None or not len(frame):
        return not_run(claim, ctx, "not run in this profile")
    unit = claim.get("unit", "evaluation")
    pair_on = claim.get("pair_on", ["seed", "index"])
    value = claim.get("value", "robust")
    test = _paired(frame, unit=unit, a=claim["b"], b=claim["a"], value=value, pair_on=pair_on)
    comps = [(f"{claim['b']} minus {claim['a']}", test)]
    if "control" in claim:
        power = _paired(frame, unit=unit, a=claim["control"], b=claim["a"], value=value, pair_on=pair_on)
        comps.append((f"{claim['control']} minus {claim['a']} (power of {claim['a']})", power))
        if not (power.estimate > 0 and power.p < ALPHA):
            return _verdict(claim, ctx, "inconclusive", test,
                            f"{claim['a']} does not lower accuracy significantly below {claim['control']} "
                            f"({power.estimate:+.1f} points, p = {power.p:.2g}): too weak to reveal masking.", comps)
    if test.estimate > 0 and test.p < ALPHA:
        outcome = "holds"
    elif test.estimate < 0 and test.p < ALPHA:
        outcome = "does not hold"
    else:
        outcome = "inconclusive"
    return _verdict(claim, ctx, outcome, test, _size_hint([test], len(ctx.seeds))
                    if outcome == "inconclusive" else "", comps)


def correlation(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """Spearman's rho of ``x`` and ``y`` with a Fisher interval against a fixed ``threshold``:
    ``direction = "below"`` claims |rho| < threshold, ``"above"`` claims rho > threshold."""
    frame = _table(claim, tables)
    if frame is None or claim["x"] not in frame or claim["y"] not in frame:
        return not_run(claim, ctx, f"{claim['x']} or {claim['y']} was not measured in this run")
    t = stats.spearman(frame[claim["x"]], frame[claim["y"]])
    r0, direction = float(claim["threshold"]), claim["direction"]
    if not math.isfinite(t.estimate):
        return _verdict(claim, ctx, "inconclusive", t, f"too few distinct values for a correlation (n = {t.n}).")
    if direction == "below":
        inside, outside = (-r0 < t.low and t.high < r0), (t.low > r0 or t.high < -r0)
    elif direction == "above":
        inside, outside = t.low > r0, t.high < r0
    else:
        raise ValueError(f"direction must be one of: below, above; got {direction!r}")
    outcome = "holds" if inside else "does not hold" if outside else "inconclusive"
    why = f"threshold {r0:g} fixed in advance."
    if outcome == "inconclusive":
        edge = r0 if t.estimate >= 0 else -r0
        need = stats.spearman_sample_size(rho=t.estimate, threshold=edge)
        why += (f" About {need:,} samples would put the interval on one side of {edge:g} if rho stays at "
                f"{t.estimate:.2f}." if need > 0 else "")
    return _verdict(claim, ctx, outcome, t, why)


def window_spread(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """Samples at about the same ``x`` (the quantile bin that holds the median of ``x``, its width
    fixed by ``bins``) differ in ``y``: the relative spread (q90 - q10) / median of ``y`` inside that
    window, with a bootstrap interval, against a fixed ``threshold``."""
    frame = _table(claim, tables)
    if frame is None or claim["x"] not in frame or claim["y"] not in frame:
        return not_run(claim, ctx, f"{claim['x']} or {claim['y']} was not measured in this run")
    x, y = frame[claim["x"]].to_numpy(float), frame[claim["y"]].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    bins = int(ctx.params.get(claim["bins_param"], claim.get("bins", 10)) if "bins_param" in claim
               else claim.get("bins", 10))
    lo, hi = np.quantile(x, [0.5 - 0.5 / bins, 0.5 + 0.5 / bins]) if len(x) else (math.nan, math.nan)
    inside = y[(x >= lo) & (x <= hi)]

    def spread(v, axis=-1):
        q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9], axis=axis)
        return (q90 - q10) / np.maximum(q50, 1e-12)
    spread.__name__ = "relative spread of steps (q90 - q10) / median"
    if len(inside) < MIN_WINDOW:
        need = int(math.ceil(MIN_WINDOW * len(frame) / max(len(inside), 1)))
        return _verdict(claim, ctx, "inconclusive", stats.Test(spread.__name__, math.nan, math.nan, math.nan,
                                                                math.nan, len(inside)),
                        f"only {len(inside)} samples in the central window {lo:.3g}–{hi:.3g}; {MIN_WINDOW} are "
                        f"needed, about {need:,} attacked samples instead of {len(frame):,}.")
    t = stats.bootstrap_mean(inside, statistic=spread)
    r0 = float(claim["threshold"])
    outcome = "holds" if t.low > r0 else "does not hold" if t.high < r0 else "inconclusive"
    return _verdict(claim, ctx, outcome, t, f"{len(inside)} samples with {claim['x']} in the central "
                    f"1/{bins} quantile window {lo:.3g}–{hi:.3g}; threshold {r0:g} fixed in advance.")


def ratio_above(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """The median of ``numerator / denominator`` (the denominator times a run parameter, e.g. the
    step count a straight path would need) exceeds a fixed ``threshold`` (bootstrap interval)."""
    frame = _table(claim, tables)
    if frame is None or not len(frame):
        return not_run(claim, ctx, "not run in this profile")
    scale = float(ctx.params.get(claim.get("denominator_param", ""), 1.0)) if "denominator_param" in claim else 1.0
    ratio = frame[claim["numerator"]].to_numpy(float) * scale / frame[claim["denominator"]].to_numpy(float)
    t = stats.bootstrap_mean(ratio)
    t = dataclasses.replace(t, name=f"median {claim['numerator']} / straight-line {claim['denominator']}")
    r0 = float(claim["threshold"])
    outcome = "holds" if t.low > r0 else "does not hold" if t.high < r0 else "inconclusive"
    return _verdict(claim, ctx, outcome, t, f"threshold {r0:g} fixed in advance.")


def median_threshold(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """The median of ``value`` over the rows the claim keeps (one per image) lies above
    (``direction = "above"``, the default) or below (``"below"``) a fixed ``threshold``: the
    distribution-free order-statistic interval of the median and the sign test
    (:func:`advbook.analysis.stats.median_test`; non-finite values are dropped). Holds when the
    interval lies wholly on the claimed side, does not hold when it lies wholly on the other side,
    else inconclusive (also when there are too few values for any 95 % interval: fewer than 6).
    ``label`` names the value in the verdict line."""
    frame = _table(claim, tables)
    if frame is None or claim["value"] not in frame:
        return not_run(claim, ctx, f"{claim['value']} was not measured in this run")
    if not len(frame):
        return not_run(claim, ctx, claim.get("empty", "no row of this run meets the claim's conditions"))
    direction = claim.get("direction", "above")
    if direction not in ("above", "below"):
        raise ValueError(f"claim {claim.get('id')!r}: direction must be one of: above, below; got {direction!r}")
    r0 = float(claim["threshold"])
    t = stats.median_test(frame[claim["value"]].to_numpy(float), threshold=r0)
    t = dataclasses.replace(t, name=f"median {claim.get('label', claim['value'])}")
    if not (math.isfinite(t.low) and math.isfinite(t.high)):
        return _verdict(claim, ctx, "inconclusive", t, f"too few values for a 95% interval of the median "
                        f"(n = {t.n}; at least 6 are needed).")
    above, below = t.low > r0, t.high < r0
    claimed, other = (above, below) if direction == "above" else (below, above)
    outcome = "holds" if claimed else "does not hold" if other else "inconclusive"
    return _verdict(claim, ctx, outcome, t, f"threshold {r0:g} ({direction}) fixed in advance; {t.detail}.")


def _methods(claim: dict, key: str, *, required: bool = True) -> list[str]:
    """The claim's ``key`` as a list of method names (one name or a list of them)."""
    v = claim.get(key, None if required else [])
    names = [v] if isinstance(v, str) else v
    if not isinstance(names, list) or not all(isinstance(m, str) for m in names) or (required and not names):
        raise ValueError(f"claim {claim.get('id')!r}: {key} must be a method name or a list of them, got {v!r}")
    return names


def _time_region(claim: dict) -> tuple[float, float, str]:
    """The region the ratio is claimed to lie in, as (low, high, words): ``below = b`` is (-inf, b),
    ``above = a`` is (a, inf), ``between = [lo, hi]`` is (lo, hi)."""
    given = [k for k in ("below", "above", "between") if k in claim]
    if len(given) != 1:
        raise ValueError(f"claim {claim.get('id')!r}: time_ratio needs exactly one of below, above, between; "
                         f"got {', '.join(given) or 'neither'}")
    if given == ["below"]:
        b = _positive(claim, "below", "a ratio")
        return -math.inf, b, f"below {b:g}"
    if given == ["above"]:
        a = _positive(claim, "above", "a ratio")
        return a, math.inf, f"above {a:g}"
    v = claim["between"]
    ok = (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                      and math.isfinite(x) for x in v) and 0 <= v[0] < v[1])
    if not ok:
        raise ValueError(f"claim {claim.get('id')!r}: between must be [low, high] with 0 <= low < high, got {v!r}")
    return float(v[0]), float(v[1]), f"between {v[0]:g} and {v[1]:g}"


def time_ratio(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """A method's time relative to another's: median(``numerator``) / median(``denominator``) lies
    ``below`` or ``above`` a fixed ratio, or ``between`` [low, high], for each denominator (a method or
    a list).

    The table (default ``"timings"``) has columns ``method``, ``repeat`` and ``value`` (default
    ``"seconds_per_run"``). ``add`` lists methods whose times are added to the numerator repeat by
    repeat (e.g. the student's time plus its teacher's; only repeats every one of them has count).
    Interval: :func:`advbook.analysis.stats.ratio_of_medians`, a percentile bootstrap
    (``n_resamples``, seeded by ``seed``) at the simultaneous level over the denominators. With
    ``paired`` (the default) the two sides are resampled round by round (``repeat``), as the book's
    timing interleaves every method within a round, so a round slowed by another job on the machine
    slows both sides; ``paired = false`` resamples them independently (timings from separate runs). The decision is by the interval alone, so the verdict carries no
    p-value (NaN, left out of the verdict line). Holds when every interval lies inside the claimed
    region; does not hold when any lies wholly outside it; else inconclusive, with a rough count of
    repeats that would decide. Fewer than 2 repeats of a side leave its ratio without an interval.

    The RRM reference reports a mean epoch time with +/- 1.962 standard errors
    (Ethos-lab/robust-representation-matching, l_2/test.py lines 70-91, ``compute_time_stats``) and
    its speed-ups as ratios ("~1.8x faster", README.md line 14), the teacher's training added where
    it must be trained first (README.md line 25); here medians (a slow outlier moves a mean, never a
    median) and an interval of the ratio itself, not of each time alone."""
    low_edge, high_edge, region = _time_region(claim)
    numerator = _methods(claim, "numerator") + _methods(claim, "add", required=False)
    denominators = _methods(claim, "denominator")
    n_resamples, seed = claim.get("n_resamples", 2000), claim.get("seed", 0)
    for key, v, least in (("n_resamples", n_resamples, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"claim {claim.get('id')!r}: {key} must be an integer of at least {least}, got {v!r}")
    frame = _table(claim | {"table": claim.get("table", "timings")}, tables)
    value = claim.get("value", "seconds_per_run")
    if frame is None or not len(frame):
        return not_run(claim, ctx, claim.get("empty", "not timed in this profile"))
    if value not in frame:
        return not_run(claim, ctx, f"{value} was not measured in this run")
    missing = [m for m in dict.fromkeys(numerator + denominators) if m not in set(frame["method"])]
    if missing:
        return not_run(claim, ctx, f"{', '.join(missing)} {'was' if len(missing) == 1 else 'were'} not timed "
                       "in this run")
    dup = frame.duplicated(["method", "repeat"])
    if dup.any():
        first = frame.loc[dup, ["method", "repeat"]].iloc[0].to_dict()
        raise ValueError(f"several rows for one repeat of a method ({first}); add the column that tells them "
                         "apart to the claim's where")
    times = frame.set_index(["method", "repeat"])[value].astype(float)
    top = pd.concat([times.xs(m) for m in numerator], axis=1, join="inner").sum(axis=1, skipna=False)
    level = simultaneous(len(denominators))
    labels = [f"{' + '.join(numerator)} / {d}" for d in denominators]
    paired = claim.get("paired", True)
    if not isinstance(paired, bool):
        raise ValueError(f"claim {claim.get('id')!r}: paired must be true or false, got {paired!r}")

    def sides(d):
        if not paired:
            return top, times.xs(d)
        both = pd.concat([top, times.xs(d)], axis=1, join="inner")
        return both.iloc[:, 0], both.iloc[:, 1]

    tests = [dataclasses.replace(stats.ratio_of_medians(*sides(d), level=level, n_resamples=n_resamples, seed=seed,
                                                        paired=paired), name=f"ratio of median {value} ({label})")
             for d, label in zip(denominators, labels)]
    inside = [low_edge < t.low and t.high < high_edge for t in tests]
    outside = [t.high < low_edge or t.low > high_edge for t in tests]
    counts = {" + ".join(numerator): int(np.isfinite(top).sum())} | {d: int(np.isfinite(times.xs(d)).sum())
                                                                     for d in denominators}
    short = [f"{m} ({k})" for m, k in counts.items() if k < 2]
    why = (f"Ratio claimed {region}, fixed in advance; decided by the percentile-bootstrap interval of each "
           + ("ratio (the timing rounds resampled together: every method was timed in each round), no p-value."
              if paired else "ratio (each method's repeats resampled on their own), no p-value."))
    if short:
        why += f" Fewer than 2 repeats of {', '.join(short)}: no interval."
    if all(inside):
        outcome = "holds"
    elif any(outside):
        outcome = "does not hold"
    else:
        outcome = "inconclusive"
        why += " " + _repeats_hint(tests, labels, low_edge, high_edge)
    worst = max(range(len(tests)), key=lambda i: (outside[i], not math.isfinite(tests[i].low),
                                                  max(low_edge - tests[i].low, tests[i].high - high_edge)
                                                  if math.isfinite(tests[i].low) else 0.0))
    head = tests[worst]
    if len(tests) > 1:
        head = dataclasses.replace(head, name=f"ratio of median {value}, least favourable of {len(tests)} "
                                   f"({labels[worst]})")
    return _verdict(claim, ctx, outcome, head, why.rstrip(), list(zip(labels, tests)), level=level)


def _repeats_hint(tests: list[stats.Test], labels: list[str], low_edge: float, high_edge: float) -> str:
    """Roughly how many repeats of each method would decide the least decided ratio: an interval's
    width shrinks as 1/sqrt(repeats), so it is scaled until the side that straddles an edge clears
    it, the estimate held fixed (a percentile interval of medians is no exact normal one: approximate)."""
    needs = []
    for i, t in enumerate(tests):
        r = t.estimate
        if not (math.isfinite(t.low) and math.isfinite(t.high) and math.isfinite(r)) or r in (low_edge, high_edge):
            continue
        if low_edge < r < high_edge:
            scale = max((t.high - r) / (high_edge - r), (r - t.low) / (r - low_edge)), "for"
        elif r >= high_edge:
            scale = (r - t.low) / (r - high_edge), "against"
        else:
            scale = (t.high - r) / (low_edge - r), "against"
        if scale[0] >= 1:    # undecided: the interval still crosses the edge
            needs.append((math.ceil(t.n * scale[0] ** 2), i, scale[1]))
    if not needs:
        return ""
    need, i, way = max(needs)
    return (f"About {need:,} repeats of each method (now {tests[i].n}) would decide {labels[i]}, {way} the claim, "
            "if the spread stays (approximate: the interval's width scaled by 1/sqrt(repeats)).")


def group_difference(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """Mean of ``value`` in group ``a`` exceeds that in group ``b`` (groups of different images,
    fixed in the claim, e.g. the paper's classes): bootstrap interval, Mann-Whitney p. With
    ``unless_default`` set: inconclusive when a or b is the model's most frequent answer in the
    ``unless_default`` column (its curve is then inflated by default answers)."""
    frame = _table(claim, tables)
    if frame is None or claim["value"] not in frame:
        return not_run(claim, ctx, f"{claim['value']} was not measured in this run")
    values = frame[claim["value"]].astype(float)
    if claim.get("invert"):
        values = 1.0 - values
    scale = float(claim.get("scale", 1.0))
    group = frame[claim["group"]]
    a, b = claim["a"], claim["b"]
    t = stats.group_difference(scale * values[group == a], scale * values[group == b])
    t = dataclasses.replace(t, name=f"{claim.get('label', claim['value'])}: {a} minus {b}")
    answers = frame[claim["unless_default"]].dropna() if claim.get("unless_default") in frame else None
    if "unless_default" in claim and answers is None:
        return not_run(claim, ctx, f"{claim['unless_default']} was not measured in this run")
    if answers is not None and len(answers):
        default = answers.mode().iloc[0]
        if default in (a, b):
            return _verdict(claim, ctx, "inconclusive", t, f"{default} is the model's default answer on nearly "
                            "empty inputs, which inflates its curve (rule fixed in advance).")
    outcome = ("holds" if t.low > 0 and t.p < ALPHA else "does not hold" if t.high < 0 and t.p < ALPHA
               else "inconclusive")
    return _verdict(claim, ctx, outcome, t, "")


def _precision_gap(w, r, y):
    """Flagging accuracy (share of flagged that are wrong, in points) of flags ``w`` minus that of
    ``r``, row by row (one row per bootstrap resample); NaN where a side flags nothing."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * ((w & y).sum(-1) / w.sum(-1) - (r & y).sum(-1) / r.sum(-1))


def flag_precision_best(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """The trust score's flags are more precise (share of flagged predictions that are wrong, HOL
    Eq. 4) than each rival score's, in every cell: K-means fitted on the calibration rows as on the
    page, flags on the other rows, a paired bootstrap over those images per (cell, rival), Holm."""
    frame = _table(claim, tables)
    if frame is None or not len(frame):
        return not_run(claim, ctx, claim.get("empty", "not run in this profile"))
    cells, attacks = claim.get("cells", ["model"]), claim.get("attacks", ["pgd", "deepfool"])
    labels, inputs = [], []
    for key, g in frame.groupby(cells, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        cal, ev = g["calibration"].to_numpy(bool), ~g["calibration"].to_numpy(bool)
        wrong = g["wrong"].to_numpy(bool)[ev]
        for attack in attacks:
            if f"T_{attack}" not in g:
                continue
            flags = {}
            for score in (f"T_{attack}", *(r.format(attack=attack) for r in claim["rivals"])):
                s = g[score].to_numpy(float)
                flags[score] = kmeans_flags(s[ev], reference=s[cal], seed=int(ctx.params.get("seed", 0)))
            win = flags.pop(f"T_{attack}")
            for rival, f in flags.items():
                inputs.append((win, f, wrong))
                labels.append(", ".join([*(str(k) for k in key), attack, f"T vs {rival}"]))
    level = simultaneous(len(inputs))
    tests = [dataclasses.replace(stats.paired_bootstrap(_precision_gap, *cols, vectorized=True, level=level),
                                 name="flagging-accuracy difference (points)") for cols in inputs]
    if not tests:
        return not_run(claim, ctx, "no trust score was computed in this run")
    adjusted = stats.holm([t.p for t in tests])
    tests = [dataclasses.replace(t, p=p) for t, p in zip(tests, adjusted)]
    minimum = claim.get("at_least", False)
    if minimum:   # "at least as accurate": fails only where T is significantly worse
        behind = [t.high < 0 and t.p < ALPHA for t in tests]
        ok = [t.low > -float(claim.get("margin", 0.0)) for t in tests]
        outcome = "does not hold" if any(behind) else "holds" if all(ok) else "inconclusive"
    else:
        ahead = [t.low > 0 and t.p < ALPHA for t in tests]
        behind = [t.high < 0 and t.p < ALPHA for t in tests]
        outcome = "holds" if all(ahead) else "does not hold" if any(behind) else "inconclusive"
    finite = [t for t in tests if math.isfinite(t.estimate)]
    head = min(finite, key=lambda t: t.estimate) if finite else tests[0]
    head = dataclasses.replace(head, name="smallest advantage of T (points)")
    why = (f"{sum(t.estimate > 0 for t in finite)} of {len(tests)} comparisons favour T; "
           f"{sum(t.p < ALPHA for t in tests)} are significant after Holm.")
    return _verdict(claim, ctx, outcome, head, why, list(zip(labels, tests)), level=level)


GAPS = ("standard", "robust")   # gap_trend's gaps: Raghunathan et al. 2019 Fig. 1, and the lecture's wording
_EPS_RTOL = 1e-3   # a claim's eps matches a run's when this close: 4 digits of 1/255 suffice, grids differ by far more


def _gap_flags(frame: pd.DataFrame, *, n, eps: float, gap: str, pair_on: list[str]) -> pd.DataFrame | None:
    """The two per-image flag columns whose accuracy difference ``ref - cmp`` is the gap at size ``n``:
    the standard model's clean flags and the AT model's clean flags (``gap = "standard"``), or the AT
    model's clean flags and its flags under PGD at its own eps (``"robust"``). None if one is missing."""
    def vector(train_eps, evaluation, eval_eps):
        rows = frame[(frame["n"] == n) & (frame["evaluation"] == evaluation)
                     & np.isclose(frame["train_eps"], train_eps, rtol=_EPS_RTOL, atol=0)
                     & np.isclose(frame["eval_eps"], eval_eps, rtol=_EPS_RTOL, atol=0)]
        if rows.duplicated(pair_on).any():
            raise ValueError(f"several rows for one image at n={n}, train_eps={train_eps:g}, {evaluation} "
                             f"eps={eval_eps:g}; add the column that tells them apart to the claim's where or pair_on")
        return rows.set_index(pair_on)["correct"].astype(bool)
    ref, cmp = ((vector(0.0, "natural", 0.0), vector(eps, "natural", 0.0)) if gap == "standard"
                else (vector(eps, "natural", 0.0), vector(eps, "pgd", eps)))
    if not len(ref) or not len(cmp):
        return None
    return pd.concat({"ref": ref, "cmp": cmp}, axis=1, join="inner")


def _shrink(r_s, c_s, r_l, c_l):
    """Gap at the small size minus gap at the large one, in points, row by row (a gap is the accuracy
    of ``ref`` minus that of ``cmp``, i.e. the error of ``cmp`` minus that of ``ref``)."""
    return 100 * ((r_s - c_s) - (r_l - c_l)).mean(-1)


def gap_trend(claim: dict, tables: dict, ctx: Context) -> Verdict:
    """The gap shrinks with the training set: gap(``small``) - gap(``large``) > 0 for every eps.

    The gap (``gap = "standard"``, the default) is the clean error of the PGD-trained model minus that
    of the standard model trained on the same images, Raghunathan et al. (2019), Fig. 1; with
    ``gap = "robust"`` it is the AT model's error under PGD at its own eps minus its clean error, the
    lecture's wording. The table is LEC-T1's long flags frame (columns n, train_eps, eval_eps,
    evaluation, index, correct, optionally seed; :func:`advbook.evaluation.tradeoff.tradeoff_flags`).

    A difference in differences on the same test images: the four flag vectors (two models at each
    size) are resampled together, image by image, in a paired percentile bootstrap (``n_resamples``,
    seeded by ``seed``). Settings: ``small`` and ``large`` (sizes; default the smallest and largest
    in the table), ``eps`` (one training eps, a list, or ``"all"``, the default), ``gap``. With
    several eps the intervals are simultaneous (Bonferroni) and the p-values Holm-adjusted. Holds when
    every interval lies above 0; does not hold when any lies below 0; else inconclusive, with the
    number of images that would decide the least decided eps. The interval is over test images
    for the models trained: training seeds vary the gap too, which only several seeds can show."""
    frame = _table(claim, tables)
    gap = claim.get("gap", "standard")
    if gap not in GAPS:
        raise ValueError(f"claim {claim.get('id')!r}: unknown gap {gap!r}; valid: {', '.join(GAPS)}")
    if frame is None or not len(frame):
        return not_run(claim, ctx, claim.get("empty", "not run in this profile"))
    sizes = sorted(frame["n"].unique())
    small, large = claim.get("small", sizes[0]), claim.get("large", sizes[-1])
    if not small < large:
        raise ValueError(f"claim {claim.get('id')!r}: small must be below large, got {small} and {large}")
    missing = [s for s in (small, large) if s not in sizes]
    if missing:
        return not_run(claim, ctx, f"training-set size {', '.join(map(str, missing))} was not run in this profile "
                       f"(run: {', '.join(map(str, sizes))})")
    trained = sorted(frame.loc[frame["train_eps"] > 0, "train_eps"].unique())
    wanted = trained if claim.get("eps", "all") == "all" else [float(e) for e in np.atleast_1d(claim["eps"])]
    absent = [e for e in wanted if not any(math.isclose(e, t, rel_tol=_EPS_RTOL) for t in trained)]
    if not wanted or absent:
        return not_run(claim, ctx, f"no model was trained at eps {', '.join(f'{e:g}' for e in absent) or 'above 0'} "
                       "in this profile")
    pair_on = claim.get("pair_on", ["seed", "index"] if "seed" in frame else ["index"])
    level = simultaneous(len(wanted))
    labels, tests, shrinks, notes = [], [], [], []
    for eps in wanted:
        at_small = _gap_flags(frame, n=small, eps=eps, gap=gap, pair_on=pair_on)
        at_large = _gap_flags(frame, n=large, eps=eps, gap=gap, pair_on=pair_on)
        if at_small is None or at_large is None:
            return not_run(claim, ctx, f"the flags of the {gap} gap at eps {eps:g} are missing for n = {small} "
                           f"or {large}")
        both = pd.concat({"s": at_small, "l": at_large}, axis=1, join="inner")
        cols = [both[k].to_numpy(np.int8) for k in (("s", "ref"), ("s", "cmp"), ("l", "ref"), ("l", "cmp"))]
        g_small = 100 * float(np.mean(cols[0] - cols[1])) if len(both) else math.nan
        g_large = 100 * float(np.mean(cols[2] - cols[3])) if len(both) else math.nan
        t = stats.paired_bootstrap(_shrink, *cols, vectorized=True, level=level, seed=int(claim.get("seed", 0)),
                                   n_resamples=int(claim.get("n_resamples", 2000)))
        note = f"gap {g_small:+.1f} at n = {small}, {g_large:+.1f} at n = {large} (points)"
        tests.append(dataclasses.replace(t, name=f"gap shrink, n = {small} minus n = {large} (points)", detail=note))
        shrinks.append((cols[0] - cols[1]) - (cols[2] - cols[3]))
        labels.append(f"eps {eps * 255:.3g}/255, {gap} gap")
        notes.append(f"eps {eps * 255:.3g}/255: {note}")
    if not any(t.n for t in tests):
        return not_run(claim, ctx, "no test image was evaluated by all four models")
    adjusted = stats.holm([t.p for t in tests])
    tests = [dataclasses.replace(t, p=p) for t, p in zip(tests, adjusted)]
    ahead = [t.low > 0 and t.p < ALPHA for t in tests]
    behind = [t.high < 0 and t.p < ALPHA for t in tests]
    if all(ahead):
        outcome, why = "holds", f"the gap shrinks significantly at every eps ({len(tests)}, Holm)."
    elif any(behind):
        outcome, why = "does not hold", f"the gap grows significantly at {sum(behind)} of {len(tests)} eps (Holm)."
    else:
        outcome = "inconclusive"
        why = (f"significant shrinking at {sum(ahead)} of {len(tests)} eps, growth at none. "
               + _shrink_hint(tests, shrinks, labels, seeds=len(ctx.seeds)))
    finite = [i for i, t in enumerate(tests) if math.isfinite(t.estimate)]
    head = min(finite, key=lambda i: tests[i].estimate) if finite else 0
    name = (tests[head].name if len(tests) == 1
            else f"smallest gap shrink over eps, n = {small} minus n = {large} (points)")
    return _verdict(claim, ctx, outcome, dataclasses.replace(tests[head], name=name),
                    f"{'; '.join(notes)}. {why}", list(zip(labels, tests)), level=level)


def _shrink_hint(tests: list[stats.Test], shrinks: list[np.ndarray], labels: list[str], *, seeds: int) -> str:
    """How many test images would decide the least decided eps (largest p), if its shrink is real:
    the normal-approximation size for the mean of the per-image differences in differences."""
    open_ = [i for i, t in enumerate(tests) if t.n > 1 and math.isfinite(t.estimate)]
    if not open_:
        return ""
    i = max(open_, key=lambda j: tests[j].p if math.isfinite(tests[j].p) else 1.0)
    t, seeds = tests[i], max(1, seeds)
    need = stats.mean_sample_size(difference=t.estimate, sd=100 * float(np.std(shrinks[i], ddof=1)),
                                  alpha=ALPHA / len(tests))
    if need < 0:
        return f"At {labels[i]} the two gaps are level: no number of images would decide it."
    per = f" per seed ({seeds} seeds pooled)" if seeds > 1 else ""
    side = "for" if t.estimate > 0 else "against"
    return (f"If the shrink at {labels[i]} ({t.estimate:+.1f} points) is real, about {math.ceil(need / seeds):,} "
            f"test images{per} (now {t.n // seeds:,}) would decide it, {side} the claim, at 80% power.")


RULES: dict[str, Callable[[dict, dict, Context], Verdict]] = {
    "paired_best": paired_best, "paper_best": paper_best, "within_model": within_model,
    "correlation": correlation, "window_spread": window_spread, "ratio_above": ratio_above,
    "group_difference": group_difference, "flag_precision_best": flag_precision_best,
    "gap_trend": gap_trend, "median_threshold": median_threshold, "noninferior": noninferior,
    "time_ratio": time_ratio,
}


def decide(claim: dict, tables: dict[str, pd.DataFrame], ctx: Context) -> Verdict:
    """Apply the claim's rule to the artifact's saved tables."""
    if claim.get("rule") not in RULES:
        raise ValueError(f"claim {claim.get('id')!r}: unknown rule {claim.get('rule')!r}; valid: {', '.join(RULES)}")
    if claim.get("not_run"):
        return not_run(claim, ctx, claim["not_run"])
    return RULES[claim["rule"]](claim, tables, ctx)

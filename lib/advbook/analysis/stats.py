"""The statistics behind every verdict, from scipy and statsmodels where they have it.

Every function returns plain numbers (statistic, interval, p-value, n) so that the claims engine
(:mod:`advbook.analysis.claims`) can state them beside its outcome. The rules:

* two models on the **same images**: exact McNemar test on the discordant pairs (a binomial test of
  how often A is right where B is wrong against the reverse), the paired accuracy difference with a
  Wald interval on the per-image differences; seeds pool their pairs (each seed's images are
  paired within that seed);
* a statistic of several paired per-image columns that is not a mean of per-image flags (such as
  a flagging precision): a paired percentile bootstrap over images, deterministic for its seed;
* a rank correlation: Spearman's rho with a Fisher-z interval (variance (1 + rho^2/2)/(n-3),
  Bonett and Wright 2000; the older 1.06/(n-3) of Fieller, Hartley and Pearson 1957 covers only
  about 92-93% at rho = 0.8-0.9);
* two groups of **different** images (classes): Mann-Whitney U and a bootstrap interval of the
  difference of means;
* one model **not worse** than another by more than a margin, on the same images: the Agresti-Min
  adjusted Wald interval of the paired difference and a one-sided z-test shifted by the margin;
* a ratio of median timings of two methods timed separately: a percentile bootstrap, each method's
  repeats resampled on their own;
* several comparisons behind one claim: Holm's step-down correction.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as _st

__all__ = ["Test", "mcnemar", "paired_bootstrap", "spearman", "group_difference", "holm",
           "mcnemar_sample_size", "spearman_sample_size", "bootstrap_mean", "mean_sample_size", "median_test",
           "noninferiority", "noninferiority_sample_size", "ratio_of_medians"]


@dataclasses.dataclass(frozen=True)
class Test:
    """One comparison: the statistic, its interval, the p-value (NaN where a rule uses the interval
    only) and the number of units it rests on."""
    name: str
    estimate: float
    low: float
    high: float
    p: float
    n: int
    detail: str = ""

    def interval(self, digits: int = 2) -> str:
        return f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _z(level: float) -> float:
    return float(_st.norm.ppf(0.5 + level / 2))


def mcnemar(a, b, *, level: float = 0.95) -> Test:
    """A's accuracy minus B's on the same images, in points; ``a`` and ``b`` are per-image booleans
    (right = True) in the same order. p: exact two-sided McNemar (binomial test on discordant pairs)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"mcnemar needs two flag vectors of one length, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return Test("accuracy difference (points)", math.nan, math.nan, math.nan, math.nan, 0)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    d = a.astype(float) - b.astype(float)
    est = 100 * d.mean()
    se = 100 * d.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    half = _z(level) * se
    # exact two-sided binomial test of the discordant pairs against 1/2 (the null is symmetric,
    # so twice the smaller tail; the same number as scipy's binomtest and statsmodels' mcnemar)
    p = min(1.0, 2.0 * float(_st.binom.cdf(min(only_a, only_b), only_a + only_b, 0.5))) if only_a + only_b else 1.0
    return Test("accuracy difference (points)", est, est - half, est + half, p, n,
                detail=f"{only_a} images only A gets right, {only_b} only B")


def _discordant(a, b) -> tuple[int, int, int]:
    """Images only A gets right, images only B gets right, and all images, of two flag vectors."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired flags need two vectors of one length, got {a.shape} and {b.shape}")
    return int((a & ~b).sum()), int((~a & b).sum()), len(a)


def _agresti_min(only_a: int, only_b: int, n: int) -> tuple[float, float]:
    """The paired difference (a share) and its per-image standard deviation after adding 1/2 to each
    cell of the 2x2 table (n + 2 images): Agresti and Min (2005), *Statistics in Medicine* 24:729,
    the "Wald+2" interval, as in Agresti's R ``diffpropci`` (users.stat.ufl.edu/~aa/cda/R/matched).
    The variance ((b + c + 1) - (b - c)^2 / (n + 2)) / (n + 2) is never 0, unlike the plain Wald's."""
    m = n + 2
    return (only_a - only_b) / m, math.sqrt(((only_a + only_b + 1) - (only_a - only_b) ** 2 / m) / m)


def noninferiority(a, b, *, margin: float, level: float = 0.95) -> Test:
    """A's accuracy minus B's on the same images, in points, tested against "A is worse by
    ``margin`` points or more" (``a``, ``b``: per-image flags, right = True, in the same order).

    Interval: the Agresti-Min adjusted Wald interval of the paired difference (:func:`_agresti_min`),
    clipped to [-100, 100]. The plain Wald interval of :func:`mcnemar` has width 0 when no image is
    discordant, so 10 images that two models both get right would "prove" any margin; the adjusted
    one keeps a half-width of z * 100 / (n + 2) points there (16 at 10 images and 95 %) and matches
    the Wald interval at thousands of images (statsmodels has no interval for paired proportions).
    The estimate is the plain difference. p: one-sided z-test of H0: difference <= -margin,
    z = (adjusted difference + margin) / standard error, the standard error of the interval, so the
    interval's low end lies above -margin exactly when p < (1 - level) / 2."""
    only_a, only_b, n = _discordant(a, b)
    if n == 0:
        return Test("accuracy difference (points)", math.nan, math.nan, math.nan, math.nan, 0)
    centre, sd = _agresti_min(only_a, only_b, n)
    se = sd / math.sqrt(n + 2)
    half = _z(level) * se
    p = float(_st.norm.sf((centre + margin / 100) / se))
    return Test("accuracy difference (points)", 100 * (only_a - only_b) / n, 100 * max(-1.0, centre - half),
                100 * min(1.0, centre + half), p, n, detail=f"{only_a} images only A gets right, {only_b} only B")


def noninferiority_sample_size(a, b, *, margin: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Images needed for the interval of :func:`noninferiority` (at level 1 - ``alpha``) to exclude
    -``margin`` with probability ``power`` if the observed difference and its per-image spread stay
    (normal approximation, :func:`mean_sample_size` with the Agresti-Min spread); -1 when the
    difference is exactly -margin."""
    only_a, only_b, n = _discordant(a, b)
    if n == 0:
        return -1
    _, sd = _agresti_min(only_a, only_b, n)
    return mean_sample_size(difference=(only_a - only_b) / n + margin / 100, sd=sd, alpha=alpha, power=power)


def _median_ratio(u, v, axis=-1):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(u, axis=axis) / np.median(v, axis=axis)


def ratio_of_medians(numerator, denominator, *, level: float = 0.95, n_resamples: int = 2000,
                     seed: int = 0, paired: bool = False) -> Test:
    """median(``numerator``) / median(``denominator``) of two methods' timings (finite values only)
    with a percentile bootstrap interval in which the two samples are resampled independently
    (scipy.stats.bootstrap, ``paired=False``): the methods were timed in separate runs, so repeat i
    of one says nothing about repeat i of the other. Medians, because a timing's outliers (a
    cache miss, another job on the machine) are slow, never fast. p: NaN, a rule decides by the
    interval. Fewer than 2 values on a side: the ratio without an interval.

    With ``paired``, value i of both sides was measured in the same round (interleaved timing, as
    :func:`advbook.training.timing.time_training` does): the rounds are resampled together, so that a
    round slowed by load for every method moves both medians alike, and only the rounds where both
    sides are finite count."""
    u, v = np.asarray(numerator, float), np.asarray(denominator, float)
    if paired:
        if len(u) != len(v):
            raise ValueError(f"paired timings need one value per round on each side, got {len(u)} and {len(v)}")
        ok = np.isfinite(u) & np.isfinite(v)
        u, v = u[ok], v[ok]
    else:
        u, v = u[np.isfinite(u)], v[np.isfinite(v)]
    est = float(_median_ratio(u, v)) if len(u) and len(v) else math.nan
    detail = f"{len(u)} rounds, paired" if paired else f"{len(u)} repeats over {len(v)}"
    if len(u) < 2 or len(v) < 2:
        return Test("ratio of medians", est, math.nan, math.nan, math.nan, min(len(u), len(v)), detail)
    res = _st.bootstrap((u, v), _median_ratio, paired=paired, vectorized=True, confidence_level=level,
                        n_resamples=n_resamples, method="percentile", random_state=np.random.default_rng(seed))
    return Test("ratio of medians", est, float(res.confidence_interval.low), float(res.confidence_interval.high),
                math.nan, min(len(u), len(v)), detail)


def paired_bootstrap(statistic, *columns, level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                     vectorized: bool = False) -> Test:
    """Percentile bootstrap over images of ``statistic(*columns)`` (a difference between two
    models or scores computed on the same images). p: twice the smaller tail share beyond zero.
    With ``vectorized``, ``statistic`` takes arrays of shape (resamples, n) and returns one value
    per row (same numbers, one call per block of resamples instead of one per resample)."""
    cols = [np.asarray(c) for c in columns]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise ValueError(f"paired_bootstrap needs columns of one length, got {[len(c) for c in cols]}")
    if n == 0:
        return Test("bootstrap difference", math.nan, math.nan, math.nan, math.nan, 0)
    est = float(statistic(*(c[None, :] for c in cols))[0] if vectorized else statistic(*cols))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    if vectorized:
        boots = np.concatenate([np.asarray(statistic(*(c[block] for c in cols)), dtype=float)
                                for block in np.array_split(idx, max(1, n_resamples // 250))])
    else:
        boots = np.array([statistic(*(c[i] for c in cols)) for i in idx], dtype=float)
    boots = boots[np.isfinite(boots)]
    if not len(boots) or not math.isfinite(est):
        return Test("bootstrap difference", est, math.nan, math.nan, math.nan, n)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    p = float(min(1.0, 2 * min((boots <= 0).mean(), (boots >= 0).mean())))
    return Test("bootstrap difference", est, float(lo), float(hi), p, n)


def bootstrap_mean(values, *, statistic=np.median, level: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> Test:
    """``statistic`` of ``values`` with a percentile bootstrap interval (scipy.stats.bootstrap)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return Test(statistic.__name__, math.nan, math.nan, math.nan, math.nan, len(v))
    res = _st.bootstrap((v,), statistic, confidence_level=level, n_resamples=n_resamples, method="percentile",
                        random_state=np.random.default_rng(seed))
    return Test(statistic.__name__, float(statistic(v)), float(res.confidence_interval.low),
                float(res.confidence_interval.high), math.nan, len(v))


def median_test(values, *, threshold: float, level: float = 0.95) -> Test:
    """The median of the finite ``values`` with its distribution-free order-statistic interval, and
    the two-sided sign test of "the median is ``threshold``".

    The interval is [x_(j), x_(n+1-j)] (sorted, 1-based) for the largest j with P(B <= j - 1) <=
    (1 - level) / 2, B ~ Binomial(n, 1/2): it covers the population median with probability at least
    ``level`` whatever the distribution (Conover, *Practical Nonparametric Statistics*, 3rd ed., §3.2),
    where a bootstrap percentile interval of a median undercovers at small n. Below the n at which
    even [min, max] covers less than ``level`` (n < 6 at 95 %) the interval is NaN. p: exact binomial
    test of the counts above and below ``threshold`` (values equal to it dropped)."""
    v = np.sort(np.asarray(values, float))
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return Test("median", math.nan, math.nan, math.nan, math.nan, 0)
    below_cut = np.flatnonzero(_st.binom.cdf(np.arange(n), n, 0.5) <= (1 - level) / 2)
    lo, hi = (float(v[below_cut[-1]]), float(v[n - 1 - below_cut[-1]])) if len(below_cut) else (math.nan, math.nan)
    above, below = int((v > threshold).sum()), int((v < threshold).sum())
    p = float(_st.binomtest(above, above + below, 0.5).pvalue) if above + below else math.nan
    return Test("median", float(np.median(v)), lo, hi, p, n, detail=f"{above} above and {below} below {threshold:g}")


def spearman(x, y, *, level: float = 0.95) -> Test:
    """Spearman's rho of the finite pairs with a Fisher-z interval, standard error
    sqrt((1 + rho^2/2) / (n - 3)) (Bonett and Wright 2000), which keeps its coverage at high rho."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Test("Spearman rho", math.nan, math.nan, math.nan, math.nan, n)
    res = _st.spearmanr(x, y)
    rho = float(res.statistic)
    z, se = math.atanh(max(min(rho, 0.999999), -0.999999)), math.sqrt((1 + rho * rho / 2) / (n - 3))
    half = _z(level) * se
    return Test("Spearman rho", rho, math.tanh(z - half), math.tanh(z + half), float(res.pvalue), n)


def group_difference(a, b, *, level: float = 0.95, seed: int = 0, n_resamples: int = 2000) -> Test:
    """Mean of ``a`` minus mean of ``b`` for two groups of different images: bootstrap interval
    (each group resampled on its own), two-sided Mann-Whitney U p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return Test("difference of means", math.nan, math.nan, math.nan, math.nan, len(a) + len(b))
    res = _st.bootstrap((a, b), lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis), confidence_level=level,
                        n_resamples=n_resamples, method="percentile", random_state=np.random.default_rng(seed))
    p = float(_st.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return Test("difference of means", float(a.mean() - b.mean()), float(res.confidence_interval.low),
                float(res.confidence_interval.high), p, len(a) + len(b), detail=f"{len(a)} against {len(b)} images")


def holm(pvalues, *, alpha: float = 0.05) -> list[float]:
    """Holm-adjusted p-values, NaN kept as NaN (and not counted as a test): the k-th smallest of m
    p-values times (m - k + 1), made non-decreasing, capped at 1. The same numbers as statsmodels'
    ``multipletests(method="holm")`` (tested), without its ``gc.collect()`` on every call, which
    costs tens of milliseconds per verdict in a full notebook. ``alpha`` does not change adjusted
    p-values; it is kept for the signature."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q = p[ok]
        order = np.argsort(q, kind="stable")
        m = len(q)
        adjusted = np.minimum(1.0, np.maximum.accumulate(q[order] * np.arange(m, 0, -1)))
        res = np.empty(m)
        res[order] = adjusted
        out[ok] = res
    return out.tolist()


def mcnemar_sample_size(*, difference: float, discordant: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Images needed for McNemar's test to detect an accuracy ``difference`` (a share, not points)
    when a share ``discordant`` of the images is discordant (Connor 1987)."""
    d, pd_ = abs(difference), max(discordant, abs(difference))
    if d == 0 or not math.isfinite(d) or not math.isfinite(pd_):
        return -1
    za, zb = _z(1 - alpha), float(_st.norm.ppf(power))
    return int(math.ceil((za * math.sqrt(pd_) + zb * math.sqrt(max(pd_ - d * d, 0.0))) ** 2 / (d * d)))


def spearman_sample_size(*, rho: float, threshold: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Pairs needed for a Fisher-z interval around ``rho`` (the interval of :func:`spearman`) to
    exclude ``threshold`` with probability ``power``."""
    gap = abs(math.atanh(max(min(rho, 0.999), -0.999)) - math.atanh(threshold))
    if gap == 0 or not math.isfinite(gap):
        return -1
    return int(math.ceil((1 + rho * rho / 2) * ((_z(1 - alpha) + float(_st.norm.ppf(power))) / gap) ** 2 + 3))


def mean_sample_size(*, difference: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Units (images) needed for a two-sided interval of a mean of per-unit values with standard
    deviation ``sd`` to exclude zero with probability ``power`` when the true mean is ``difference``
    (normal approximation: ``((z_{1-alpha/2} + z_power) * sd / difference)^2``); -1 when it is level."""
    d = abs(difference)
    if d == 0 or not math.isfinite(d) or not math.isfinite(sd):
        return -1
    return int(math.ceil(((_z(1 - alpha) + float(_st.norm.ppf(power))) * sd / d) ** 2))

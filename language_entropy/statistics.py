"""Statistics over training seeds for study reports: intervals, differences, multiplicity, trends and power.

Pure functions on numbers (numpy, scipy); no MLflow, no model code. A *seed value* is one run's
reading (e.g. its OOD exact match); a configuration's seed values are what these functions take.

- `seed_interval`: n, mean, sample sd and the 95% Student t interval over seeds.
- `bounded_interval`: the same for a reading with a range (a rate in [0, 1], an entropy >= 0): a t
  interval on the logit (or log) scale of the mean, so the interval never leaves the range.
  `interval_from_stats` computes either from (n, mean, sd) alone.
- `welch_interval`: difference of two independent sets of seeds (Welch); `paired_interval`: the
  difference when both sets share seeds (and so data): the t interval of the per-seed differences.
- `adjust_bh`, `adjust_holm`: adjusted p-values over a family of differences (false discovery rate,
  family-wise error rate).
- `dose_response`: least-squares slope of a reading against a swept numeric value, with its interval
  (`dose_response_from_stats`: the same from each value's n, mean and sd).
- `pooled_sd` (`pooled_sd_from_stats`), `seeds_needed`, `detectable_difference`: the between-seed
  spread and what a study of n seeds can resolve (normal approximation).
- `time_to_event`, `kaplan_meier`, `logrank_test`: a time-to-learn reading (steps to 90% validation exact
  match) as censored data (a run that never got there is censored at its budget), its Kaplan-Meier curve and
  the log-rank test of two configurations (scipy.stats.ecdf, scipy.stats.logrank);
  `exact_proportion_interval`: a count's Clopper-Pearson 95% interval (a stall rate).

Every interval is two-sided 95%. t quantiles come from a table (`T_975`), exact to 1e-15 for df 1..30
and interpolated in 1/df above (error < 1e-4); p-values from scipy's t distribution at the same df, so
an interval excludes 0 exactly when p < 0.05 (up to that 1e-4 above df 30).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

# Two-sided 95% Student t quantiles t(0.975, df), df = 1..30 (from the regularized incomplete beta
# function at 30 digits); above 30, linear in 1/df through 40, 60, 120 and the normal quantile.
T_975 = (12.706204736174705, 4.302652729749464, 3.182446305283710, 2.776445105197794, 2.570581835636316,
         2.446911851144970, 2.364624251592785, 2.306004135204167, 2.262157162798206, 2.228138851986275,
         2.200985160091640, 2.178812829667229, 2.160368656462793, 2.144786687917804, 2.131449545559776,
         2.119905299221255, 2.109815577833317, 2.100922040241039, 2.093024054408310, 2.085963447265865,
         2.079613844727680, 2.073873067904026, 2.068657610419049, 2.063898561628026, 2.059538552753298,
         2.055529438642873, 2.051830516480286, 2.048407141795245, 2.045229642132704, 2.042272456301238)
T_975_LARGE = ((40, 2.021075390306273), (60, 2.000297822014261), (120, 1.979930405082441))
Z_975 = 1.959963984540054
NO_DIFFERENCE = {"diff": math.nan, "diff_low": math.nan, "diff_high": math.nan, "p": math.nan}


def t_quantile_975(df: float) -> float:
    """t(0.975, df): the half-width multiplier of a two-sided 95% interval; df >= 1 (NaN below)."""
    if not df >= 1:
        return math.nan
    if df <= len(T_975):
        return T_975[int(df) - 1]  # whole df: fractional Welch df are rounded down by the caller
    points = [(1 / len(T_975), T_975[-1])] + [(1 / d, t) for d, t in T_975_LARGE] + [(0.0, Z_975)]
    x = 1 / df
    for (x0, t0), (x1, t1) in zip(points, points[1:], strict=False):
        if x1 <= x <= x0:
            return t1 + (t0 - t1) * (x - x1) / (x0 - x1)
    return Z_975


def _finite(values: ArrayLike) -> np.ndarray:
    return np.asarray([v for v in np.asarray(values, dtype=float).ravel() if np.isfinite(v)], dtype=float)


def _two_sided_p(estimate: float, se: float, df: float) -> float:
    """P(|T_df| >= |estimate / se|); with se 0 the estimate is exact: p 0 unless it is 0 itself."""
    if se == 0:
        return 1.0 if estimate == 0 else 0.0
    return float(2 * stats.t.sf(abs(estimate / se), df))


def seed_interval(values: Sequence[float]) -> dict[str, float]:
    """n, mean, sample sd and the 95% t interval of the finite `values` (interval NaN for n < 2)."""
    x = _finite(values)
    n = len(x)
    return interval_from_stats(n, float(x.mean()) if n else math.nan, float(x.std(ddof=1)) if n > 1 else math.nan)


def bounded_interval(values: Sequence[float], low: float = 0.0, high: float = 1.0) -> dict[str, float]:
    """`seed_interval` for a reading that lives in [low, high] (high may be inf): its interval stays inside.
    See `interval_from_stats`; a value outside [low, high] raises ValueError."""
    if not low < high:
        raise ValueError(f"bounded_interval needs low < high (got {low}, {high})")
    x = _finite(values)
    outside = (x < low) | (x > high)
    if outside.any():
        raise ValueError(f"values must lie in [{low}, {high}]: {x[outside][:3].tolist()} do not")
    n = len(x)
    return interval_from_stats(n, float(x.mean()) if n else math.nan, float(x.std(ddof=1)) if n > 1 else math.nan,
                               low, high)


def interval_from_stats(n: int, mean: float, sd: float, low: float = -math.inf,
                        high: float = math.inf) -> dict[str, float]:
    """n, mean, sd and the 95% interval of a mean over n seeds, from those three numbers alone.

    Unbounded (the default): the Student t interval mean +- t(0.975, n - 1) sd / sqrt(n).
    A reading in [low, high]: with u = (mean - low) / (high - low), the t interval on the logit scale of
    the mean, mapped back (the delta method: the logit's standard error is sd / (sqrt(n) (high - low)
    u (1 - u))):

        logit(u) +- t(0.975, n - 1) sd / (sqrt(n) (high - low) u (1 - u))

    and for a reading bounded on one side only the same on the log scale of its distance from the bound.
    The interval always holds the mean, cannot cross an end (it is asymmetric near one) and, for a mean
    far from the ends, is close to the plain t interval. Seeds that all agree (sd 0, the only way for a
    mean to sit at an end) give the point itself. No interval (NaN) for n < 2.
    """
    result = {"n": n, "mean": mean, "sd": sd, "ci_low": math.nan, "ci_high": math.nan}
    if n < 2:
        return result
    if sd == 0:  # every seed agrees
        return {**result, "ci_low": mean, "ci_high": mean}
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)  # on the reading's own scale
    if math.isfinite(low) and math.isfinite(high):
        width = high - low
        u = (mean - low) / width
        centre, spread = math.log(u / (1 - u)), half / (width * u * (1 - u))
        ends = [low + width * float(stats.logistic.cdf(centre + sign * spread)) for sign in (-1, 1)]
    elif math.isfinite(low):
        centre, spread = math.log(mean - low), half / (mean - low)
        ends = [low + math.exp(centre + sign * spread) for sign in (-1, 1)]
    elif math.isfinite(high):  # bounded above only: the mirror image
        centre, spread = math.log(high - mean), half / (high - mean)
        ends = [high - math.exp(centre - sign * spread) for sign in (-1, 1)]
    else:
        return {**result, "ci_low": mean - half, "ci_high": mean + half}
    return {**result, "ci_low": min(max(ends[0], low), mean), "ci_high": max(min(ends[1], high), mean)}


def welch_interval(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """mean(a) - mean(b) with Welch's 95% interval and two-sided p-value, from two `seed_interval` results.
    The Welch-Satterthwaite df is rounded down for the t table (and the p-value); no interval unless both
    have 2+ seeds. Both standard errors 0 (identical values): the interval is the difference itself."""
    diff = a["mean"] - b["mean"] if a["n"] and b["n"] else math.nan
    if a["n"] < 2 or b["n"] < 2:
        return {**NO_DIFFERENCE, "diff": diff}
    va, vb = a["sd"] ** 2 / a["n"], b["sd"] ** 2 / b["n"]
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "diff_low": diff, "diff_high": diff, "p": _two_sided_p(diff, 0.0, 1)}
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    df = max(1, math.floor(df + 1e-9))  # 1e-9: a df of 2 computed as 1.9999999 stays 2
    half = t_quantile_975(df) * se
    return {"diff": diff, "diff_low": diff - half, "diff_high": diff + half, "p": _two_sided_p(diff, se, df)}


def paired_interval(values: ArrayLike, baseline: ArrayLike) -> dict[str, float]:
    """mean(values - baseline) over the seeds both have, with the 95% t interval and two-sided p-value of
    the per-seed differences (df = pairs - 1).

    values, baseline: aligned by seed (element k of each is seed k); a pair with a non-finite side is
    left out. Returns ``n`` (pairs), ``diff``, ``sd`` (of the differences), ``diff_low``, ``diff_high``,
    ``p``; no interval for fewer than 2 pairs; differences that all agree give the point itself.
    """
    values, baseline = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if values.shape != baseline.shape or values.ndim != 1:
        raise ValueError(f"values and baseline must be aligned 1-D arrays (got {values.shape}, {baseline.shape})")
    both = np.isfinite(values) & np.isfinite(baseline)
    differences = values[both] - baseline[both]  # (pairs,)
    result = seed_interval(differences)
    n, diff, sd = result["n"], result["mean"], result["sd"]
    if n < 2:
        return {"n": n, **NO_DIFFERENCE, "diff": diff, "sd": sd}
    se = sd / math.sqrt(n)
    half = t_quantile_975(n - 1) * se
    return {"n": n, "diff": diff, "sd": sd, "diff_low": diff - half, "diff_high": diff + half,
            "p": _two_sided_p(diff, se, n - 1)}


def adjust_bh(p_values: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy's `false_discovery_control`): a difference whose adjusted
    p is below q is a discovery at false discovery rate q. NaN entries (no test) stay NaN and are not
    counted in the family."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(p[tested], method="bh")
    return adjusted


def adjust_holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate): with the m tested p-values ascending,
    p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)). NaN entries stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m - j + 1) p_(j), j 1-based
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def dose_response(x: ArrayLike, y: ArrayLike) -> dict[str, float]:
    """Least-squares slope of y on x over seed values (one point per seed of each swept value), with its
    95% t interval (df = n - 2) and two-sided p-value.

    Returns ``n`` (points), ``levels`` (distinct x), ``slope``, ``slope_low``, ``slope_high``, ``p``; the
    slope is NaN unless there are 3+ distinct x (two levels are a difference, not a trend). Points with
    a non-finite x or y are left out.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n, levels = len(x), len(np.unique(x))
    if levels < 3:
        return {"n": n, "levels": levels, "slope": math.nan, "slope_low": math.nan, "slope_high": math.nan,
                "p": math.nan}
    dx = x - x.mean()
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    residual = y - y.mean() - slope * dx
    se = math.sqrt(float(residual @ residual) / (n - 2) / float(dx @ dx))
    half = t_quantile_975(n - 2) * se
    return {"n": n, "levels": levels, "slope": slope, "slope_low": slope - half, "slope_high": slope + half,
            "p": _two_sided_p(slope, se, n - 2)}


def dose_response_from_stats(levels: ArrayLike, ns: ArrayLike, means: ArrayLike, sds: ArrayLike) -> dict[str, float]:
    """`dose_response` from each level's seed count, mean and sample sd alone (the same numbers: a least-squares
    fit sees a level's points only through these). With N = sum n_g, xbar = sum n_g x_g / N:

        slope = sum n_g (x_g - xbar) ybar_g / Sxx,   Sxx = sum n_g (x_g - xbar)^2
        residual SS = sum (n_g - 1) s_g^2 + sum n_g (ybar_g - fitted_g)^2   (within levels + around the line)

    A level with one seed has no sd: its within-level part is 0. Levels with n_g = 0 are left out."""
    x, n, m, s = (np.asarray(a, dtype=float) for a in (levels, ns, means, sds))
    keep = (n > 0) & np.isfinite(x) & np.isfinite(m)
    x, n, m, s = x[keep], n[keep], m[keep], np.where(n[keep] > 1, s[keep], 0.0)
    total, distinct = int(n.sum()), len(np.unique(x))
    if distinct < 3:
        return {"n": total, "levels": distinct, "slope": math.nan, "slope_low": math.nan, "slope_high": math.nan,
                "p": math.nan}
    xbar = float(n @ x / total)
    dx = x - xbar
    sxx = float(n @ dx**2)
    slope = float(n @ (dx * m) / sxx)
    fitted = float(n @ m / total) + slope * dx
    residual = float((n - 1) @ s**2 + n @ (m - fitted) ** 2)
    se = math.sqrt(residual / (total - 2) / sxx)
    half = t_quantile_975(total - 2) * se
    return {"n": total, "levels": distinct, "slope": slope, "slope_low": slope - half, "slope_high": slope + half,
            "p": _two_sided_p(slope, se, total - 2)}


def pooled_sd(groups: Sequence[ArrayLike]) -> dict[str, float]:
    """The between-seed sd pooled over groups (e.g. configurations) of seed values, with its 95%
    chi-square interval: `pooled_sd_from_stats` of each group's count and sample sd."""
    finite = [g for g in map(_finite, groups) if len(g) > 1]
    return pooled_sd_from_stats([len(g) for g in finite], [float(np.std(g, ddof=1)) for g in finite])


def pooled_sd_from_stats(ns: Sequence[int], sds: Sequence[float]) -> dict[str, float]:
    """sd^2 = sum_g (n_g - 1) s_g^2 / df, df = sum_g (n_g - 1), over the groups with n_g >= 2 and a finite
    s_g; interval sd sqrt(df / chi2(0.975, df)) .. sd sqrt(df / chi2(0.025, df)). NaN with no such group."""
    spreads = [(int(n) - 1, float(sd) ** 2) for n, sd in zip(ns, sds, strict=True) if n >= 2 and math.isfinite(sd)]
    df = sum(d for d, _ in spreads)
    if df == 0:
        return {"sd": math.nan, "df": 0, "ci_low": math.nan, "ci_high": math.nan}
    sd = math.sqrt(sum(d * v for d, v in spreads) / df)
    return {"sd": sd, "df": df, "ci_low": sd * math.sqrt(df / stats.chi2.ppf(0.975, df)),
            "ci_high": sd * math.sqrt(df / stats.chi2.ppf(0.025, df))}


def _z_sum(power: float, alpha: float) -> float:
    if not (0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"power and alpha must be in (0, 1) (got {power}, {alpha})")
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))


def seeds_needed(sd: float, difference: float, power: float = 0.8, alpha: float = 0.05, paired: bool = False) -> int:
    """Seeds per configuration to detect a true `difference` with `power` at two-sided level `alpha`
    (normal approximation, at least 2 so that a spread exists):

        unpaired: n = 2 (z(1 - alpha/2) + z(power))^2 sd^2 / difference^2   (sd: between seeds, per configuration)
        paired:   n =   (z(1 - alpha/2) + z(power))^2 sd^2 / difference^2   (sd: of the per-seed differences)

    rounded up. A non-finite sd raises ValueError (measure it first)."""
    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"sd must be finite and >= 0 (got {sd})")
    if not difference > 0:
        raise ValueError(f"difference must be > 0 (got {difference})")
    n = (1 if paired else 2) * (_z_sum(power, alpha) * sd / difference) ** 2
    return max(2, math.ceil(n - 1e-9))  # 1e-9: an n of exactly 16 computed as 16.0000000001 stays 16


def detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 0.05, paired: bool = False) -> float:
    """The smallest true difference that n seeds per configuration detect with `power` (the inverse of
    `seeds_needed`, before rounding): (z(1 - alpha/2) + z(power)) sd sqrt(k / n), k = 1 paired, 2 unpaired."""
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    return _z_sum(power, alpha) * sd * math.sqrt((1 if paired else 2) / n)


def time_to_event(times: ArrayLike, budgets: ArrayLike) -> stats.CensoredData:
    """Steps to an event per run (NaN: it never happened) as right-censored data: a run without the event is
    censored at its budget (it did not get there within `budgets` steps; it might later)."""
    times, budgets = np.asarray(times, dtype=float), np.broadcast_to(np.asarray(budgets, dtype=float),
                                                                    np.shape(times))
    reached = np.isfinite(times)
    return stats.CensoredData(uncensored=times[reached], right=budgets[~reached])


def kaplan_meier(data: stats.CensoredData) -> dict[str, np.ndarray]:
    """The Kaplan-Meier estimate of the fraction of runs that have not yet had the event (e.g. not yet reached
    90%), as a step function: ``step`` (0, then each distinct event time) and ``surviving`` at and after it."""
    if len(data) == data.num_censored():
        return {"step": np.array([0.0]), "surviving": np.array([1.0])}  # no event: nothing has left the curve
    sf = stats.ecdf(data).sf
    return {"step": np.concatenate([[0.0], sf.quantiles]), "surviving": np.concatenate([[1.0], sf.probabilities])}


def logrank_test(data: stats.CensoredData, baseline: stats.CensoredData) -> dict[str, float]:
    """The log-rank test of two time-to-event samples (two-sided): statistic and p. NaN when neither has an
    event (the test has nothing to compare)."""
    if len(data) + len(baseline) == data.num_censored() + baseline.num_censored():
        return {"statistic": math.nan, "p": math.nan}
    result = stats.logrank(data, baseline)
    return {"statistic": float(result.statistic), "p": float(result.pvalue)}


def exact_proportion_interval(count: int, n: int) -> tuple[float, float]:
    """The Clopper-Pearson (exact binomial) 95% interval of `count` of `n`; (NaN, NaN) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    interval = stats.binomtest(int(count), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return float(interval.low), float(interval.high)

"""Statistics over seeds (language_entropy/statistics.py) against scipy and hand-checkable values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from language_entropy.statistics import (
    T_975,
    adjust_bh,
    adjust_holm,
    bounded_interval,
    detectable_difference,
    dose_response,
    dose_response_from_stats,
    exact_proportion_interval,
    interval_from_stats,
    kaplan_meier,
    logrank_test,
    paired_interval,
    pooled_sd,
    pooled_sd_from_stats,
    seed_interval,
    seeds_needed,
    t_quantile_975,
    time_to_event,
    welch_interval,
)

Z80 = 0.8416212335729143  # the 80th percentile of the standard normal
Z975 = 1.959963984540054


# ---------------------------------------------------------------- t quantiles, seed and Welch intervals


def test_t_quantiles_match_closed_forms():
    p = 0.975
    assert t_quantile_975(1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-14)  # Cauchy
    assert t_quantile_975(2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-14)
    assert t_quantile_975(2) == pytest.approx(4.302652729911275, rel=1e-9)  # as scipy prints it (1e-10 off)
    alpha = 4 * p * (1 - p)  # df = 4: t = 2 sqrt(cos(arccos(sqrt(alpha)) / 3) / sqrt(alpha) - 1)
    assert t_quantile_975(4) == pytest.approx(2 * math.sqrt(math.cos(math.acos(math.sqrt(alpha)) / 3)
                                                             / math.sqrt(alpha) - 1), rel=1e-14)
    assert t_quantile_975(10) == pytest.approx(2.228138851986274, rel=1e-14)
    assert t_quantile_975(30) == T_975[29]
    assert t_quantile_975(50) == pytest.approx(2.008559112100761, abs=1e-4)  # interpolated in 1/df
    assert t_quantile_975(1000) == pytest.approx(1.962339080826409, abs=1e-4)
    assert t_quantile_975(1e9) == pytest.approx(1.959963984540054, abs=1e-8)
    grid = [t_quantile_975(df) for df in range(1, 500)]
    assert all(a > b for a, b in zip(grid, grid[1:], strict=False))
    assert math.isnan(t_quantile_975(0))


def test_interval_of_three_known_values_by_hand():
    got = seed_interval([0.9, 0.8, 0.7])
    # mean 0.8, sd sqrt(((0.1)^2 + 0 + (0.1)^2) / 2) = 0.1, half-width t(0.975, 2) * 0.1 / sqrt(3)
    half = 4.302652729749464 * 0.1 / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.8) and got["sd"] == pytest.approx(0.1)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.8 - half, 0.8 + half))
    single = seed_interval([0.5, math.nan])
    assert single["n"] == 1 and single["mean"] == 0.5 and math.isnan(single["sd"]) and math.isnan(single["ci_low"])


def test_welch_difference_by_hand_unchanged():
    a, b = seed_interval([0.6, 0.4, 0.8]), seed_interval([0.9, 0.8, 0.7])  # sd 0.2 and 0.1
    va, vb = 0.04 / 3, 0.01 / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # 2.94: rounded down to 2
    assert math.floor(df) == 2
    half = 4.302652729749464 * math.sqrt(va + vb)
    got = welch_interval(a, b)
    assert (got["diff"], got["diff_low"], got["diff_high"]) == pytest.approx((-0.2, -0.2 - half, -0.2 + half))
    # the p-value: the t statistic at the same (rounded-down) df, so it is below 0.05 exactly when 0 is outside
    assert got["p"] == pytest.approx(2 * stats.t.sf(0.2 / math.sqrt(va + vb), 2), rel=1e-12)
    t = 0.2 / math.sqrt(va + vb)  # df = 2 has a closed form: P(|T| >= t) = 1 - t / sqrt(t^2 + 2)
    assert got["p"] == pytest.approx(1 - t / math.sqrt(t**2 + 2), rel=1e-12)
    same = welch_interval(seed_interval([0.5, 0.5]), seed_interval([0.25, 0.25]))  # no spread: the point itself
    assert (same["diff"], same["diff_low"], same["diff_high"], same["p"]) == pytest.approx((0.25, 0.25, 0.25, 0.0))
    one = welch_interval(seed_interval([0.5]), b)
    assert one["diff"] == pytest.approx(-0.3) and math.isnan(one["diff_low"]) and math.isnan(one["p"])


# ---------------------------------------------------------------- paired differences


def test_paired_interval_equals_the_t_interval_of_per_seed_differences():
    values = np.array([0.90, 0.80, 0.70, 0.85])  # configuration B, seeds 0..3
    baseline = np.array([0.80, 0.75, 0.72, 0.80])  # the baseline, same seeds (same data)
    differences = values - baseline  # 0.10, 0.05, -0.02, 0.05: mean 0.045
    sd = math.sqrt(sum((d - 0.045) ** 2 for d in differences) / 3)
    half = 3.182446305283710 * sd / 2  # t(0.975, 3) sd / sqrt(4)
    got = paired_interval(values, baseline)
    assert got["n"] == 4 and got["diff"] == pytest.approx(0.045) and got["sd"] == pytest.approx(sd)
    assert (got["diff_low"], got["diff_high"]) == pytest.approx((0.045 - half, 0.045 + half), abs=1e-14)
    reference = stats.ttest_rel(values, baseline)  # scipy's paired t test on the same pairs
    assert got["p"] == pytest.approx(reference.pvalue, rel=1e-12)
    assert (got["diff_low"], got["diff_high"]) == pytest.approx(tuple(reference.confidence_interval()), abs=1e-12)
    # the same numbers as independent samples (Welch) are wider: seed-to-seed spread shared by both is not removed
    welch = welch_interval(seed_interval(values), seed_interval(baseline))
    assert welch["diff"] == pytest.approx(0.045) and welch["diff_high"] - welch["diff_low"] > 2 * half


def test_paired_interval_drops_unmatched_seeds_and_small_cases():
    got = paired_interval([0.5, math.nan, 0.7, 0.9], [0.4, 0.5, 0.6, math.nan])  # only seeds 0 and 2 pair
    assert got["n"] == 2 and got["diff"] == pytest.approx(0.1) and got["sd"] == pytest.approx(0.0, abs=1e-15)
    assert got["diff_low"] == pytest.approx(0.1) and got["diff_high"] == pytest.approx(0.1)
    one = paired_interval([0.5], [0.4])
    assert one["n"] == 1 and one["diff"] == pytest.approx(0.1) and math.isnan(one["diff_low"]) and math.isnan(one["p"])
    with pytest.raises(ValueError, match="aligned"):
        paired_interval([0.1, 0.2], [0.1])


# ---------------------------------------------------------------- multiple comparisons

P_VALUES = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.5, 0.0001, 0.049])


def test_benjamini_hochberg_is_scipys():
    assert adjust_bh(P_VALUES) == pytest.approx(stats.false_discovery_control(P_VALUES, method="bh"), abs=1e-15)
    # by hand for the smallest: p_(1) = 0.0001 * 8 / 1; the two largest 0.2 * 8 / 7 and 0.5
    got = adjust_bh(P_VALUES)
    assert got[6] == pytest.approx(0.0008) and got[4] == pytest.approx(0.2 * 8 / 7) and got[5] == pytest.approx(0.5)
    with_gaps = adjust_bh([0.01, math.nan, 0.04])  # NaN: no test, not in the family (m = 2)
    assert with_gaps[0] == pytest.approx(0.02) and math.isnan(with_gaps[1]) and with_gaps[2] == pytest.approx(0.04)


def test_holm_by_hand():
    got = adjust_holm([0.01, 0.04, 0.03, 0.005])
    # ascending 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert adjust_holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])  # capped at 1 only when needed
    assert adjust_holm([0.7, 0.9]).tolist() == [1.0, 1.0]
    gaps = adjust_holm([math.nan, 0.02, 0.01])
    assert math.isnan(gaps[0]) and gaps[1:] == pytest.approx([0.02, 0.02])
    assert (adjust_holm(P_VALUES) >= adjust_bh(P_VALUES) - 1e-15).all()  # family-wise is the stricter


# ---------------------------------------------------------------- intervals that respect a range


def test_bounded_interval_by_hand_and_near_the_plain_one_away_from_the_ends():
    got = bounded_interval([0.9, 0.8, 0.7])  # mean 0.8, sd 0.1
    half = 4.302652729749464 * 0.1 / math.sqrt(3)
    spread = half / (0.8 * 0.2)  # on the logit scale: the delta method
    expit = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((expit(math.log(4) - spread), expit(math.log(4) + spread)))
    assert got["mean"] == pytest.approx(0.8) and got["ci_high"] < 1
    wide = bounded_interval([0.45, 0.5, 0.55])  # far from both ends: close to the t interval
    plain = seed_interval([0.45, 0.5, 0.55])
    assert (wide["ci_low"], wide["ci_high"]) == pytest.approx((plain["ci_low"], plain["ci_high"]), abs=0.01)
    # bounded below only (an entropy in bits): the log scale
    entropy = bounded_interval([0.01, 0.02, 0.06], low=0.0, high=math.inf)
    half = 4.302652729749464 * float(np.std([0.01, 0.02, 0.06], ddof=1)) / math.sqrt(3)
    assert entropy["ci_low"] == pytest.approx(0.03 * math.exp(-half / 0.03)) and entropy["ci_low"] > 0
    assert entropy["ci_high"] == pytest.approx(0.03 * math.exp(half / 0.03))
    # a range other than [0, 1]: a cosine distance in [0, 2]
    scaled = bounded_interval([1.8, 1.6, 1.4], low=0.0, high=2.0)
    unit = bounded_interval([0.9, 0.8, 0.7])
    assert (scaled["ci_low"], scaled["ci_high"]) == pytest.approx((2 * unit["ci_low"], 2 * unit["ci_high"]))


def test_bounded_intervals_never_leave_the_unit_interval():
    # the first study's cases where the t interval left [0, 1]: test exact match 0.985 [0.946, 1.023]
    assert seed_interval([0.9665, 0.992, 0.995])["ci_high"] > 1
    cases = [[0.9665, 0.992, 0.995], [0.0, 0.0], [1.0, 1.0], [0.3, 0.3, 0.3], [0.0, 1.0], [0.0, 0.0, 1.0],
             [1.0, 1.0, 0.999], [0.0, 0.0005], [1e-12, 0.5], [0.999999, 1.0]]
    rng = np.random.default_rng(0)
    for _ in range(2000):  # n = 2..6, near an end, at an end, spread out
        n = int(rng.integers(2, 7))
        kind = rng.integers(0, 3)
        x = rng.beta(0.3, 5, n) if kind == 0 else rng.choice([0.0, 1.0, 0.5, 0.999], n) if kind == 1 else rng.random(n)
        cases.append(list(x if rng.random() < 0.5 else 1 - x))
    for x in cases:
        got = bounded_interval(x)
        assert 0.0 <= got["ci_low"] <= got["mean"] <= got["ci_high"] <= 1.0, x
    for x in ([0.0, 0.0], [1.0, 1.0, 1.0], [0.3, 0.3]):  # all equal: the point, like the t interval
        got = bounded_interval(x)
        assert got["ci_low"] == got["ci_high"] == pytest.approx(x[0])
    single = bounded_interval([0.4])
    assert single["n"] == 1 and math.isnan(single["ci_low"])
    with pytest.raises(ValueError, match=r"values must lie in \[0.0, 1.0\]"):
        bounded_interval([0.5, 1.02])


# ---------------------------------------------------------------- dose-response, spread and power


def test_dose_response_is_least_squares_with_scipys_standard_error():
    x = np.repeat([-0.5, -0.2, 0.0, 0.2, 0.5], 3)  # a swept weight, three seeds each
    y = 0.3 - 0.1 * x + np.array([0.01, -0.02, 0.0, 0.03, -0.01, 0.02, -0.03, 0.0, 0.01, 0.02, 0.0, -0.02,
                                  0.01, 0.01, -0.01])
    got = dose_response(x, y)
    reference = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * reference.stderr
    assert got["n"] == 15 and got["levels"] == 5 and got["slope"] == pytest.approx(reference.slope, rel=1e-12)
    assert (got["slope_low"], got["slope_high"]) == pytest.approx((reference.slope - half, reference.slope + half),
                                                                  abs=1e-6)  # t table interpolated above df 30 only
    assert got["p"] == pytest.approx(reference.pvalue, rel=1e-9)
    exact = dose_response([1, 2, 3], [2, 4, 6])  # a perfect line: the slope itself
    assert (exact["slope"], exact["slope_low"], exact["slope_high"], exact["p"]) == pytest.approx((2, 2, 2, 0))
    two_levels = dose_response([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])  # a difference, not a trend
    assert two_levels["levels"] == 2 and math.isnan(two_levels["slope"])


def test_pooled_sd_by_hand_and_its_chi_square_interval():
    got = pooled_sd([[1.0, 2.0, 3.0], [2.0, 4.0], [7.0], [math.nan, 5.0]])  # variances 1 (df 2), 2 (df 1)
    assert got["df"] == 3 and got["sd"] == pytest.approx(math.sqrt((2 * 1 + 1 * 2) / 3))
    # the figure: OOD exact match sd 0.066 on 20 df has the 95% interval 0.051-0.095
    groups = [[0.066 * z for z in (-1.0, 0.0, 1.0)]] * 10  # ten groups of sd 0.066: df 20
    spread = pooled_sd(groups)
    assert spread["df"] == 20 and spread["sd"] == pytest.approx(0.066)
    assert (spread["ci_low"], spread["ci_high"]) == pytest.approx((0.0505, 0.0953), abs=5e-4)
    assert math.isnan(pooled_sd([[1.0], []])["sd"])


def test_seeds_needed_is_the_normal_approximation():
    # unpaired: n = 2 (z_0.975 + z_0.8)^2 sd^2 / d^2 = 2 * 2.8016^2 * 0.066^2 / 0.05^2 = 27.35 -> 28 per configuration
    closed = 2 * (Z975 + Z80) ** 2 * 0.066**2 / 0.05**2
    assert closed == pytest.approx(27.35, abs=0.01)
    assert seeds_needed(0.066, 0.05) == math.ceil(closed) == 28
    # paired: the sd of per-seed differences, no factor 2: (2.8016 * 0.03 / 0.05)^2 = 2.83 -> 3
    assert seeds_needed(0.03, 0.05, paired=True) == math.ceil((Z975 + Z80) ** 2 * 0.03**2 / 0.05**2) == 3
    assert seeds_needed(0.0, 0.05) == 2  # no spread: two seeds still, to see one
    assert seeds_needed(0.1, 0.05, power=0.9, alpha=0.01) == math.ceil(
        2 * (stats.norm.ppf(0.995) + stats.norm.ppf(0.9)) ** 2 * 4)
    # the inverse: with 3 seeds the smallest OOD effect found with 80% power is about 0.15 (normal approximation)
    assert detectable_difference(0.066, 3) == pytest.approx((Z975 + Z80) * 0.066 * math.sqrt(2 / 3))
    assert detectable_difference(0.066, seeds_needed(0.066, 0.05)) <= 0.05
    with pytest.raises(ValueError, match="sd"):
        seeds_needed(math.nan, 0.05)


def test_the_from_stats_forms_equal_the_forms_on_seed_values():
    rng = np.random.default_rng(0)
    x = np.repeat([-0.5, -0.2, 0.0, 0.2, 0.5], [3, 3, 4, 3, 1])  # unequal seeds per level, one level with one seed
    y = 0.3 - 0.1 * x + rng.normal(scale=0.02, size=x.size)
    levels = np.unique(x)
    groups = [y[x == v] for v in levels]
    ns = [len(g) for g in groups]
    means = [g.mean() for g in groups]
    sds = [g.std(ddof=1) if len(g) > 1 else math.nan for g in groups]
    assert dose_response_from_stats(levels, ns, means, sds) == pytest.approx(dose_response(x, y), rel=1e-12)
    assert pooled_sd_from_stats(ns, sds) == pytest.approx(pooled_sd(groups), rel=1e-12)
    values = rng.beta(2, 20, 5)
    for low, high in ((0.0, 1.0), (0.0, math.inf), (-math.inf, math.inf)):
        assert interval_from_stats(5, values.mean(), values.std(ddof=1), low, high) == pytest.approx(
            bounded_interval(values, low, high) if math.isfinite(low) else seed_interval(values), rel=1e-12)


def test_kaplan_meier_and_log_rank_by_hand():
    # A: 90% at steps 100 and 200, two runs never (censored at the budget 300); B: one at 150, three never
    a, b = time_to_event([100, 200, math.nan, math.nan], 300), time_to_event([150, math.nan, math.nan, math.nan], 300)
    assert a.num_censored() == 2 and len(a) == 4
    curve = kaplan_meier(a)  # S(100) = 3/4, S(200) = 3/4 * 2/3 = 1/2, flat to the budget
    assert curve["step"].tolist() == [0, 100, 200, 300]
    assert curve["surviving"] == pytest.approx([1.0, 0.75, 0.5, 0.5])
    assert kaplan_meier(time_to_event([math.nan] * 3, 500)) == {"step": [0.0], "surviving": [1.0]}
    # log-rank by hand: at 100 (4 v 4 at risk, A's event) E_A = 1/2, V = 1/4; at 150 (3 v 4, B's) E_A = 3/7,
    # V = 12/49; at 200 (3 v 3, A's) E_A = 1/2, V = 1/4. Z = (2 - E_A) / sqrt(V)
    expected, variance = 0.5 + 3 / 7 + 0.5, 0.25 + 12 / 49 + 0.25
    z = (2 - expected) / math.sqrt(variance)
    result = logrank_test(a, b)
    assert result["statistic"] == pytest.approx(z)
    assert result["p"] == pytest.approx(2 * stats.norm.sf(z))
    assert result["p"] == pytest.approx(stats.logrank(a, b).pvalue)
    assert math.isnan(logrank_test(time_to_event([math.nan], 9), time_to_event([math.nan], 9))["p"])


def test_exact_proportion_interval_is_clopper_pearson():
    low, high = exact_proportion_interval(3, 12)
    # Clopper-Pearson from the beta quantiles: Beta(0.025; 3, 10) and Beta(0.975; 4, 9)
    assert low == pytest.approx(stats.beta.ppf(0.025, 3, 10)) and high == pytest.approx(stats.beta.ppf(0.975, 4, 9))
    assert exact_proportion_interval(0, 12) == (0.0, pytest.approx(1 - 0.025 ** (1 / 12)))
    assert all(math.isnan(v) for v in exact_proportion_interval(0, 0))

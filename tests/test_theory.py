"""Theoretical answer entropy: every method against brute force over all operand pairs, and the stage."""

import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from language_entropy import theory
from language_entropy.errors import ParamsError, UserError
from language_entropy.params import DataConfig, DigitRange, EntropyConfig, load_params
from language_entropy.theory.analytic import _sum_xlogx

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
              "div": lambda a, b: a // b}
SMALL_BUCKETS = [(1, 1), (1, 2), (2, 1), (2, 2)]
ENUMERATE = EntropyConfig()
NEVER_ENUMERATE = EntropyConfig(exact_limit=1)
TOLERANCE = 1e-9


# ------------------------------------------------------------------- brute force, independent of the theory package

def brute_answers(op: str, a_digits: int, b_digits: int, reverse: bool) -> Counter:
    """Emitted answer string (sign, digits, '$') -> number of operand pairs, by plain loops."""
    def numbers(n: int, divisor: bool = False) -> range:
        return range(1 if divisor else 0, 10) if n == 1 else range(10 ** (n - 1), 10**n)

    answers = Counter()
    for a in numbers(a_digits):
        for b in numbers(b_digits, divisor=op == "div"):
            value = OPERATIONS[op](a, b)
            digits = str(abs(value))
            answers[("-" if value < 0 else "") + (digits[::-1] if reverse else digits) + "$"] += 1
    return answers


def brute_mixture(op: str, lengths: range, reverse: bool) -> dict[str, float]:
    """Answer string -> probability when both lengths are uniform over `lengths`."""
    probs: dict[str, float] = {}
    buckets = [(a, b) for a in lengths for b in lengths]
    for a_digits, b_digits in buckets:
        answers = brute_answers(op, a_digits, b_digits, reverse)
        total = sum(answers.values())
        for text, count in answers.items():
            probs[text] = probs.get(text, 0.0) + count / total / len(buckets)
    return probs


def entropy_bits(weights) -> float:
    weights = np.asarray(list(weights), dtype=float)
    p = weights / weights.sum()
    return float(-(p * np.log2(p)).sum())


def brute_entropies(answers: Mapping) -> tuple[np.ndarray, np.ndarray, float]:
    """(H(Y_t), H(Y_t | Y_<t), H(answer string)); steps run to the longest answer's '$'."""
    steps = max(map(len, answers))
    marginal, prefix = [], [0.0]
    for t in range(steps):
        symbols, prefixes = Counter(), Counter()
        for text, weight in answers.items():
            symbols[text[t] if t < len(text) else "ended"] += weight
            prefixes[text[: t + 1]] += weight
        marginal.append(entropy_bits(symbols.values()))
        prefix.append(entropy_bits(prefixes.values()))
    return np.array(marginal), np.diff(prefix), entropy_bits(answers.values())


def assert_matches(result: theory.StepEntropies, answers: Mapping) -> None:
    marginal, conditional, _ = brute_entropies(answers)
    np.testing.assert_allclose(result.marginal_bits, marginal, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(result.conditional_bits, conditional, rtol=0, atol=TOLERANCE)
    total = sum(answers.values())  # the answers still running at step t: their '$' comes at t or later
    running = [sum(w for text, w in answers.items() if len(text) > t) / total for t in range(len(marginal))]
    np.testing.assert_allclose(result.running_fraction, running, rtol=0, atol=TOLERANCE)


# ------------------------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("op", list(OPERATIONS))
def test_enumeration_matches_brute_force(op, reverse):
    for a_digits, b_digits in SMALL_BUCKETS:
        result = theory.bucket_entropy(op, a_digits, b_digits, reverse, ENUMERATE)
        assert result.method == "exact"
        assert_matches(result, brute_answers(op, a_digits, b_digits, reverse))


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("op", ["add", "sub"])
def test_dp_and_analytic_match_brute_force(op, reverse):
    for a_digits, b_digits in [*SMALL_BUCKETS, (1, 3), (3, 1)]:
        result = theory.bucket_entropy(op, a_digits, b_digits, reverse, NEVER_ENUMERATE)
        assert result.method == "dp+analytic"
        assert_matches(result, brute_answers(op, a_digits, b_digits, reverse))


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("op", ["add", "sub"])
def test_dp_and_analytic_match_enumeration_on_larger_buckets(op, reverse):
    for a_digits, b_digits in [(3, 3), (2, 4), (4, 2), (1, 5)]:
        exact = theory.bucket_entropy(op, a_digits, b_digits, reverse, ENUMERATE)
        chain = theory.bucket_entropy(op, a_digits, b_digits, reverse, NEVER_ENUMERATE)
        assert (exact.method, chain.method) == ("exact", "dp+analytic")
        np.testing.assert_allclose(chain.distributions, exact.distributions, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(chain.marginal_bits, exact.marginal_bits, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(chain.conditional_bits, exact.conditional_bits, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("op", list(OPERATIONS))
def test_mixture_matches_brute_force(op, reverse):
    lengths = DigitRange(1, 2)
    expected = brute_mixture(op, range(1, 3), reverse)
    configs = [ENUMERATE, NEVER_ENUMERATE] if op in ("add", "sub") else [ENUMERATE]
    for config in configs:  # merged enumerations, and the analytic mixture of dp buckets
        buckets = {(a, b): theory.bucket_entropy(op, a, b, reverse, config) for a in (1, 2) for b in (1, 2)}
        mixture = theory.mixture_entropy(op, lengths, reverse, config, buckets)
        assert mixture.method == ("exact" if config is ENUMERATE else "dp+analytic")
        assert_matches(mixture, expected)


def test_first_reversed_digit_of_a_sum_is_uniform():
    for a_digits, b_digits in [(2, 2), (3, 4), (20, 17)]:
        config = ENUMERATE if a_digits < 3 else NEVER_ENUMERATE
        result = theory.bucket_entropy("add", a_digits, b_digits, True, config)
        assert result.marginal_bits[0] == pytest.approx(math.log2(10), abs=TOLERANCE)
        assert result.conditional_bits[0] == pytest.approx(math.log2(10), abs=TOLERANCE)


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_conditionals_sum_to_the_answer_entropy(op):
    for reverse in (True, False):
        for a_digits, b_digits in [(2, 2), (1, 2)]:
            answers = brute_answers(op, a_digits, b_digits, reverse)
            result = theory.bucket_entropy(op, a_digits, b_digits, reverse, ENUMERATE)
            assert result.conditional_bits.sum() == pytest.approx(brute_entropies(answers)[2], abs=TOLERANCE)


def test_long_add_and_sub_are_consistent():
    """At lengths no enumeration reaches: the answer entropy does not depend on the order, interior
    reversed sum digits are uniform whatever was seen, and marginals are proper distributions."""
    for op, a_digits, b_digits in [("add", 20, 20), ("add", 30, 7), ("sub", 17, 25), ("sub", 30, 30)]:
        units_first = theory.bucket_entropy(op, a_digits, b_digits, True, ENUMERATE)
        top_first = theory.bucket_entropy(op, a_digits, b_digits, False, ENUMERATE)
        assert units_first.method == top_first.method == "dp+analytic"
        assert units_first.conditional_bits.sum() == pytest.approx(top_first.conditional_bits.sum(), abs=1e-8)
        assert (units_first.conditional_bits <= units_first.marginal_bits + TOLERANCE).all()
        np.testing.assert_allclose(units_first.distributions.sum(axis=1), 1.0, atol=1e-12)
    interior = theory.bucket_entropy("add", 20, 20, True, ENUMERATE).conditional_bits[:19]
    np.testing.assert_allclose(interior, math.log2(10), rtol=0, atol=TOLERANCE)


def test_euler_maclaurin_sums_match_direct_sums():
    pieces = [(0, 1, 300_000), (5, 3, 100_000), (10**6, 7, 200_000), (10**12, 10**9, 50_000), (123, 0, 1000)]
    expected = 0.0
    for start, slope, count in pieces:
        y = start + slope * np.arange(count, dtype=float)
        expected += math.fsum(y[y > 0] * np.log(y[y > 0]))
    assert _sum_xlogx(pieces) == pytest.approx(expected, rel=1e-13)


def test_answer_symbols():
    def emitted(values, reverse):
        tokens = theory.answer_tokens(np.array(values), reverse, 6)
        return ["".join(theory.SYMBOLS[s] for s in row if s != theory.ENDED) for row in tokens]

    assert emitted([168, -335, 0], reverse=True) == ["861$", "-533$", "0$"]
    assert emitted([168, -335, 0], reverse=False) == ["168$", "-335$", "0$"]
    assert theory.answer_steps("sub", 2, 3) == len("-989$")
    assert theory.answer_steps("mul", 30, 30) == 61


# ---------------------------------------------------------------------------------------- Monte Carlo

def test_monte_carlo_is_within_four_standard_errors():
    sampled = EntropyConfig(exact_limit=100, mc_samples=200_000)
    for op, a_digits, b_digits in [("mul", 2, 2), ("div", 2, 1), ("mul", 1, 2)]:
        exact = theory.bucket_entropy(op, a_digits, b_digits, True, ENUMERATE)
        estimate = theory.bucket_entropy(op, a_digits, b_digits, True, sampled)
        assert estimate.method == "monte_carlo"
        assert (np.abs(estimate.marginal_bits - exact.marginal_bits)
                <= 4 * estimate.marginal_stderr_bits + 1e-12).all()
        known = ~np.isnan(estimate.conditional_bits)
        assert known[:2].all()
        assert (np.abs(estimate.conditional_bits - exact.conditional_bits)[known]
                <= 4 * estimate.conditional_stderr_bits[known] + 1e-12).all()


def test_unreliable_monte_carlo_conditionals_are_left_empty_with_a_reason():
    result = theory.bucket_entropy("mul", 3, 3, True, EntropyConfig(exact_limit=100, mc_samples=2000))
    missing = np.isnan(result.conditional_bits)
    assert missing.any() and not missing[0]
    assert all("distinct answer prefixes" in note for note, gone in zip(result.notes, missing, strict=True) if gone)
    assert np.isfinite(result.marginal_bits).all()


# ------------------------------------------------------------------------------------- params, stage, API

def test_bad_entropy_params_are_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"entropy": {"mc_samples": 0}}))
    with pytest.raises(ParamsError, match=r"entropy\.mc_samples"):
        load_params(path)


def test_stage_writes_the_table_and_the_summary(tmp_path):
    metrics = tmp_path / "metrics"
    params = {"data": {"operations": ["add", "sub", "mul", "div"], "digits": {"min": 1, "max": 2},
                       "ood_digits": {"min": 3, "max": 3}},
              "entropy": {"exact_limit": 10_000, "mc_samples": 2000},
              "paths": {"metrics": str(metrics)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "compute_theoretical_entropy.py"),
                           "--params", str(tmp_path / "params.yaml")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    table = theory.load_theoretical_entropy(metrics)
    assert list(table.columns) == list(theory.COLUMNS)
    assert set(table["scope"]) == {"bucket", "in_distribution", "ood"}
    assert table.loc[table["scope"] != "bucket", ["a_digits", "b_digits"]].isna().all().all()
    assert set(table["method"]) >= {"exact", "dp+analytic", "monte_carlo"}
    summary = json.loads((metrics / theory.JSON_NAME).read_text())
    assert set(summary) == {"in_distribution", "ood"}
    assert set(summary["in_distribution"]) == {"add", "sub", "mul", "div"}
    assert summary["in_distribution"]["add"]["answer_bits"] <= summary["in_distribution"]["add"]["marginal_sum_bits"]
    assert "answer_bits" not in summary["ood"]["mul"]  # its late conditionals cannot be estimated from 2000 samples


def test_levels_of_a_bucket_and_a_mixture():
    data = DataConfig(operations=("add", "mul"), digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3))
    table = theory.theoretical_entropy_table(data, ENUMERATE)
    mixture = theory.theoretical_levels(table, "in_distribution", "add")
    assert list(mixture.columns) == ["step", "marginal_bits", "conditional_bits", "running_fraction"]
    assert mixture["step"].tolist() == list(range(4))  # the longest answer, 99+99 -> "891$", ends at step 3
    bucket = theory.theoretical_levels(table, "bucket", "mul", 3, 3)
    assert bucket["conditional_bits"].sum() == pytest.approx(entropy_bits(brute_answers("mul", 3, 3, True).values()),
                                                             abs=TOLERANCE)
    with pytest.raises(UserError, match="sub"):
        theory.theoretical_levels(table, "ood", "sub")
    with pytest.raises(ValueError):
        theory.theoretical_levels(table, "bucket", "add")


def test_missing_table_names_the_file_and_the_stage(tmp_path):
    with pytest.raises(UserError, match=r"theoretical_entropy\.csv.*dvc repro compute-theoretical-entropy"):
        theory.load_theoretical_entropy(tmp_path / "theoretical_entropy.csv")
    with pytest.raises(UserError, match="theoretical_entropy.csv"):
        theory.load_theoretical_entropy(tmp_path)


def test_table_round_trips_through_csv(tmp_path):
    data = DataConfig(operations=("sub",), digits=DigitRange(1, 1), ood_digits=DigitRange(2, 2))
    table = theory.theoretical_entropy_table(data, ENUMERATE)
    table.to_csv(tmp_path / theory.CSV_NAME, index=False)
    pd.testing.assert_frame_equal(theory.load_theoretical_entropy(tmp_path / theory.CSV_NAME), table,
                                  check_exact=False, atol=1e-12)

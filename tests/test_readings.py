"""Readings with their uncertainty (issue 12), each against an independent computation."""

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from language_entropy.uncertainty import (
    RELIABILITY_COLUMNS,
    _auroc_by_ranks,
    auroc,
    bootstrap_auroc_interval,
    brier_score,
    sequence_calibration,
    wilson_interval,
)

Z = 1.959963984540054

# ---------------------------------------------------------------- Wilson interval


def wilson_closed_form(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson (1927) written out once more: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    spread = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (p + z**2 / (2 * n) - spread) / (1 + z**2 / n), (p + z**2 / (2 * n) + spread) / (1 + z**2 / n)


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # computed by hand at 40 significant digits (mpmath), rounded
    (41, 200, 0.15486176203836210, 0.26625698052422517),
    (0, 10, 0.0, 0.27753279986288920),
    (10, 10, 0.72246720013711080, 1.0),
    (1, 2, 0.09453120573423073, 0.90546879426576927),
])
def test_wilson_interval_hand_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-12)
    assert got == pytest.approx(wilson_closed_form(k, n), abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(41, 200), (3, 7), (1, 1000), (500, 1000)])
def test_wilson_bounds_are_the_roots_of_the_score_equation(k, n):
    # the interval is where the score test does not reject: (p - pi)^2 = z^2 pi (1 - pi) / n, a quadratic in pi
    p, c = k / n, Z**2 / n
    roots = np.sort(np.roots([1 + c, -(2 * p + c), p**2]))
    assert wilson_interval(k, n) == pytest.approx(tuple(roots), abs=1e-12)


def test_wilson_interval_z_and_errors():
    assert wilson_interval(41, 200, z=1.0) == pytest.approx(wilson_closed_form(41, 200, 1.0), abs=1e-12)
    low, high = wilson_interval(41, 200)
    low99, high99 = wilson_interval(41, 200, z=2.5758293035489004)
    assert low99 < low < 41 / 200 < high < high99
    for bad in [(0, 0), (3, 2), (-1, 5), (1.5, 4)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError, match="z"):
        wilson_interval(1, 2, z=0.0)


# ---------------------------------------------------------------- AUROC by ranks and its bootstrap


def test_auroc_by_ranks_hand_values():
    # sklearn's documented example: 3 of the 4 (positive, negative) pairs are ordered right
    assert _auroc_by_ranks(np.array([[0.1, 0.4, 0.35, 0.8]]), np.array([[0, 0, 1, 1]])) == pytest.approx([0.75])
    # ties: positives {2, 3}, negatives {1, 2}: pairs 1 + 1/2 + 1 + 1 = 3.5 of 4
    assert _auroc_by_ranks(np.array([[1.0, 2, 2, 3]]), np.array([[0, 0, 1, 1]])) == pytest.approx([0.875])
    one_class = _auroc_by_ranks(np.array([[1.0, 2.0]]), np.array([[1, 1]]))
    assert np.isnan(one_class).all()


def test_auroc_by_ranks_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(200, 57)).astype(float)  # few distinct values: many ties
    scores[:50] = rng.normal(size=(50, 57))  # and some rows without ties
    labels = (rng.random((200, 57)) < rng.uniform(0.05, 0.6, size=(200, 1))).astype(np.int64)
    got = _auroc_by_ranks(scores, labels)
    want = [roc_auc_score(y, s) for s, y in zip(scores, labels, strict=True)]
    assert got == pytest.approx(want, abs=1e-12)


def detection_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One generating process: 30% wrong answers, whose score is shifted up by 0.8 (AUROC about 0.71)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    return np.round(rng.normal(size=n) + 0.8 * labels, 1), labels  # rounded: ties happen


def bootstrap_by_sklearn(scores, labels, n_boot, seed, level):
    """The reference: the same resamples, each scored by sklearn, one at a time."""
    resamples = np.random.default_rng(seed).integers(0, len(scores), size=(n_boot, len(scores)))
    values = [roc_auc_score(labels[i], scores[i]) for i in resamples if labels[i].min() != labels[i].max()]
    return tuple(np.quantile(values, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize(("n", "n_boot", "level"), [(60, 300, 0.95), (15, 200, 0.9), (2500, 5, 0.5)])
def test_bootstrap_auroc_interval_equals_a_sklearn_bootstrap(n, n_boot, level):
    scores, labels = detection_data(n, seed=n)
    got = bootstrap_auroc_interval(scores, labels, n_boot=n_boot, seed=3, level=level)
    assert got == pytest.approx(bootstrap_by_sklearn(scores, labels, n_boot, 3, level), abs=1e-12)


def test_bootstrap_skips_one_class_resamples():
    # 1 wrong answer of 6: a resample misses it with probability (5/6)^6 = 0.33, and is skipped
    scores, labels = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9]), np.array([0, 0, 0, 0, 0, 1])
    got = bootstrap_auroc_interval(scores, labels, n_boot=400, seed=1)
    assert got == pytest.approx(bootstrap_by_sklearn(scores, labels, 400, 1, 0.95), abs=1e-12)
    assert got[1] == 1.0


def test_bootstrap_interval_contains_the_estimate_narrows_and_is_seeded():
    small, large = detection_data(100, seed=1), detection_data(2000, seed=2)
    widths = []
    for scores, labels in (small, large):
        low, high = bootstrap_auroc_interval(scores, labels)
        assert low <= auroc(scores, labels).value <= high
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]  # the width shrinks like 1/sqrt(n): sqrt(20) = 4.5 times here
    assert bootstrap_auroc_interval(*large, seed=7) == bootstrap_auroc_interval(*large, seed=7)
    assert bootstrap_auroc_interval(*large, seed=7) != bootstrap_auroc_interval(*large, seed=8)


def test_bootstrap_undefined_auroc_and_errors():
    assert bootstrap_auroc_interval([0.1, 0.2, 0.3], [0, 0, 0]) is None
    assert bootstrap_auroc_interval([], []) is None
    with pytest.raises(ValueError, match="finite"):
        bootstrap_auroc_interval([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_auroc_interval([0.1, 0.2], [0, 1], n_boot=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_auroc_interval([0.1, 0.2], [0, 1], level=1.0)


# ---------------------------------------------------------------- sequence-level calibration


def test_brier_score_hand_values():
    # (0.9 - 1)^2 + (0.2 - 0)^2 + (0.6 - 0)^2 = 0.01 + 0.04 + 0.36 = 0.41, over 3
    assert brier_score([0.9, 0.2, 0.6], [1, 0, 0]) == pytest.approx(0.41 / 3, abs=1e-15)
    assert brier_score([1.0, 0.0], [True, False]) == 0.0
    assert brier_score([0.5] * 4, [1, 0, 0, 1]) == 0.25
    assert brier_score([0.0, 1.0], [1, 0]) == 1.0


def test_brier_score_equals_sklearn():
    rng = np.random.default_rng(0)
    confidence = rng.random(1000)
    correct = (rng.random(1000) < 0.4).astype(int)
    assert brier_score(confidence, correct) == pytest.approx(brier_score_loss(correct, confidence), abs=1e-15)


def test_brier_score_errors():
    for confidence, correct in [([], []), ([0.5], [1, 0]), ([1.2], [1]), ([np.nan], [0]), ([0.5], [2])]:
        with pytest.raises(ValueError):
            brier_score(confidence, correct)


def test_sequence_calibration_hand_case():
    # 2 bins [0, 0.5) and [0.5, 1]: bin 0 holds confidence 0 (wrong): gap 0; bin 1 holds 0.5, 1, 1 with
    # 2 of 3 right: gap 2.5/3 - 2/3 = 1/6, weight 3/4 -> ECE 1/8. Brier (0 + 0.25 + 0 + 1) / 4 = 0.3125
    result = sequence_calibration([0.0, 0.5, 1.0, 1.0], [0, 1, 1, 0], n_bins=2)
    assert set(result) == {"ece", "brier", "n", "reliability"}
    assert result["ece"] == pytest.approx(0.125, abs=1e-15)
    assert result["brier"] == pytest.approx(0.3125, abs=1e-15)
    assert result["n"] == 4
    table = result["reliability"]
    assert tuple(table.columns) == RELIABILITY_COLUMNS
    assert table["count"].tolist() == [1, 3]
    assert table["gap"].tolist() == pytest.approx([0.0, 1 / 6])


def test_perfectly_calibrated_predictor():
    # confidence ~ U(0, 1), right with exactly that probability: ECE -> 0, and Brier -> E[c (1 - c)] = 1/6
    rng = np.random.default_rng(12)
    confidence = rng.random(200_000)
    correct = rng.random(200_000) < confidence
    result = sequence_calibration(confidence, correct)
    assert result["ece"] < 0.01
    assert result["brier"] == pytest.approx(1 / 6, abs=0.003)  # standard error of the mean about 0.0004
    assert result["n"] == 200_000
    overconfident = sequence_calibration(np.minimum(1.0, confidence + 0.2), correct)
    assert overconfident["ece"] > 0.1

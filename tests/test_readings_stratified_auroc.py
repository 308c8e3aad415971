"""AUROC within (operation, length) buckets (uncertainty.stratified_auroc) against per-bucket scikit-learn."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from language_entropy.uncertainty import (
    auroc,
    bootstrap_stratified_auroc_interval,
    interval_withheld,
    stratified_auroc,
    stratified_interval_withheld,
)


def bucketed(seed: int = 0, n: int = 800) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OOD-like data: four buckets of very different difficulty, a score that sees some of each error."""
    rng = np.random.default_rng(seed)
    strata = rng.choice(["add_4x4", "add_5x5", "sub_4x4", "sub_5x5"], n)
    error_rate = pd.Series(strata).map({"add_4x4": 0.5, "add_5x5": 0.7, "sub_4x4": 0.9, "sub_5x5": 0.95}).to_numpy()
    wrong = (rng.random(n) < error_rate).astype(int)
    return np.round(rng.normal(size=n) + 0.7 * wrong, 1), wrong, strata


def test_stratified_auroc_is_the_mean_of_per_bucket_sklearn_aurocs():
    scores, wrong, strata = bucketed()
    strata[:3], wrong[:3] = "mul_4x4", 1  # a bucket of wrong answers only: skipped
    got = stratified_auroc(scores, wrong, strata)
    per_bucket = [roc_auc_score(wrong[strata == s], scores[strata == s]) for s in sorted(set(strata))
                  if 0 < wrong[strata == s].sum() < (strata == s).sum()]
    assert len(per_bucket) == 4 and got.value == pytest.approx(np.mean(per_bucket), abs=1e-12)
    table = got.buckets.set_index("stratum")
    assert np.isnan(table.loc["mul_4x4", "auroc"]) and table.loc["mul_4x4", "n_wrong"] == 3
    assert table["n"].sum() == len(scores)


def test_a_score_that_only_knows_the_bucket_gets_one_half():
    scores, wrong, strata = bucketed(seed=1)
    difficulty = pd.Series(wrong).groupby(strata).transform("mean").to_numpy()  # the bucket's error rate
    assert auroc(difficulty, wrong).value > 0.6  # pooled, it is credited for telling hard buckets from easy ones
    got = stratified_auroc(difficulty, wrong, strata)
    assert got.value == 0.5 and (got.buckets["auroc"] == 0.5).all()


def test_undefined_when_no_bucket_has_both_classes():
    got = stratified_auroc([0.1, 0.2, 0.3], [0, 0, 1], ["a", "a", "b"])
    assert got.value is None and got.reason == "undefined: no bucket of 2 holds both wrong and right answers"
    assert bootstrap_stratified_auroc_interval([0.1, 0.2, 0.3], [0, 0, 1], ["a", "a", "b"]) is None
    with pytest.raises(ValueError, match="equal lengths"):
        stratified_auroc([0.1, 0.2], [0, 1], ["a"])


def test_stratified_bootstrap_resamples_within_buckets():
    scores, wrong, strata = bucketed(seed=2, n=300)
    low, high = bootstrap_stratified_auroc_interval(scores, wrong, strata, n_boot=200, seed=3)
    assert low < stratified_auroc(scores, wrong, strata).value < high
    assert bootstrap_stratified_auroc_interval(scores, wrong, strata, n_boot=200, seed=3) == (low, high)
    # the reference: the same draws, each bucket scored by sklearn, one resample at a time
    rng = np.random.default_rng(3)
    draws = {s: np.flatnonzero(strata == s)[rng.integers(0, (strata == s).sum(), size=(200, (strata == s).sum()))]
             for s in sorted(set(strata))}
    means = []
    for r in range(200):
        rows = [d[r] for d in draws.values()]
        means.append(np.mean([roc_auc_score(wrong[i], scores[i]) for i in rows if 0 < wrong[i].sum() < len(i)]))
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)


def test_interval_withheld_below_ten_of_a_class():
    assert interval_withheld([1, 1, 1] + [0] * 50) == "no interval: 3 wrong answers (fewer than 10)"
    assert interval_withheld([1] * 50 + [0]) == "no interval: 1 right answer (fewer than 10)"
    assert interval_withheld([1] * 4 + [0] * 5) == "no interval: 4 wrong answers and 5 right answers (fewer than 10)"
    assert interval_withheld([1] * 10 + [0] * 10) is None


def test_the_within_bucket_interval_is_withheld_per_bucket():
    # 50 wrong and 50 right over the split, enough for the pooled rule; but bucket b holds 3 wrong of 20, and its
    # bootstrap resamples those 3 on their own: withheld. Bucket c (all right) is not in the mean and not counted.
    labels = [1] * 47 + [0] * 33 + [1] * 3 + [0] * 17 + [0] * 5
    strata = ["a"] * 80 + ["b"] * 20 + ["c"] * 5
    assert interval_withheld(labels) is None
    assert stratified_interval_withheld(labels, strata) == \
        "no interval: in b 3 wrong answers (fewer than 10 in a bucket)"
    assert stratified_interval_withheld([1] * 10 + [0] * 10 + [0] * 5, ["a"] * 20 + ["c"] * 5) is None

"""Metrics that relate the model's uncertainty to its correctness (used by the evaluate stage).

Pure functions on numpy arrays, sequences and pandas frames; no model code. Token-level entropy
summaries live in `language_entropy.entropy`.

- `auroc`: how well an uncertainty score separates wrong answers from right ones.
- `expected_calibration_error`: how well a confidence matches the accuracy it claims.
- `semantic_clusters`, `discrete_semantic_entropy`, `weighted_semantic_entropy`,
  `reference_semantic_entropy` and the batch `semantic_entropy_by_problem`: entropy over the
  *meanings* of sampled answers (the idea of Kuhn, Gal & Farquhar, "Semantic Uncertainty", ICLR
  2023; the estimators of Farquhar et al., "Detecting hallucinations in large language models using
  semantic entropy", Nature 2024: the discrete one as theirs, `reference_semantic_entropy` as their
  `semantic_uncertainty` code's likelihood-weighted one, `weighted_semantic_entropy` this project's
  variant of it).
- `perplexity`, `digit_accuracy`: plain accuracy and likelihood summaries.
- `wilson_interval`, `bootstrap_auroc_interval`: how far a proportion or an AUROC can be trusted;
  `interval_withheld`: why an AUROC interval is not given (too few wrong or right answers).
- `stratified_auroc`, `bootstrap_stratified_auroc_interval`: the AUROC within each (operation,
  operand lengths) bucket, averaged over buckets: a score that only tells the hard bucket from the
  easy one gets 0.5, where the pooled AUROC would credit it.
- `brier_score`, `sequence_calibration`: calibration of one confidence per whole answer.

Entropies are in bits (`reference_semantic_entropy` in nats, as its reference); log-probabilities and
negative log-likelihoods are in nats.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from language_entropy.problems import INTEGER  # ASCII digits only: int() would also accept " 12", "1_2" and "١٢"

RELIABILITY_COLUMNS = ("bin", "bin_lower", "bin_upper", "count", "confidence", "accuracy", "gap")
SEMANTIC_SAMPLE_COLUMNS = ("problem", "answer", "logprob", "length", "eos_logprob", "ended")


@dataclass(frozen=True)
class AurocResult:
    """An AUROC, or None with the reason it is undefined (e.g. "undefined: all 200 answers are right")."""

    value: float | None
    reason: str | None = None


def auroc(scores: ArrayLike, labels: ArrayLike) -> AurocResult:
    """Area under the ROC curve of an uncertainty score as a detector of wrong answers.

    scores: one uncertainty score per answer, higher = more likely wrong (e.g. entropy).
    labels: 1 (or True) where the greedy answer is wrong, 0 (or False) where it is right.

    AUROC = P(score of a random wrong answer > score of a random right answer), a tied pair
    counting 1/2 (the Mann-Whitney U statistic / (n_wrong * n_right)), computed by
    `sklearn.metrics.roc_auc_score`. 0.5 = no better than chance, 1 = every wrong answer scores
    above every right one.

    With no wrong or no right answer there is no pair to compare and the AUROC is undefined: the
    result is ``AurocResult(None, "undefined: all N answers are right")`` (or "wrong"), never a
    made-up 0.5 or 1. A NaN or infinite score raises ValueError, as do mismatched lengths and
    labels other than 0/1.
    """
    scores = _vector(scores, "scores")
    labels = _binary(labels, "labels")
    _same_length(scores, labels, "scores", "labels")
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(f"scores must be finite: {int(np.isnan(scores).sum())} NaN and "
                         f"{int(np.isinf(scores).sum())} infinite of {scores.size}, "
                         f"first at index {int(np.argmax(bad))}")
    n = labels.size
    if n == 0:
        return AurocResult(None, "undefined: no answers")
    if labels.min() == labels.max():
        verdict = "wrong" if labels[0] else "right"
        subject = f"all {n} answers are" if n > 1 else "the only answer is"
        return AurocResult(None, f"undefined: {subject} {verdict}")
    return AurocResult(float(roc_auc_score(labels, scores)))


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike,
                               n_bins: int = 15) -> tuple[float, pd.DataFrame]:
    """Expected calibration error and its reliability table (Guo et al., ICML 2017; Naeini et al., AAAI 2015).

    confidence: the model's probability that each answer is right, in [0, 1].
    correct: 1 (or True) where the answer is right.

    Bin b of `n_bins` equal-width bins holds the confidences in (b / n_bins, (b + 1) / n_bins]; the
    first bin also holds 0. A confidence on a bin edge goes to the lower bin, as Guo et al.'s
    B_m = ((m - 1) / M, m / M], and exactly as scikit-learn's `calibration_curve` (strategy
    "uniform") assigns it: the edges are ``np.linspace(0, 1, n_bins + 1)`` and the bin is
    ``np.searchsorted(edges[1:-1], confidence)`` (side "left"), so an edge is the float linspace
    gives (``0.57`` of 100 bins is on edge 57 and goes to bin 56).

        ECE = sum_b (n_b / N) * |acc_b - conf_b|

    where n_b is the bin's count, acc_b its fraction right and conf_b its mean confidence.
    The table has one row per bin: ``bin, bin_lower, bin_upper, count, confidence, accuracy, gap``
    with ``gap = confidence - accuracy`` (> 0: overconfident); an empty bin has count 0 and NaN
    confidence, accuracy and gap.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1 (got {n_bins})")
    confidence = _vector(confidence, "confidence")
    correct = _binary(correct, "correct")
    _same_length(confidence, correct, "confidence", "correct")
    if confidence.size == 0:
        raise ValueError("expected_calibration_error needs at least one answer")
    outside = ~((confidence >= 0.0) & (confidence <= 1.0))  # also catches NaN
    if outside.any():
        first = int(np.argmax(outside))
        raise ValueError(f"confidence must be in [0, 1]: {int(outside.sum())} of {confidence.size} are not, "
                         f"first {float(confidence[first])} at index {first}")

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence)  # scikit-learn's rule: an edge goes to the lower bin
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: 0 / 0 = NaN, as documented
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    gap = mean_confidence - accuracy
    table = pd.DataFrame({
        "bin": np.arange(n_bins), "bin_lower": edges[:-1], "bin_upper": edges[1:], "count": count,
        "confidence": mean_confidence, "accuracy": accuracy, "gap": gap,
    })
    filled = count > 0
    ece = float(np.sum(count[filled] / confidence.size * np.abs(gap[filled])))
    return ece, table


def semantic_clusters(answers: Sequence[str]) -> list[int]:
    """Cluster answers by meaning: the cluster id (0, 1, ... in order of first appearance) of each answer.

    Two answers mean the same when both parse as the same integer: an optional ``+`` or ``-``
    then one or more ASCII digits, so ``012`` = ``12``, ``-0`` = ``0`` = ``+0`` and ``-05`` = ``-5``.
    Any other string (``1a``, empty, ``--3``, ``1-2``, ``12-``, ``12`` with a leading space) has no
    numeric meaning and is its own cluster, shared only with identical strings. This is the
    arithmetic analogue of the bidirectional-entailment clustering of Kuhn et al. (2023), with
    meaning equivalence decided exactly.
    Answers are as a person writes them: a well-formed emitted answer un-reversed, any other left as
    emitted (`problems.written_if_well_formed`), so a malformed one never becomes a number.
    """
    ids: dict[tuple[str, object], int] = {}
    return [ids.setdefault(_meaning(answer), len(ids)) for answer in answers]


def discrete_semantic_entropy(answers: Sequence[str]) -> float:
    """Discrete semantic entropy in bits (Farquhar et al. 2024): entropy of the cluster frequencies.

        SE = -sum_c p_c log2 p_c,  p_c = (samples in cluster c) / (all samples)

    0 when every sample means the same; log2(n) when n samples mean n different things.
    """
    if len(answers) == 0:
        raise ValueError("discrete_semantic_entropy needs at least one answer")
    clusters = np.asarray(semantic_clusters(answers))
    return float(_grouped_entropy_bits(np.zeros_like(clusters), clusters, np.ones(clusters.size))[0])


def weighted_semantic_entropy(answers: Sequence[str], sequence_logprobs: ArrayLike, lengths: ArrayLike) -> float:
    """This project's likelihood-weighted semantic entropy in bits, for one problem's samples.

    answers: the sampled answers, as a person writes them.
    sequence_logprobs: log-probability in nats of each whole generated sequence, EOS included.
    lengths: each sequence's token count (EOS included), >= 1.

    Each distinct sequence s gets its length-normalised likelihood w_s = exp(logprob_s / length_s)
    (the geometric-mean token probability, EOS included); a cluster's mass is the sum over the
    distinct sequences in it, and masses are renormalised over clusters:

        SE = -sum_c p_c log2 p_c,  p_c = sum_{s in c} w_s / sum_s w_s

    Distinct: a sequence sampled twice counts once, so the weights estimate the model's own
    probabilities rather than adding the sampling frequency on top. This is where it departs from
    the reference estimator of Farquhar et al. 2024 (`reference_semantic_entropy`: every sample
    counted, EOS outside the length, nats): 9 x "5" and 1 x "7" at equal likelihood give 1 bit here
    and 0.325 nats (0.469 bits) there. A sequence is identified by its answer string and token count
    (one token per character, and only well-formed answers un-reversed, make the pair identify the
    tokens); a repeat's logprob equals the first's up to floating-point noise, and the first is used.
    """
    logprobs, lengths = _one_problem(answers, sequence_logprobs, lengths)
    samples = pd.DataFrame({"problem": 0, "answer": list(answers), "logprob": logprobs, "length": lengths,
                            "eos_logprob": 0.0, "ended": False})
    return float(semantic_entropy_by_problem(samples)["weighted_semantic_entropy"].iloc[0])


def reference_semantic_entropy(answers: Sequence[str], answer_logprobs: ArrayLike, answer_lengths: ArrayLike) -> float:
    """Likelihood-weighted semantic entropy in nats as Farquhar et al. 2024's `semantic_uncertainty`
    code computes it, for one problem's samples.

    answers: the sampled answers, as a person writes them.
    answer_logprobs: log-probability in nats of each sample's tokens before its stop token (EOS).
    answer_lengths: the number of those tokens, >= 1.

    Every sample i counts (repeats included) with the log of its length-normalised likelihood,
    l_i = answer_logprob_i / answer_length_i (the mean token log-likelihood, the stop token cut
    out); a cluster's log-mass is the logsumexp of its samples' l_i minus the logsumexp over all
    samples, and the entropy is -sum_c p_c ln p_c (their `logsumexp_by_id` with "sum_normalized",
    then `predictive_entropy_rao`). 9 x "5" and 1 x "7" at equal likelihood: p = (0.9, 0.1), 0.325 nats.
    """
    logprobs, lengths = _one_problem(answers, answer_logprobs, answer_lengths)
    samples = pd.DataFrame({"problem": 0, "answer": list(answers), "logprob": logprobs, "length": lengths,
                            "eos_logprob": 0.0, "ended": False})
    return float(semantic_entropy_by_problem(samples)["reference_semantic_entropy"].iloc[0])


def _one_problem(answers: Sequence[str], logprobs: ArrayLike, lengths: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    logprobs, lengths = np.asarray(logprobs, dtype=float), np.asarray(lengths)
    if not (len(answers) == logprobs.size == lengths.size):
        raise ValueError(f"answers, logprobs and lengths must have equal lengths "
                         f"(got {len(answers)}, {logprobs.size}, {lengths.size})")
    return logprobs, lengths


def semantic_entropy_by_problem(samples: pd.DataFrame) -> pd.DataFrame:
    """Semantic entropies of many problems at once, vectorised over problems.

    samples: one row per sampled answer with columns ``problem`` (any hashable id), ``answer``
    (str, as a person writes it), ``logprob`` (nats, whole sequence with EOS), ``length``
    (token count with EOS), ``eos_logprob`` (nats, the log-probability of the EOS the sequence
    ended with, 0 where it has none) and ``ended`` (bool, whether it ended with an EOS):
    `measure.sample_sequences`'s columns.

    Returns one row per problem (index ``problem``, sorted) with columns ``n_samples``,
    ``n_clusters``, ``discrete_semantic_entropy`` and ``weighted_semantic_entropy`` (bits) and
    ``reference_semantic_entropy`` (nats), each exactly as the single-problem function of that
    name defines it. The reference estimator sees each sequence without its EOS (logprob minus
    eos_logprob over length minus ended tokens); an empty answer, the EOS alone, keeps its EOS as
    its one token (a mean over no tokens is undefined).
    """
    missing = [column for column in SEMANTIC_SAMPLE_COLUMNS if column not in samples.columns]
    if missing:
        raise ValueError(f"samples lack columns {missing} (need {list(SEMANTIC_SAMPLE_COLUMNS)})")
    if samples.empty:
        raise ValueError("semantic_entropy_by_problem needs at least one sample")
    logprob = samples["logprob"].to_numpy(dtype=float)
    length = samples["length"].to_numpy()
    if not np.isfinite(logprob).all():
        raise ValueError(f"logprob must be finite: {int((~np.isfinite(logprob)).sum())} values are not")
    if not np.issubdtype(length.dtype, np.integer) or (length < 1).any():
        raise ValueError(f"length must be integer token counts >= 1 (got dtype {length.dtype}, min {length.min()})")

    problem_codes, problems = pd.factorize(samples["problem"], sort=True)
    if (problem_codes < 0).any():
        raise ValueError(f"problem must not be missing: {int((problem_codes < 0).sum())} rows have no problem id")
    cluster_codes, _ = pd.factorize(samples["answer"].map(_meaning))
    n_samples = np.bincount(problem_codes, minlength=problems.size)
    discrete = _grouped_entropy_bits(problem_codes, cluster_codes, np.ones(problem_codes.size))
    n_clusters = pd.Series(cluster_codes).groupby(problem_codes).nunique().to_numpy()

    sequences = pd.DataFrame({"problem": problem_codes, "answer": samples["answer"].to_numpy(), "length": length})
    distinct = ~sequences.duplicated().to_numpy()
    per_token = logprob[distinct] / length[distinct]
    # Subtracting each problem's largest per-token logprob cancels in the renormalisation
    # and keeps exp() from underflowing.
    per_token -= pd.Series(per_token).groupby(problem_codes[distinct]).transform("max").to_numpy()
    weighted = _grouped_entropy_bits(problem_codes[distinct], cluster_codes[distinct], np.exp(per_token))

    # the reference: every sample, the stop token cut out (kept where it is the whole sequence), nats
    ended = samples["ended"].to_numpy(dtype=bool) & (length > 1)
    mean_loglik = (logprob - np.where(ended, samples["eos_logprob"].to_numpy(dtype=float), 0.0)) / (length - ended)
    mean_loglik -= pd.Series(mean_loglik).groupby(problem_codes).transform("max").to_numpy()  # cancels, as above
    reference = _grouped_entropy_bits(problem_codes, cluster_codes, np.exp(mean_loglik)) * math.log(2)

    return pd.DataFrame({
        "n_samples": n_samples, "n_clusters": n_clusters,
        "discrete_semantic_entropy": discrete, "weighted_semantic_entropy": weighted,
        "reference_semantic_entropy": reference,
    }, index=pd.Index(problems, name="problem"))


def perplexity(nll_nats_sum: float, token_count: int) -> dict[str, float]:
    """Per-token cross-entropy and perplexity from a summed negative log-likelihood.

    nll_nats_sum: sum over scored tokens of -ln p(token); token_count: how many tokens.
    Returns ``nll_nats_per_token`` (mean cross-entropy), ``nll_bits_per_token`` (the same / ln 2)
    and ``perplexity = exp(nll_nats_per_token)``: a model uniform over V tokens has perplexity V.
    """
    if token_count < 1:
        raise ValueError(f"token_count must be >= 1 (got {token_count})")
    if not (math.isfinite(nll_nats_sum) and nll_nats_sum >= 0):
        raise ValueError(f"nll_nats_sum must be finite and >= 0 (got {nll_nats_sum})")
    nats = float(nll_nats_sum) / int(token_count)
    return {"nll_nats_per_token": nats, "nll_bits_per_token": nats / math.log(2), "perplexity": math.exp(nats)}


def digit_accuracy(predicted: Sequence[str], expected: Sequence[str]) -> float:
    """Fraction of the expected answers' characters the predictions match, aligned from the units digit.

    Each pair is compared right-aligned, as a person lines up numbers: the last characters, then
    the ones before them, and so on. Every character of the expected answer (its sign included)
    counts once; where the prediction is too short the missing characters count as wrong, and
    extra leading characters of a longer prediction are not counted (exact match sees those).
    E.g. predicted ``124`` for ``123`` matches 2 of 3, ``7`` for ``-7`` 1 of 2, ``12`` for ``123``
    0 of 3. The result is pooled over all characters: sum of matches / sum of expected lengths.
    """
    _same_length(predicted, expected, "predicted", "expected")
    total = sum(len(answer) for answer in expected)
    if total == 0:
        raise ValueError("digit_accuracy needs at least one expected character")
    matched = sum(p == e for pred, exp in zip(predicted, expected, strict=True)
                  for p, e in zip(reversed(pred), reversed(exp), strict=False))  # stops at the shorter: missing = wrong
    return matched / total




def _meaning(answer: str) -> tuple[str, object]:
    """The clustering key of an answer: ("int", value) when it parses as an integer, else ("str", answer)."""
    if not isinstance(answer, str):
        raise TypeError(f"answers must be str (got {type(answer).__name__}: {answer!r})")
    return ("int", int(answer)) if INTEGER.fullmatch(answer) else ("str", answer)


def _grouped_entropy_bits(groups: np.ndarray, clusters: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Entropy in bits of each group's cluster distribution, masses summed per cluster and renormalised.

    groups: codes 0..G-1 (every code present); clusters: cluster key per item; mass: >= 0 per item.
    Returns G entropies, in group-code order; a cluster of zero mass contributes 0 (0 log 0 = 0).
    """
    per_cluster = pd.Series(mass).groupby([groups, clusters]).sum()
    group_of = per_cluster.index.get_level_values(0)
    p = (per_cluster / per_cluster.groupby(level=0).transform("sum")).to_numpy()
    terms = np.zeros_like(p)
    positive = p > 0
    terms[positive] = -p[positive] * np.log2(p[positive])
    return pd.Series(terms).groupby(group_of.to_numpy()).sum().sort_index().to_numpy()


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    """`values` as a one-dimensional float array; any other shape raises ValueError naming `name`."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (got shape {array.shape})")
    return array


def _binary(values: ArrayLike, name: str) -> np.ndarray:
    """`values` as a 0/1 int array; anything but 0/1 or booleans raises ValueError naming `name`."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (got shape {array.shape})")
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be 0/1 or booleans (got values {np.unique(array)[:5].tolist()})")
    return array.astype(np.int64)


def _same_length(a: Sequence | np.ndarray, b: Sequence | np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} must have equal lengths (got {len(a)} and {len(b)})")


# ---------------------------------------------------------------------------------------------
# Readings with their uncertainty (issue 12): intervals and sequence-level calibration

_Z_95 = 1.959963984540054  # the 97.5th percentile of the standard normal
_BOOTSTRAP_CHUNK = 1_000_000  # resampled values ranked at once: bounds the memory of a bootstrap


def wilson_interval(successes: int, n: int, z: float = _Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson, JASA 1927), 95% with the default `z`.

    successes of n trials (e.g. exact matches of n problems), p = successes / n:

        center = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    and the interval is [center - half, center + half], clipped to [0, 1] against rounding and exactly
    0 (1) at 0 (n) successes, where the formula gives 0 (1) up to rounding (its
    bounds are the two proportions pi with (p - pi)^2 = z^2 pi (1 - pi) / n). Unlike p +- z *
    sqrt(p (1 - p) / n) it has width > 0 at 0 of n and n of n. n = 0 raises ValueError, as do
    successes outside 0..n and a z that is not positive and finite.
    """
    try:
        successes, n = operator.index(successes), operator.index(n)
    except TypeError:
        raise ValueError(f"successes and n must be integers (got {successes!r} and {n!r})") from None
    if n < 1:
        raise ValueError(f"wilson_interval needs n >= 1 trials (got {n})")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..n (got {successes} of {n})")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be positive and finite (got {z})")
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact ends: rounding leaves 1e-17 there
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def bootstrap_auroc_interval(scores: ArrayLike, labels: ArrayLike, n_boot: int = 1000, seed: int = 0,
                             level: float = 0.95, groups: ArrayLike | None = None) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `auroc(scores, labels)`, resampling problems with replacement.

    scores, labels: as for `auroc` (labels 1 where the answer is wrong), one per problem.
    The resamples are the rows of ``np.random.default_rng(seed).integers(0, n, size=(n_boot, n))``
    (so the same seed gives the same interval); a resample holding one class only has no AUROC
    and is skipped. The interval is the (1 - level) / 2 and (1 + level) / 2 quantiles
    (``np.quantile``, linear interpolation) of the resampled AUROCs, each computed from ranks
    (Mann-Whitney U with average ranks for ties, equal to `sklearn.metrics.roc_auc_score`).

    groups: optional, one id per item (e.g. the problem of each answer token). Items of one group
    are not independent, so the groups are resampled instead (a cluster bootstrap): the resamples
    are the rows of ``integers(0, G, size=(n_boot, G))`` over the G distinct ids (in sorted
    order), and a group drawn k times enters its resample's AUROC with all its items, k times.
    With every item its own group this is the plain bootstrap above, resample for resample.

    None when the AUROC itself is undefined (one class only, or no answers), and when no resample
    holds both classes (possible only with very few problems or resamples). Invalid scores or
    labels raise ValueError as in `auroc`.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 (got {n_boot})")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    if auroc(scores, labels).value is None:  # also validates scores and labels
        return None
    scores = _vector(scores, "scores")
    labels = _binary(labels, "labels")
    n = scores.size
    rng = np.random.default_rng(seed)
    if groups is None:
        resamples = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n) problem indices
        rows = max(1, _BOOTSTRAP_CHUNK // n)
        values = np.concatenate([_auroc_by_ranks(scores[chunk], labels[chunk])
                                 for chunk in np.array_split(resamples, list(range(rows, n_boot, rows)))])
    else:
        codes, uniques = pd.factorize(np.asarray(groups), sort=True)
        if len(codes) != n:
            raise ValueError(f"groups must have one id per score (got {len(codes)} for {n} scores)")
        if (codes < 0).any():
            raise ValueError("groups must not hold missing ids")
        resamples = rng.integers(0, len(uniques), size=(n_boot, len(uniques)))  # (n_boot, G) group indices
        rows = max(1, _BOOTSTRAP_CHUNK // max(n, len(uniques)))
        values = np.concatenate([_grouped_auroc(scores, labels, codes, len(uniques), chunk)
                                 for chunk in np.array_split(resamples, list(range(rows, n_boot, rows)))])
    values = values[~np.isnan(values)]  # resamples with a single class
    if values.size == 0:
        return None
    low, high = np.quantile(values, [(1.0 - level) / 2, (1.0 + level) / 2])
    return float(low), float(high)


def brier_score(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Brier score (Brier, Monthly Weather Review 1950): mean of (confidence - correct)^2.

    confidence: the model's probability that each answer is right, in [0, 1]; correct: 1 (or True)
    where it is right. 0 is perfect; always answering 0.5 scores 0.25. Empty input, mismatched
    lengths, confidences outside [0, 1] (or NaN) and labels other than 0/1 raise ValueError.
    """
    confidence, correct = _confidence_and_correct(confidence, correct, "brier_score")
    return float(np.mean((confidence - correct) ** 2))


def sequence_calibration(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> dict:
    """Calibration of one confidence per answer (a whole sequence, e.g. its probability) against exact match.

    Returns ``{"ece", "brier", "n", "reliability"}``: `expected_calibration_error` with `n_bins`
    equal-width bins, `brier_score`, the number of answers, and the reliability table of
    `expected_calibration_error` (columns `RELIABILITY_COLUMNS`).
    """
    confidence, correct = _confidence_and_correct(confidence, correct, "sequence_calibration")
    ece, table = expected_calibration_error(confidence, correct, n_bins=n_bins)
    return {"ece": ece, "brier": brier_score(confidence, correct), "n": int(confidence.size), "reliability": table}


def _confidence_and_correct(confidence: ArrayLike, correct: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated (confidence in [0, 1] as floats, correct as 0/1 ints) of equal, non-zero length."""
    confidence = _vector(confidence, "confidence")
    correct = _binary(correct, "correct")
    _same_length(confidence, correct, "confidence", "correct")
    if confidence.size == 0:
        raise ValueError(f"{what} needs at least one answer")
    outside = ~((confidence >= 0.0) & (confidence <= 1.0))  # also catches NaN
    if outside.any():
        first = int(np.argmax(outside))
        raise ValueError(f"confidence must be in [0, 1]: {int(outside.sum())} of {confidence.size} are not, "
                         f"first {float(confidence[first])} at index {first}")
    return confidence, correct


def _auroc_by_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each row of `scores` (R, n) as a detector of `labels` (R, n) == 1; NaN for a one-class row.

    Mann-Whitney: with r the rank of each score in its row (1..n, tied scores sharing the average
    of their ranks) and n1 the row's positives, AUROC = (sum of the positives' r - n1 (n1 + 1) / 2)
    / (n1 (n - n1)), which counts a tied (positive, negative) pair as 1/2, like `roc_auc_score`.
    """
    R, n = scores.shape
    order = np.argsort(scores, axis=1, kind="stable")  # (R, n)
    ordered = np.take_along_axis(scores, order, axis=1)  # (R, n) ascending
    position = np.broadcast_to(np.arange(n), (R, n))
    starts = np.ones((R, n), dtype=bool)  # a tie group starts here
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones((R, n), dtype=bool)  # a tie group ends here
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)  # group's first position
    last = np.minimum.accumulate(np.where(ends, position, n)[:, ::-1], axis=1)[:, ::-1]  # its last
    rank = (first + last) / 2.0 + 1.0  # (R, n) average rank, 1-based
    positive = np.take_along_axis(labels, order, axis=1)  # (R, n) 0/1 in the same order
    n_pos = positive.sum(axis=1)
    n_neg = n - n_pos
    u = (rank * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):  # one class: 0 / 0 = NaN, as documented
        return u / (n_pos * n_neg)


def _grouped_auroc(scores: np.ndarray, labels: np.ndarray, codes: np.ndarray, n_groups: int,
                   resamples: np.ndarray) -> np.ndarray:
    """AUROC of each cluster resample (R, G) of group indices: item i counts as often as its group
    codes[i] was drawn; NaN for a resample with one class only.

    With w the counts and the distinct scores v ascending, Mann-Whitney with weights:
    AUROC = sum_v W+(v) (W-(< v) + W-(v) / 2) / (W+ W-), W+(v), W-(v) the weight of the positives
    and negatives scoring v (a tied pair counts 1/2).
    """
    values, level = np.unique(scores, return_inverse=True)  # level: index of each item's score
    R, U = len(resamples), len(values)
    draws = np.zeros((R, n_groups))
    np.add.at(draws, (np.repeat(np.arange(R), resamples.shape[1]), resamples.ravel()), 1.0)
    weight = draws[:, codes]  # (R, n): how often each item is in each resample
    cell = (np.arange(R)[:, None] * U + level[None, :]).ravel()  # (R * n,) the (resample, score) of each item
    positive = np.bincount(cell, weights=(weight * labels).ravel(), minlength=R * U).reshape(R, U)
    negative = np.bincount(cell, weights=(weight * (1 - labels)).ravel(), minlength=R * U).reshape(R, U)
    below = np.cumsum(negative, axis=1) - negative  # negatives scoring strictly less
    pairs = (positive * (below + negative / 2)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # one class: 0 / 0 = NaN, skipped by the caller
        return pairs / (positive.sum(axis=1) * negative.sum(axis=1))


# ---------------------------------------------------------------------------------------------
# AUROC within buckets (issue 26)

MIN_CLASS_FOR_INTERVAL = 10  # wrong and right answers an AUROC interval needs: with 2-3 of a class it means little


def interval_withheld(labels: ArrayLike, minimum: int = MIN_CLASS_FOR_INTERVAL) -> str | None:
    """Why no interval is given for an AUROC over `labels` (1 = wrong): "no interval: 3 wrong answers
    (fewer than 10)", or None when each class has at least `minimum` members. A bootstrap over 2-3
    wrong answers resamples the same few points and draws a narrow interval it cannot back."""
    short = _short_classes(_binary(labels, "labels"), minimum)
    return f"no interval: {short} (fewer than {minimum})" if short else None


def _short_classes(labels: np.ndarray, minimum: int) -> str:
    """The classes of 0/1 `labels` with fewer than `minimum` members, e.g. "3 wrong answers"; "" when none."""
    wrong = int(labels.sum())
    counts = {"wrong": wrong, "right": labels.size - wrong}
    return " and ".join(f"{count} {name} answer{'s' if count != 1 else ''}"
                        for name, count in counts.items() if count < minimum)


def stratified_interval_withheld(labels: ArrayLike, strata: ArrayLike,
                                 minimum: int = MIN_CLASS_FOR_INTERVAL) -> str | None:
    """Why no interval is given for a within-bucket AUROC (`stratified_auroc`) over `labels` (1 = wrong):
    the rule of `interval_withheld` applied in each bucket the estimate averages (those holding both
    classes), since the bootstrap resamples each of them on its own: "no interval: in sub_4x5 3 right
    answers (fewer than 10 in a bucket)", or None when every such bucket has at least `minimum` of each class."""
    labels, strata = _binary(labels, "labels"), np.asarray(strata)
    _same_length(labels, strata, "labels", "strata")
    short = []
    for stratum in sorted(set(strata.tolist())):
        inside = labels[strata == stratum]
        if inside.min() != inside.max() and (classes := _short_classes(inside, minimum)):  # both classes: averaged
            short.append(f"in {stratum} {classes}")
    return f"no interval: {'; '.join(short)} (fewer than {minimum} in a bucket)" if short else None


@dataclass(frozen=True)
class StratifiedAuroc:
    """The mean of per-bucket AUROCs (None with the reason when no bucket has both classes) and the
    buckets: ``stratum``, ``n``, ``n_wrong``, ``auroc`` (NaN where the bucket has one class only)."""

    value: float | None
    reason: str | None
    buckets: pd.DataFrame


def stratified_auroc(scores: ArrayLike, labels: ArrayLike, strata: ArrayLike) -> StratifiedAuroc:
    """AUROC of `scores` as a detector of `labels` == 1 within each stratum (e.g. the bucket
    ``add_4x5``), averaged over the strata with both classes, each stratum counting once.

    Per stratum the AUROC is `sklearn.metrics.roc_auc_score` (as `auroc`); a stratum whose answers are
    all right or all wrong has none and is skipped. Averaging within-bucket AUROCs removes what the
    pooled AUROC credits for knowing which bucket is hard: a score constant within each bucket gets 0.5.
    """
    scores, labels = _vector(scores, "scores"), _binary(labels, "labels")
    strata = np.asarray(strata)
    _same_length(scores, labels, "scores", "labels")
    _same_length(scores, strata, "scores", "strata")
    auroc(scores, labels)  # validates the scores (finite)
    rows = []
    for stratum in sorted(set(strata.tolist())):
        inside = strata == stratum
        result = auroc(scores[inside], labels[inside])
        rows.append({"stratum": stratum, "n": int(inside.sum()), "n_wrong": int(labels[inside].sum()),
                     "auroc": math.nan if result.value is None else result.value})
    buckets = pd.DataFrame(rows, columns=["stratum", "n", "n_wrong", "auroc"])
    scored = buckets["auroc"].dropna()
    if scored.empty:
        return StratifiedAuroc(None, f"undefined: no bucket of {len(buckets)} holds both wrong and right answers",
                               buckets)
    return StratifiedAuroc(float(scored.mean()), None, buckets)


def bootstrap_stratified_auroc_interval(scores: ArrayLike, labels: ArrayLike, strata: ArrayLike, n_boot: int = 1000,
                                        seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `stratified_auroc`, resampling problems within each stratum.

    Each stratum the estimate uses (both classes present) is resampled with replacement on its own,
    ``integers(0, n_s, size=(n_boot, n_s))`` from one ``default_rng(seed)`` in sorted stratum order; a
    resample's value is the mean of its strata's AUROCs, a stratum drawn with one class only left out
    of that mean. None when the estimate is undefined or no resample holds both classes in any stratum.
    """
    estimate = stratified_auroc(scores, labels, strata)  # validates
    if estimate.value is None:
        return None
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 (got {n_boot})")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    scores, labels, strata = _vector(scores, "scores"), _binary(labels, "labels"), np.asarray(strata)
    rng = np.random.default_rng(seed)
    per_stratum = []
    for stratum in estimate.buckets.loc[estimate.buckets["auroc"].notna(), "stratum"]:
        members = np.flatnonzero(strata == stratum)
        draws = members[rng.integers(0, members.size, size=(n_boot, members.size))]  # (n_boot, n_s)
        per_stratum.append(_auroc_by_ranks(scores[draws], labels[draws]))  # (n_boot,)
    values = np.stack(per_stratum, axis=1)  # (n_boot, strata)
    defined = np.isfinite(values).any(axis=1)
    if not defined.any():  # possible only with very few answers of a class
        return None
    means = np.nanmean(values[defined], axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2, (1.0 + level) / 2])
    return float(low), float(high)

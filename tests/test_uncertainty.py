"""Uncertainty metrics against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve

from language_entropy.problems import written_if_well_formed
from language_entropy.uncertainty import (
    RELIABILITY_COLUMNS,
    AurocResult,
    auroc,
    digit_accuracy,
    discrete_semantic_entropy,
    expected_calibration_error,
    perplexity,
    reference_semantic_entropy,
    semantic_clusters,
    semantic_entropy_by_problem,
    weighted_semantic_entropy,
)

# ---------------------------------------------------------------- AUROC


def test_auroc_known_value():
    # wrong answers score 0.35 and 0.8, right ones 0.1 and 0.4: of the 4 (wrong, right) pairs,
    # only (0.35, 0.4) is ordered the wrong way -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == AurocResult(0.75, None)


def test_auroc_tied_pair_counts_half():
    # pairs: (0.5 vs 0.2) = 1, (0.5 vs 0.5) tie = 0.5, (0.9 vs 0.2) = 1, (0.9 vs 0.5) = 1 -> 3.5/4
    assert auroc([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]).value == pytest.approx(0.875)
    # every score tied: a genuine 0.5, distinct from the undefined case
    assert auroc([0.3, 0.3, 0.3], [0, 1, 1]).value == pytest.approx(0.5)


def test_auroc_accepts_booleans_and_perfect_ranking():
    assert auroc(np.array([0.9, 0.1, 0.7]), np.array([True, False, True])).value == pytest.approx(1.0)
    assert auroc([0.9, 0.1, 0.7], [0, 1, 0]).value == pytest.approx(0.0)


def test_auroc_undefined_when_all_right():
    result = auroc(np.linspace(0, 1, 200), np.zeros(200, dtype=int))
    assert result.value is None
    assert result.reason == "undefined: all 200 answers are right"


def test_auroc_undefined_when_all_wrong():
    result = auroc([0.2, 0.7, 0.7], [True, True, True])
    assert result.value is None
    assert result.reason == "undefined: all 3 answers are wrong"


def test_auroc_undefined_for_one_or_no_answer():
    assert auroc([0.4], [0]) == AurocResult(None, "undefined: the only answer is right")
    assert auroc([], []) == AurocResult(None, "undefined: no answers")


def test_auroc_rejects_nan_and_bad_input():
    with pytest.raises(ValueError, match="1 NaN and 0 infinite of 3, first at index 1"):
        auroc([0.1, float("nan"), 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="0 NaN and 1 infinite"):
        auroc([0.1, math.inf, 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="equal lengths"):
        auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0.1, 0.2], [0, 2])


# ---------------------------------------------------------------- calibration


def test_ece_of_perfectly_calibrated_toy_is_zero():
    confidence = [0.8] * 10 + [0.3] * 10
    correct = [1] * 8 + [0] * 2 + [1] * 3 + [0] * 7
    ece, table = expected_calibration_error(confidence, correct)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert list(table.columns) == list(RELIABILITY_COLUMNS)
    assert len(table) == 15 and table["count"].sum() == 20
    # 0.3 * 15 = 4.5 -> bin 4; 0.8 * 15 = 12 -> bin 11 (an edge goes to the lower bin)
    filled = table[table["count"] > 0]
    assert filled["bin"].tolist() == [4, 11]
    assert filled["accuracy"].tolist() == pytest.approx([0.3, 0.8])


def test_ece_hand_computed_with_table():
    # 4 bins of width 0.25.
    # bin 0: conf 0.1, wrong                      -> conf 0.1, acc 0,   gap 0.1
    # bin 1: conf 0.5 (edge: lower bin), right    -> conf 0.5, acc 1,   gap 0.5
    # bin 2: conf 0.7, wrong                      -> conf 0.7, acc 0,   gap 0.7
    # bin 3: conf 0.9 x 4, 2 right                -> conf 0.9, acc 0.5, gap 0.4
    # ECE = (0.1 + 0.5 + 0.7 + 4 * 0.4) / 7 = 2.9 / 7
    confidence = [0.1, 0.5, 0.7, 0.9, 0.9, 0.9, 0.9]
    correct = [False, True, False, True, True, False, False]
    ece, table = expected_calibration_error(confidence, correct, n_bins=4)
    assert ece == pytest.approx(2.9 / 7)
    assert table["bin"].tolist() == [0, 1, 2, 3]
    assert table["bin_lower"].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert table["bin_upper"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert table["count"].tolist() == [1, 1, 1, 4]
    np.testing.assert_allclose(table["confidence"], [0.1, 0.5, 0.7, 0.9])
    np.testing.assert_allclose(table["accuracy"], [0.0, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(table["gap"], [0.1, -0.5, 0.7, 0.4])


def test_ece_confidence_one_goes_to_last_bin():
    # bin 9: conf 1, 1 of 2 right -> gap 0.5; bin 0: conf 0, wrong -> gap 0. ECE = 2/3 * 0.5
    ece, table = expected_calibration_error([1.0, 0.0, 1.0], [1, 0, 0], n_bins=10)
    assert ece == pytest.approx(1 / 3)
    assert table.loc[table["count"] > 0, "bin"].tolist() == [0, 9]
    assert table.loc[9, "gap"] == pytest.approx(0.5)


def test_ece_bin_edges_go_to_the_lower_bin_exactly_as_scikit_learn():
    # 0.57 of 100 bins and 0.7 of 10 sit on an edge (0.57 * 100 == 56.99999999999999 and 0.7 * 10 ==
    # 7.000000000000001 in floating point; linspace's edges are what count): the lower bin, as Guo et al.
    _, table = expected_calibration_error([0.57], [1], n_bins=100)
    assert table.loc[table["count"] > 0, "bin"].tolist() == [56]
    _, table = expected_calibration_error([0.7], [1], n_bins=10)
    assert table.loc[table["count"] > 0, "bin"].tolist() == [6]
    rng = np.random.default_rng(0)
    for n_bins in (4, 10, 15, 100):
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        # every edge (as linspace and as k / n_bins), its neighbours one ulp away, and random confidences
        confidence = np.concatenate([edges, np.arange(n_bins + 1) / n_bins, np.nextafter(edges, 2.0)[:-1],
                                     np.nextafter(edges, -1.0)[1:], rng.random(200)])
        correct = rng.integers(0, 2, size=confidence.size)
        _, table = expected_calibration_error(confidence, correct, n_bins=n_bins)
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=n_bins)  # non-empty bins only
        filled = table[table["count"] > 0]
        np.testing.assert_allclose(filled["accuracy"], accuracy, rtol=0, atol=1e-12)
        np.testing.assert_allclose(filled["confidence"], mean_confidence, rtol=0, atol=1e-12)
        assert filled["count"].sum() == confidence.size


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError, match=r"in \[0, 1\].*first 1.5 at index 1"):
        expected_calibration_error([0.5, 1.5], [1, 0])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        expected_calibration_error([float("nan")], [1])
    with pytest.raises(ValueError, match="at least one"):
        expected_calibration_error([], [])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0.5], [1], n_bins=0)


# ---------------------------------------------------------------- semantic entropy


def test_semantic_clusters_by_integer_meaning():
    answers = ["012", "12", "1a", "-0", "0", "1a", "1b", "-05", "-5", "+12", "", "--3", "1-2", " 12", "١٢"]
    assert semantic_clusters(answers) == [0, 0, 1, 2, 2, 1, 3, 4, 4, 0, 5, 6, 7, 8, 9]


def test_malformed_emitted_answers_never_become_numbers():
    # emitted units first: "12-" and "12+" are no answer the format produces; un-reversing them would read
    # "-21" (the same as a well-formed "-12") and "+21" (the same as "12")
    emitted = ["12-", "-12", "12+", "12"]
    for reverse in (True, False):
        written = [written_if_well_formed(answer, reverse) for answer in emitted]
        assert semantic_clusters(written) == [0, 1, 2, 3]
    assert [written_if_well_formed(answer, True) for answer in emitted] == ["12-", "-21", "12+", "21"]
    assert [written_if_well_formed(answer, True) for answer in ["+12", "012", "", "1 2", "١٢"]] == \
        ["+21", "210", "", "1 2", "١٢"]
    assert semantic_clusters([written_if_well_formed(a, True) for a in ["+12", "12", "21-", "-12"]]) == [0, 0, 1, 2]


def test_semantic_clusters_unparsable_strings():
    assert semantic_clusters(["1a", "1a"]) == [0, 0]
    assert semantic_clusters(["1a", "1b"]) == [0, 1]
    assert semantic_clusters([]) == []


def test_discrete_semantic_entropy():
    assert discrete_semantic_entropy(["42"] * 10) == pytest.approx(0.0)
    assert discrete_semantic_entropy(["042", "42", "+42", "0042"] * 2) == pytest.approx(0.0)
    assert discrete_semantic_entropy([str(i) for i in range(10)]) == pytest.approx(math.log2(10))
    # clusters {12: 2, 7: 1, 1a: 1} of 4 -> 1/2 * 1 + 2 * (1/4 * 2) = 1.5 bits
    assert discrete_semantic_entropy(["12", "012", "7", "1a"]) == pytest.approx(1.5)


def test_weighted_semantic_entropy_hand_case():
    # per-token likelihoods 0.8 ("12", 3 tokens), 0.2 ("012", 4 tokens), 0.5 ("7", 2 tokens);
    # clusters {12: 0.8 + 0.2 = 1.0, 7: 0.5} -> p = (2/3, 1/3) -> H = log2(3) - 2/3 bits
    answers = ["12", "012", "7"]
    logprobs = [3 * math.log(0.8), 4 * math.log(0.2), 2 * math.log(0.5)]
    lengths = [3, 4, 2]
    assert weighted_semantic_entropy(answers, logprobs, lengths) == pytest.approx(math.log2(3) - 2 / 3)


def test_weighted_semantic_entropy_counts_a_repeated_sequence_once():
    # "7" sampled twice counts once: masses {7: 0.5, 12: 0.5} -> 1 bit (not H(2/3, 1/3) = 0.918)
    answers = ["7", "7", "12"]
    logprobs = [2 * math.log(0.5), 2 * math.log(0.5), 3 * math.log(0.5)]
    assert weighted_semantic_entropy(answers, logprobs, [2, 2, 3]) == pytest.approx(1.0)
    # identical answers mean one cluster whatever the weights
    assert weighted_semantic_entropy(["5"] * 10, [-0.1] * 10, [2] * 10) == pytest.approx(0.0)


def test_weighted_semantic_entropy_survives_tiny_likelihoods():
    # per-token logprobs -2000 and -2001 nats: exp() of either underflows to 0, their ratio is e
    p = 1 / (1 + math.exp(-1))
    expected = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert weighted_semantic_entropy(["1", "2"], [-4000.0, -4002.0], [2, 2]) == pytest.approx(expected)


def test_weighted_semantic_entropy_rejects_bad_input():
    with pytest.raises(ValueError, match="equal lengths"):
        weighted_semantic_entropy(["1", "2"], [-1.0], [2, 2])
    with pytest.raises(ValueError, match="finite"):
        weighted_semantic_entropy(["1", "2"], [-1.0, float("nan")], [2, 2])
    with pytest.raises(ValueError, match=">= 1"):
        weighted_semantic_entropy(["1", "2"], [-1.0, -1.0], [2, 0])
    with pytest.raises(TypeError, match="must be str"):
        semantic_clusters(["1", None])


def test_reference_semantic_entropy_by_hand_counts_every_sample_in_nats():
    # 9 x "5" and 1 x "7" at equal likelihood: p = (0.9, 0.1) -> 0.325 nats = 0.469 bits; this project's
    # weighted estimator counts each distinct sequence once: (1/2, 1/2) -> 1 bit
    answers = ["5"] * 9 + ["7"]
    reference = reference_semantic_entropy(answers, [math.log(0.5)] * 10, [1] * 10)
    direct = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert reference == pytest.approx(direct) and reference == pytest.approx(0.3251, abs=1e-4)
    assert reference / math.log(2) == pytest.approx(0.4690, abs=1e-4)
    assert weighted_semantic_entropy(answers, [2 * math.log(0.5)] * 10, [2] * 10) == pytest.approx(1.0)
    # unequal likelihoods, mean token log-likelihood per sample: "12" (2 tokens, 0.8 and 0.2 -> geometric mean
    # 0.4), "012" (3 tokens of 0.5), "7" (1 token of 0.1), "7" again: clusters {12: 0.4 + 0.5, 7: 0.1 + 0.1}
    answers = ["12", "012", "7", "7"]
    logprobs = [math.log(0.8) + math.log(0.2), 3 * math.log(0.5), math.log(0.1), math.log(0.1)]
    p = np.array([0.9, 0.2]) / 1.1
    assert reference_semantic_entropy(answers, logprobs, [2, 3, 1, 1]) == pytest.approx(float(-(p * np.log(p)).sum()))
    assert reference_semantic_entropy(["5"] * 4, [-1.0, -2.0, -3.0, -4.0], [1] * 4) == pytest.approx(0.0)


def test_the_reference_estimator_cuts_the_eos_out_of_each_sequence():
    # whole sequences with EOS: "5" + EOS (0.5 then EOS 0.9), "7" + EOS (0.5, EOS 0.1): without the EOS both
    # have mean log-likelihood ln 0.5 -> p = (1/2, 1/2), ln 2 nats; with it they would differ
    rows = [(0, "5", math.log(0.5 * 0.9), 2, math.log(0.9), True),
            (0, "7", math.log(0.5 * 0.1), 2, math.log(0.1), True),
            # an empty answer is the EOS alone (kept as its one token); a sequence cut off by the budget has no EOS
            (1, "", math.log(0.4), 1, math.log(0.4), True), (1, "33", 2 * math.log(0.4), 2, 0.0, False)]
    samples = pd.DataFrame(rows, columns=["problem", "answer", "logprob", "length", "eos_logprob", "ended"])
    result = semantic_entropy_by_problem(samples)
    assert result["reference_semantic_entropy"].tolist() == pytest.approx([math.log(2), math.log(2)])
    with_eos = np.array([math.sqrt(0.45), math.sqrt(0.05)]) / (math.sqrt(0.45) + math.sqrt(0.05))
    assert result.loc[0, "weighted_semantic_entropy"] == pytest.approx(float(-(with_eos * np.log2(with_eos)).sum()))


def test_semantic_entropy_by_problem_matches_single_problem_functions():
    rows = [  # (problem, answer, logprob, length), problems interleaved and out of order
        (2, "5", -0.2, 2), (0, "12", 3 * math.log(0.8), 3), (2, "5", -0.2, 2),
        (0, "012", 4 * math.log(0.2), 4), (1, "x", -3.0, 2), (0, "7", 2 * math.log(0.5), 2),
        (1, "9", -1.0, 2), (2, "5", -0.2, 2),
    ]
    samples = pd.DataFrame(rows, columns=["problem", "answer", "logprob", "length"]).assign(eos_logprob=-0.05,
                                                                                           ended=True)
    result = semantic_entropy_by_problem(samples)
    assert result.index.tolist() == [0, 1, 2]
    assert result["n_samples"].tolist() == [3, 2, 3]
    assert result["n_clusters"].tolist() == [2, 2, 1]
    assert result.loc[0, "discrete_semantic_entropy"] == pytest.approx(math.log2(3) - 2 / 3)
    assert result.loc[0, "weighted_semantic_entropy"] == pytest.approx(math.log2(3) - 2 / 3)
    assert result.loc[2, "weighted_semantic_entropy"] == pytest.approx(0.0)
    for problem, group in samples.groupby("problem"):
        answers = group["answer"].tolist()
        assert result.loc[problem, "discrete_semantic_entropy"] == pytest.approx(discrete_semantic_entropy(answers))
        assert result.loc[problem, "weighted_semantic_entropy"] == pytest.approx(
            weighted_semantic_entropy(answers, group["logprob"], group["length"]))
        assert result.loc[problem, "reference_semantic_entropy"] == pytest.approx(
            reference_semantic_entropy(answers, group["logprob"] + 0.05, group["length"] - 1))


def test_semantic_entropy_by_problem_rejects_missing_columns():
    with pytest.raises(ValueError, match=r"lack columns \['length', 'eos_logprob', 'ended'\]"):
        semantic_entropy_by_problem(pd.DataFrame({"problem": [0], "answer": ["1"], "logprob": [-1.0]}))


# ---------------------------------------------------------------- perplexity and accuracy


def test_perplexity_of_uniform_model_is_vocabulary_size():
    vocab, tokens = 20, 50
    result = perplexity(tokens * math.log(vocab), tokens)
    assert result["perplexity"] == pytest.approx(vocab)
    assert result["nll_nats_per_token"] == pytest.approx(math.log(vocab))
    assert result["nll_bits_per_token"] == pytest.approx(math.log2(vocab))
    assert perplexity(0.0, 7)["perplexity"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="token_count"):
        perplexity(1.0, 0)


def test_digit_accuracy_right_aligned():
    # "124" vs "123": 2 of 3; "145" vs "45": 2 of 2 (extra leading "1" not counted); "7" vs "-7": 1 of 2
    assert digit_accuracy(["124", "145", "7"], ["123", "45", "-7"]) == pytest.approx(5 / 7)
    # right-aligned, "12" lines up under "23" of "123": 0 of 3 (left-aligned would give 2 of 3)
    assert digit_accuracy(["12"], ["123"]) == pytest.approx(0.0)
    assert digit_accuracy(["", "99"], ["10", "99"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal lengths"):
        digit_accuracy(["1"], ["1", "2"])

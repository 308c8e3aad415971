"""Readings with their uncertainty (issue 12), each against an independent computation."""

import dataclasses
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
    # 2 bins [0, 0.5] and (0.5, 1] (an edge goes to the lower bin): bin 0 holds 0 (wrong) and 0.5 (right):
    # gap 0.25 - 0.5, weight 1/2; bin 1 holds 1, 1 with 1 of 2 right: gap 0.5, weight 1/2 -> ECE 0.375.
    # Brier (0 + 0.25 + 0 + 1) / 4 = 0.3125
    result = sequence_calibration([0.0, 0.5, 1.0, 1.0], [0, 1, 1, 0], n_bins=2)
    assert set(result) == {"ece", "brier", "n", "reliability"}
    assert result["ece"] == pytest.approx(0.375, abs=1e-15)
    assert result["brier"] == pytest.approx(0.3125, abs=1e-15)
    assert result["n"] == 4
    table = result["reliability"]
    assert tuple(table.columns) == RELIABILITY_COLUMNS
    assert table["count"].tolist() == [2, 2]
    assert table["gap"].tolist() == pytest.approx([-0.25, 0.5])


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


# ---------------------------------------------------------------- grouped (cluster) bootstrap


def grouped_bootstrap_by_sklearn(scores, labels, groups, n_boot, seed, level=0.95):
    """The reference: draw groups with the same generator, expand each drawn group to its items, score by sklearn."""
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    resamples = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    values = []
    for drawn in resamples:
        items = np.concatenate([members[g] for g in drawn])
        if labels[items].min() != labels[items].max():
            values.append(roc_auc_score(labels[items], scores[items]))
    return tuple(np.quantile(values, [(1 - level) / 2, (1 + level) / 2]))


def test_grouped_bootstrap_equals_a_sklearn_cluster_bootstrap():
    rng = np.random.default_rng(4)
    groups = np.repeat(rng.permutation(40) * 3, rng.integers(1, 6, size=40))  # 40 problems of 1-5 tokens, ids unsorted
    scores, labels = detection_data(len(groups), seed=9)
    got = bootstrap_auroc_interval(scores, labels, n_boot=300, seed=5, groups=groups)
    assert got == pytest.approx(grouped_bootstrap_by_sklearn(scores, labels, groups, 300, 5), abs=1e-12)
    # every item its own group: the plain bootstrap, resample for resample
    plain = bootstrap_auroc_interval(scores, labels, n_boot=300, seed=5)
    assert bootstrap_auroc_interval(scores, labels, n_boot=300, seed=5, groups=np.arange(len(groups))) == \
        pytest.approx(plain, abs=1e-12)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_auroc_interval(scores, labels, groups=groups[:-1])


# ---------------------------------------------------------------- the digit-blind reference

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from language_entropy import tokenizer  # noqa: E402
from language_entropy.data import generate_splits, prompt_of  # noqa: E402
from language_entropy.evaluation import (  # noqa: E402
    BUCKET_KEYS,
    PROBLEM_COLUMNS,
    digit_blind_levels,
    evaluate_split,
    problem_table,
)
from language_entropy.measure import continuity_stats, expected_answers, generation_prompts, teacher_forced_stats  # noqa: E402
from language_entropy.model import ArithmeticDecoder  # noqa: E402
from language_entropy.params import (  # noqa: E402
    DataConfig,
    DigitRange,
    EntropyConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
)
from language_entropy.theory import theoretical_entropy_table  # noqa: E402
from language_entropy.training import EARLY_VALIDATION_STEPS, Trainer, validation_due  # noqa: E402

APPLY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b}


def operands(n_digits: int) -> range:
    return range(10) if n_digits == 1 else range(10 ** (n_digits - 1), 10**n_digits)


def emitted(value: int) -> str:
    """The answer as the model emits it (units first), '$' for EOS."""
    return ("-" if value < 0 else "") + str(abs(value))[::-1] + "$"


def entropy_of(counter: dict) -> float:
    total = sum(counter.values())
    return -sum(w / total * math.log2(w / total) for w in counter.values() if w > 0)


def brute_digit_blind(problems: pd.DataFrame, keys: list[str]) -> dict[tuple, tuple[float, float]]:
    """(group..., step) -> (H over running answers, H over all answers) by plain loops over every problem
    of the split and every operand pair of its bucket (weight 1/|bucket| each): the predictor's context
    is the operation, the lengths and the prefix; an ended answer emits the symbol "ended"."""
    from collections import Counter, defaultdict
    contexts = defaultdict(Counter)  # (group, step, running?, op, a, b, prefix) -> next symbol -> weight
    for problem in problems.itertuples(index=False):
        pairs = [(a, b) for a in operands(problem.a_digits) for b in operands(problem.b_digits)]
        group = tuple(getattr(problem, k) for k in keys)
        for a, b in pairs:
            text = emitted(APPLY[problem.op](a, b))
            for t in range(6):
                running = t < len(text)
                symbol = text[t] if running else "ended"
                bucket = (problem.op, problem.a_digits, problem.b_digits)
                contexts[(group, t, running, *bucket, text[:t])][symbol] += 1 / len(pairs)
    levels = {}
    for group, t in {(key[0], key[1]) for key in contexts}:
        cells = {key: c for key, c in contexts.items() if key[0] == group and key[1] == t}
        weight_all = sum(sum(c.values()) for c in cells.values())
        weight_running = sum(sum(c.values()) for key, c in cells.items() if key[2])
        h_all = sum(sum(c.values()) * entropy_of(c) for c in cells.values()) / weight_all
        if weight_running > 0:
            h_running = sum(sum(c.values()) * entropy_of(c) for key, c in cells.items() if key[2]) / weight_running
            levels[(*group, t)] = (h_running, h_all)
    return levels


@pytest.fixture(scope="module")
def small_theory() -> pd.DataFrame:
    return theoretical_entropy_table(DataConfig(digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3)), EntropyConfig())


TINY_SPLIT = pd.DataFrame(
    [("add", 1, 1)] * 3 + [("add", 1, 2)] * 5 + [("add", 2, 2)] * 1 + [("sub", 2, 1)] * 4 + [("sub", 1, 1)] * 2
    + [("sub", 1, 2)] * 7, columns=["op", "a_digits", "b_digits"])


@pytest.mark.parametrize("keys", [["op"], BUCKET_KEYS, []], ids=["per-operation", "per-bucket", "whole-split"])
def test_digit_blind_levels_equal_brute_force_over_the_split(small_theory, keys):
    got = digit_blind_levels(small_theory, TINY_SPLIT, keys)
    want = brute_digit_blind(TINY_SPLIT, keys)
    assert len(got) == len(want)
    for row in got.itertuples(index=False):
        key = (*(getattr(row, k) for k in keys), row.step)
        running, every = want[key]
        assert row.digit_blind_running_bits == pytest.approx(running, abs=1e-9)
        assert row.digit_blind_all_bits == pytest.approx(every, abs=1e-9)
        assert row.running_fraction * row.digit_blind_running_bits == pytest.approx(row.digit_blind_all_bits,
                                                                                    abs=1e-12)


def test_running_conditional_on_buckets_whose_answers_end_at_different_steps(small_theory):
    # sub 2x1: 10..99 - 0..9 gives 1..99 (1 or 2 digits); sub 1x2: -99..-1 (sign, 1 or 2 digits); add 1x1: 0..18
    for op, a, b in [("sub", 2, 1), ("sub", 1, 2), ("add", 1, 1), ("add", 2, 2)]:
        one = pd.DataFrame({"op": [op], "a_digits": [a], "b_digits": [b]})
        got = digit_blind_levels(small_theory, one, BUCKET_KEYS)
        assert ((got["running_fraction"] > 0) & (got["running_fraction"] < 1)).any()  # answers end at several steps
        for row in got.itertuples(index=False):
            running, every = brute_digit_blind(one, [])[(row.step,)]
            assert row.digit_blind_running_bits == pytest.approx(running, abs=1e-9)
            assert row.digit_blind_all_bits == pytest.approx(every, abs=1e-9)


def test_the_issues_worked_numbers_on_the_default_test_split():
    # issue 12: an independent brute force over the default test split (seed 0) gives these running levels
    theory = theoretical_entropy_table(DataConfig(ood_digits=DigitRange(1, 1)), EntropyConfig())
    test = generate_splits(DataConfig(), seed=0)["test"]
    levels = digit_blind_levels(theory, test, ["op"])
    issue = {"add": [3.322, 3.312, 2.841, 0.121, 0.000], "sub": [2.015, 3.306, 3.008, 1.505, 0.000]}
    for op, want in issue.items():
        got = levels.loc[levels["op"] == op].sort_values("step")["digit_blind_running_bits"]
        assert got.to_numpy() == pytest.approx(want, abs=5e-4)


# ---------------------------------------------------------------- continuity readings


def brute_continuity(model: ArithmeticDecoder, texts: list[str], layer: int, positions: str) -> dict[str, float]:
    """One text at a time, no padding or masks: the positions predicting an answer token ('=' through the
    last digit), or every position predicting a token; their states' norms, and l2 / cosine distances."""
    norms, l2, cosine = [], [], []
    with torch.no_grad():
        for text in texts:
            ids = [tokenizer.BOS_ID, *tokenizer.encode(text)]
            _, hidden = model(torch.tensor([ids[:-1]]), return_hidden=True)
            states = hidden[layer][0].double().numpy()  # (L-1, C): position p predicts ids[p + 1]
            first = len(prompt_of(text)) if positions == "answer" else 0  # the '=' sits at input position len(prompt)
            kept = states[first:]
            norms += list(np.linalg.norm(kept, axis=1))
            for u, v in zip(kept[:-1], kept[1:], strict=True):
                l2.append(math.sqrt(((u - v) ** 2).sum() + 1e-8))
                cosine.append(1 - u @ v / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-8))
    return {"hidden_norm": np.mean(norms), "continuity_l2": np.mean(l2), "continuity_cosine": np.mean(cosine)}


@pytest.mark.parametrize(("continuity_on", "layer", "positions"),
                         [("final", -1, "answer"), (0, 0, "all"), ("embedding", 0, "answer"), (1, 1, "all")])
def test_continuity_stats_equal_a_per_text_computation(continuity_on, layer, positions):
    torch.manual_seed(3)
    model = ArithmeticDecoder(ModelConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=32)).eval()
    texts = generate_splits(DataConfig(digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3), train_size=20,
                                       val_size=5, test_size=30, ood_size=5), seed=1)["test"]["text"].tolist()
    got = continuity_stats(model, texts, torch.device("cpu"), continuity_on, positions, batch_size=7)
    want = brute_continuity(model, texts, layer, positions)
    assert got == pytest.approx(want, rel=1e-5)
    # the l2 reading scales with the norm, the cosine one does not (what the README's ablation note is about)
    with torch.no_grad():
        model.tok_emb.weight.mul_(3.0)
        if model.config.pos_encoding == "abacus":
            model.pos_emb.weight.mul_(3.0)
    if layer == 0:
        scaled = continuity_stats(model, texts, torch.device("cpu"), continuity_on, positions, batch_size=7)
        assert scaled["hidden_norm"] == pytest.approx(3 * got["hidden_norm"], rel=1e-5)
        assert scaled["continuity_l2"] == pytest.approx(3 * got["continuity_l2"], rel=1e-4)
        assert scaled["continuity_cosine"] == pytest.approx(got["continuity_cosine"], abs=1e-5)


# ---------------------------------------------------------------- early validation schedule


def test_validation_schedule_is_dense_at_the_start():
    config = TrainConfig(steps=1200, eval_every=500)
    assert [s for s in range(1201) if validation_due(s, config)] == [0, 25, 50, 100, 200, 500, 1000, 1200]
    assert EARLY_VALIDATION_STEPS == (0, 25, 50, 100, 200)


# ---------------------------------------------------------------- one split's readings on a model that knows something


@pytest.fixture(scope="module")
def trained():
    """A 1-layer model trained 600 steps on 150 one-digit problems (about 3 s): it gets about 3/4 of them right,
    with sequence confidences spread over (0.1, 0.9). Returns (model, those problems, the curve)."""
    splits = generate_splits(DataConfig(digits=DigitRange(1, 1), ood_digits=DigitRange(2, 2), train_size=150,
                                        val_size=10, test_size=40, ood_size=10), seed=0)
    trainer = Trainer(ModelConfig(n_layer=1, n_head=2, n_embd=32, max_seq_len=32), LossConfig(),
                      TrainConfig(steps=600, batch_size=64, eval_every=1000, warmup_steps=10, lr=3e-3), 0,
                      splits["train"]["text"].tolist(), splits["val"]["text"].tolist(), torch.device("cpu"))
    result = trainer.fit(lambda row: None, lambda state: None, lambda: None)
    return result.model.eval(), splits["train"], result.curve


def test_fit_validates_on_the_early_schedule_with_continuity_readings(trained):
    _, _, curve = trained
    assert curve["step"].tolist() == [0, 25, 50, 100, 200, 600]
    assert np.isnan(curve.loc[0, "loss"])  # step 0: the untrained model, before any update
    assert {"val_hidden_norm", "val_continuity_l2", "val_continuity_cosine", "entropy_step_0"} <= set(curve.columns)
    assert curve["val_hidden_norm"].notna().all()


def answer_probability(model: ArithmeticDecoder, text: str, answer: str, ended: bool = True) -> float:
    """P(answer + EOS | prompt) by full forward passes, PAD and BOS removed from each step's distribution;
    without the EOS factor when not `ended` (a sample cut by the generation budget before its EOS)."""
    ids = [tokenizer.BOS_ID, *tokenizer.encode(prompt_of(text))]
    probability = 1.0
    with torch.no_grad():
        for token in [*tokenizer.encode(answer), *([tokenizer.EOS_ID] if ended else [])]:
            logits = model(torch.tensor([ids]))[0, -1].double()
            logits[[tokenizer.PAD_ID, tokenizer.BOS_ID]] = -math.inf
            probability *= float(torch.softmax(logits, dim=-1)[token])
            ids.append(token)
    return probability


def greedy_by_recomputation(model: ArithmeticDecoder, text: str, budget: int = 6) -> str:
    ids = [tokenizer.BOS_ID, *tokenizer.encode(prompt_of(text))]
    answer = []
    with torch.no_grad():
        for _ in range(budget):
            logits = model(torch.tensor([ids]))[0, -1]
            logits[[tokenizer.PAD_ID, tokenizer.BOS_ID]] = -math.inf
            token = int(logits.argmax())
            if token == tokenizer.EOS_ID:
                break
            answer.append(token)
            ids.append(token)
    return tokenizer.decode(answer)


def ece_by_loops(confidence, correct, n_bins: int) -> float:
    total, n = 0.0, len(confidence)
    for b in range(n_bins):
        inside = [(c, r) for c, r in zip(confidence, correct, strict=True)  # (b / n, (b + 1) / n], 0 in bin 0
                  if b / n_bins < c <= (b + 1) / n_bins or (b == 0 and c == 0.0)]
        if inside:
            total += len(inside) / n * abs(np.mean([c for c, _ in inside]) - np.mean([r for _, r in inside]))
    return total


@pytest.fixture(scope="module")
def readings(trained, small_theory):
    model, frame, _ = trained
    config = EvalConfig(temperatures=(0.0, 0.5, 1.0, 1.5), semantic_problems=60, semantic_samples=4, batch_size=32,
                        calibration_bins=10)
    theory = theoretical_entropy_table(DataConfig(digits=DigitRange(1, 1), ood_digits=DigitRange(2, 2)),
                                       EntropyConfig())
    return evaluate_split(model, frame, theory, config, reverse_answer=True, seed=0), config


def test_sequence_calibration_equals_an_independent_recomputation(trained, readings):
    model, frame, _ = trained
    report, config = readings
    texts, expected = frame["text"].tolist(), expected_answers(frame["text"].tolist())
    greedy = [greedy_by_recomputation(model, text) for text in texts]
    right = np.array([g == e for g, e in zip(greedy, expected, strict=True)])
    confidence = np.array([answer_probability(model, text, g) for text, g in zip(texts, greedy, strict=True)])
    assert 0.3 < right.mean() < 0.95 and confidence.min() < 0.3 and confidence.max() > 0.7  # a non-trivial case
    assert report.problems["right"].to_numpy().tolist() == right.tolist()
    np.testing.assert_allclose(report.problems["confidence_greedy"], confidence, rtol=1e-4)
    summary = report.summary
    assert summary["sequence_ece"]["greedy"] == pytest.approx(ece_by_loops(confidence, right, 10), abs=1e-4)
    assert summary["sequence_brier"]["greedy"] == pytest.approx(brier_score_loss(right, confidence), abs=1e-5)
    for op in ("add", "sub"):
        mask = (frame["op"] == op).to_numpy()
        assert summary["per_operation"][op]["sequence_brier"]["greedy"] == pytest.approx(
            brier_score_loss(right[mask], confidence[mask]), abs=1e-5)
    # one sample at T=1: its confidence is the probability of the answer that was sampled
    sampled = report.problems["answer_sampled_t1"].tolist()
    _, budget = generation_prompts(texts)  # a sample that filled it emitted no EOS: its tokens are all it has
    sampled_confidence = np.array([answer_probability(model, text, s, ended=len(s) < budget)
                                   for text, s in zip(texts, sampled, strict=True)])
    sampled_right = np.array([s == e for s, e in zip(sampled, expected, strict=True)])
    np.testing.assert_allclose(report.problems["confidence_sampled_t1"], sampled_confidence, rtol=1e-4)
    assert summary["sequence_ece"]["sampled_t1"] == pytest.approx(ece_by_loops(sampled_confidence, sampled_right, 10),
                                                                  abs=1e-4)
    assert summary["sequence_brier"]["sampled_t1"] == pytest.approx(brier_score_loss(sampled_right,
                                                                                     sampled_confidence), abs=1e-5)
    table = report.sequence_reliability
    greedy_all = table[(table["operation"] == "all") & (table["decoding"] == "greedy")]
    assert greedy_all["count"].tolist() == np.bincount(np.clip(np.ceil(confidence * 10).astype(int) - 1, 0, 9),
                                                       minlength=10).tolist()
    # exact match with its Wilson interval: the roots of the score equation
    k, n = int(right.sum()), len(right)
    c = Z**2 / n
    roots = np.sort(np.roots([1 + c, -(2 * k / n + c), (k / n) ** 2]))
    assert (summary["exact_match.ci_low"], summary["exact_match.ci_high"]) == pytest.approx(tuple(roots), abs=1e-12)


def test_token_error_auroc_equals_sklearn_on_a_per_text_computation(trained, readings):
    model, frame, _ = trained
    report, _ = readings
    entropy, wrong, problem, ops = [], [], [], []
    with torch.no_grad():
        for row, (text, op) in enumerate(zip(frame["text"], frame["op"], strict=True)):
            ids = [tokenizer.BOS_ID, *tokenizer.encode(text)]
            probs = torch.softmax(model(torch.tensor([ids[:-1]]))[0].double(), dim=-1)  # (L-1, V)
            for p in range(len(prompt_of(text)), len(ids) - 1):  # positions predicting answer tokens and EOS
                entropy.append(float(-(probs[p] * probs[p].clamp_min(1e-300).log2()).sum()))
                wrong.append(int(probs[p].argmax()) != ids[p + 1])
                problem.append(row)
                ops.append(op)
    entropy, wrong, problem, ops = map(np.array, (entropy, wrong, problem, ops))
    # the per-token readings the evaluation scores, in its float32 batches, are these up to rounding
    tokens = teacher_forced_stats(model, frame["text"].tolist(), torch.device("cpu"), batch_size=32).tokens
    np.testing.assert_allclose(tokens["entropy_bits"], entropy, atol=1e-5)
    assert (~tokens["correct"]).tolist() == wrong.tolist() and tokens["row"].tolist() == problem.tolist()
    scores = tokens["entropy_bits"].to_numpy(dtype=float)  # rounding can reorder near-ties: score what it scores
    token_auroc = report.summary["token_error_auroc"]
    for op in ("all", "add", "sub"):
        mask = np.ones(len(ops), dtype=bool) if op == "all" else ops == op
        assert token_auroc[op] == pytest.approx(roc_auc_score(wrong[mask], scores[mask]), abs=1e-12)
        if min(wrong[mask].sum(), (~wrong[mask]).sum()) < 10:  # too few of a class: no interval, and why
            assert token_auroc[f"{op}.ci_low"] is None and token_auroc[f"{op}.ci_high"] is None
            assert "(fewer than 10)" in report.summary["token_error_auroc_reason"][op]
            continue
        low, high = grouped_bootstrap_by_sklearn(scores[mask], wrong[mask].astype(int), problem[mask], 1000, 0)
        assert (token_auroc[f"{op}.ci_low"], token_auroc[f"{op}.ci_high"]) == pytest.approx((low, high), abs=1e-12)


def test_problem_level_auroc_intervals_equal_a_sklearn_bootstrap(readings):
    report, config = readings
    problems = report.problems.iloc[:config.semantic_problems]
    wrong = (~problems["right"]).to_numpy().astype(int)
    auroc_summary = report.summary["auroc"]
    score = -np.log(problems["confidence_greedy"].to_numpy())  # the sequence NLL
    assert auroc_summary["sequence_nll"] == pytest.approx(roc_auc_score(wrong, score), abs=1e-9)
    assert (auroc_summary["sequence_nll.ci_low"], auroc_summary["sequence_nll.ci_high"]) == pytest.approx(
        bootstrap_by_sklearn(score, wrong, 1000, 0, 0.95), abs=1e-6)


def test_changing_the_temperatures_leaves_every_other_sampled_reading_bit_identical(trained, readings):
    model, frame, _ = trained
    report, config = readings
    theory = theoretical_entropy_table(DataConfig(digits=DigitRange(1, 1), ood_digits=DigitRange(2, 2)),
                                       EntropyConfig())
    other = dataclasses.replace(config, temperatures=(0.0, 0.7, 1.3))
    again = evaluate_split(model, frame, theory, other, reverse_answer=True, seed=0).summary
    summary = report.summary
    assert again["semantic"] == summary["semantic"]
    assert again["auroc"] == summary["auroc"]
    assert again["sequence_ece"] == summary["sequence_ece"] and again["sequence_brier"] == summary["sequence_brier"]
    assert again["temperature"]["0"] == summary["temperature"]["0"]
    # and one temperature's samples do not depend on the others listed
    only_one = evaluate_split(model, frame, theory, dataclasses.replace(config, temperatures=(1.5,)),
                              reverse_answer=True, seed=0).summary
    assert only_one["temperature"]["1.5"] == summary["temperature"]["1.5"]
    assert only_one["semantic"] == summary["semantic"]


def test_greedy_temperature_row_reports_the_entropy_of_a_point_mass(readings):
    report, _ = readings
    rows = report.temperature.set_index("temperature")["mean_entropy_bits"]
    assert rows[0.0] == 0.0
    assert (rows.drop(0.0) > 0).all()


def test_error_detection_within_buckets_and_the_problem_table(trained, readings):
    model, frame, _ = trained
    report, config = readings
    table = problem_table(report.problems)
    assert list(table.columns) == list(PROBLEM_COLUMNS)
    assert table["correct"].tolist() == report.problems["right"].tolist() and len(table) == len(frame)
    assert table["operation"].tolist() == frame["op"].tolist()
    assert table["semantic_entropy_bits"].iloc[:config.semantic_problems].notna().all()
    assert table["semantic_entropy_bits"].iloc[config.semantic_problems:].isna().all()
    n = config.semantic_problems
    first = table.iloc[:n]
    wrong = (~first["correct"]).to_numpy().astype(int)
    buckets = (first["operation"] + "_" + first["a_digits"].astype(str) + "x"
               + first["b_digits"].astype(str)).to_numpy()
    scores = {"semantic_entropy": first["semantic_entropy_bits"], "token_entropy": first["mean_token_entropy_bits"],
              "sequence_nll": -np.log(first["sequence_probability"])}
    stratified = report.summary["stratified_auroc"]
    for name, score in scores.items():
        per_bucket = [roc_auc_score(wrong[buckets == b], score.to_numpy()[buckets == b]) for b in sorted(set(buckets))
                      if 0 < wrong[buckets == b].sum() < (buckets == b).sum()]
        assert per_bucket and stratified[name] == pytest.approx(np.mean(per_bucket), abs=1e-6), name
        assert report.summary["auroc"][name] == pytest.approx(roc_auc_score(wrong, score), abs=1e-6), name
    averaged = [wrong[buckets == b] for b in sorted(set(buckets))
                if 0 < wrong[buckets == b].sum() < (buckets == b).sum()]
    if any(min(w.sum(), w.size - w.sum()) < 10 for w in averaged):  # the interval rule, per bucket the mean averages
        assert stratified["token_entropy.ci_low"] is None
        assert "(fewer than 10 in a bucket)" in report.summary["stratified_auroc_reason"]["token_entropy"]
    else:
        assert stratified["token_entropy.ci_low"] <= stratified["token_entropy"] <= stratified["token_entropy.ci_high"]

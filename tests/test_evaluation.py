"""Evaluation on a small model: answers, teacher-forced statistics and one split's report, checked for consistency."""

import numpy as np
import pandas as pd
import pytest
import torch

from language_entropy import tokenizer
from language_entropy.data import generate_splits
from language_entropy.evaluation import digit_blind_levels, evaluate_split, flatten_numbers, rl_entropy_by_step
from language_entropy.measure import expected_answers, generation_prompts, sample_sequences, teacher_forced_stats
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import DataConfig, DigitRange, EntropyConfig, EvalConfig, ModelConfig
from language_entropy.problems import reorder_answer
from language_entropy.theory import theoretical_entropy_table


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ArithmeticDecoder(ModelConfig(n_layer=1, n_head=2, n_embd=32, max_seq_len=32)).eval()


@pytest.fixture(scope="module")
def frame():
    config = DataConfig(digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3), train_size=100, val_size=10,
                        test_size=60, ood_size=10)
    return generate_splits(config, seed=0)["test"]


def test_answer_helpers():
    assert expected_answers(["12+3=51$", "7-12=5-$"]) == ["51", "5-"]
    assert reorder_answer("51", reverse=True) == "15"
    assert reorder_answer("-533", reverse=True) == "-335"
    assert reorder_answer("-335", reverse=False) == "-335"
    nested = {"test": {"exact_match": 0.5, "auroc": {"token_entropy": None, "sequence_nll": 0.75}, "n": 3,
                       "flag": True, "nan": float("nan")}}
    assert flatten_numbers(nested) == {"test.exact_match": 0.5, "test.auroc.sequence_nll": 0.75, "test.n": 3.0}


def test_teacher_forced_rows_are_the_answer_tokens(model, frame):
    texts = frame["text"].tolist()
    tokens = teacher_forced_stats(model, texts, torch.device("cpu"), batch_size=16).tokens
    answer_lengths = [len(answer) + 1 for answer in expected_answers(texts)]  # + EOS
    assert len(tokens) == sum(answer_lengths)
    assert tokens.groupby("row")["step"].max().tolist() == [n - 1 for n in answer_lengths]
    assert ((tokens["confidence"] > 0) & (tokens["confidence"] <= 1)).all()
    assert (tokens["entropy_bits"] <= np.log2(tokenizer.VOCAB_SIZE) + 1e-5).all()


def test_sampled_sequences_score_what_they_emit(model, frame):
    texts = frame["text"].tolist()[:5]
    greedy = sample_sequences(model, texts, batch_size=8)
    again = sample_sequences(model, texts, batch_size=3)
    assert greedy["answer"].tolist() == again["answer"].tolist()  # batching does not change greedy answers
    sampled = sample_sequences(model, texts, 8, temperature=1.0, repeats=4, generator=torch.Generator().manual_seed(1))
    assert sampled["problem"].tolist() == [i for i in range(5) for _ in range(4)]
    assert (sampled["logprob"] <= 0).all() and (sampled["length"] >= 1).all()
    same = sample_sequences(model, texts, 8, temperature=1.0, repeats=4, generator=torch.Generator().manual_seed(1))
    pd.testing.assert_frame_equal(sampled, same)
    # the EOS's share of each logprob: the sequence scored again without its EOS step, by teacher forcing
    prompts, _ = generation_prompts(texts)
    for row in sampled.itertuples():
        ids = [*prompts[row.problem], *tokenizer.encode(row.answer)]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).double().masked_fill(model.never_generated, -torch.inf)
            log_probs = torch.log_softmax(logits, dim=-1)[0]  # generation's distribution: PAD and BOS removed
        answer = sum(float(log_probs[len(prompts[row.problem]) - 1 + k, token])
                     for k, token in enumerate(tokenizer.encode(row.answer)))
        assert row.ended == (row.length == len(row.answer) + 1)
        assert row.logprob - row.eos_logprob == pytest.approx(answer, abs=1e-4)
        if row.ended:
            assert row.eos_logprob == pytest.approx(float(log_probs[-1, tokenizer.EOS_ID]), abs=1e-4)
        else:
            assert row.eos_logprob == 0.0


def test_split_report_is_internally_consistent(model, frame):
    config = EvalConfig(temperatures=(0.0, 1.0), semantic_problems=20, semantic_samples=3, batch_size=32)
    theory = theoretical_entropy_table(DataConfig(digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3)),
                                       EntropyConfig())
    report = evaluate_split(model, frame, theory, config, reverse_answer=True, seed=0)
    summary = report.summary
    assert summary["n_problems"] == 60
    assert summary["temperature"]["0"]["exact_match"] == summary["exact_match"]
    assert summary["temperature"]["0"]["mean_entropy_bits"] == 0.0  # greedy samples from a point mass
    assert summary["temperature"]["1"]["mean_entropy_bits"] > 0.0
    per_op = summary["per_operation"]
    assert sum(v["n"] for v in per_op.values()) == 60
    weighted = sum(v["n"] * v["exact_match"] for v in per_op.values()) / 60
    assert weighted == pytest.approx(summary["exact_match"])
    assert summary["perplexity"] == pytest.approx(np.exp(summary["nll_nats_per_token"]))
    per_bucket = summary["per_bucket"]
    assert sum(v["n"] for v in per_bucket.values()) == 60
    assert all(set(v["temperature"]) == {"0", "0.ci_low", "0.ci_high", "1", "1.ci_low", "1.ci_high"}
               for v in per_bucket.values())
    assert per_op["add"]["temperature"]["0"] == per_op["add"]["exact_match"]
    for entry in [summary, *per_op.values(), *per_bucket.values()]:  # every exact match has its interval around it
        assert entry["exact_match.ci_low"] <= entry["exact_match"] <= entry["exact_match.ci_high"]
    assert report.token_reliability["count"].sum() == sum(len(a) + 1 for a in expected_answers(frame["text"].tolist()))
    names = ("semantic_entropy", "semantic_entropy_weighted", "semantic_entropy_reference", "token_entropy",
             "sequence_nll")
    assert set(summary["auroc"]) == {f"{n}{s}" for n in names for s in ("", ".ci_low", ".ci_high")}
    for name in names:
        value = summary["auroc"][name]
        assert (value is None) == (name in summary["auroc_reason"])
        if value is not None:
            assert summary["auroc"][f"{name}.ci_low"] <= value <= summary["auroc"][f"{name}.ci_high"]
    assert set(summary["sequence_ece"]) == {"greedy", "sampled_t1"}
    assert set(per_op["add"]["sequence_brier"]) == {"greedy", "sampled_t1"}
    sequences = report.sequence_reliability
    assert set(sequences["operation"]) == {"all", "add", "sub"}
    for (operation, _), rows in sequences.groupby(["operation", "decoding"]):
        assert rows["count"].sum() == (60 if operation == "all" else per_op[operation]["n"])
    assert set(summary["token_error_auroc"]) >= {"all", "add", "sub"}
    assert summary["hidden_norm"] > 0 and summary["continuity_l2"] > 0 and 0 <= summary["continuity_cosine"] <= 2
    steps = report.entropy_by_step
    assert {"digit_blind_running_bits", "digit_blind_all_bits", "running_fraction"} <= set(steps.columns)
    assert not any(column.startswith("theoretical_") for column in steps.columns)
    buckets = report.entropy_by_step_bucket
    one_digit_add = buckets[(buckets["operation"] == "add") & (buckets["a_digits"] == 1) & (buckets["b_digits"] == 1)]
    # the first emitted digit of a one-digit sum, units first, takes each of 0-9 equally often: log2(10)
    assert one_digit_add.loc[one_digit_add["step"] == 0, "digit_blind_running_bits"].item() == pytest.approx(
        np.log2(10))
    assert list(report.temperature.columns) == ["temperature", "exact_match", "exact_match_ci_low",
                                                "exact_match_ci_high", "mean_entropy_bits"]


def test_rl_entropy_by_step_against_a_direct_forward_pass_per_problem(model, frame):
    """The per-answer-step entropy before and after RL: each problem run alone through the model, the softmax
    entropy (bits) of the distribution that predicts each answer token, averaged per step over the problems."""
    torch.manual_seed(1)
    after = ArithmeticDecoder(ModelConfig(n_layer=1, n_head=2, n_embd=32, max_seq_len=32)).eval()
    problems = frame.iloc[:12]
    theory = theoretical_entropy_table(DataConfig(digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3)),
                                       EntropyConfig())
    table = rl_entropy_by_step(model, after, problems, theory)

    def direct(net: ArithmeticDecoder) -> dict[int, float]:
        per_step: dict[int, list[float]] = {}
        for text in problems["text"]:
            ids = torch.tensor([[tokenizer.BOS_ID, *tokenizer.encode(text)]])
            with torch.no_grad():
                probs = torch.softmax(net(ids[:, :-1]).double(), dim=-1)[0]  # (T-1, V): position i predicts i+1
            first = text.index("=") + 1  # input position of '=' (BOS shifts by one) predicts the first answer token
            for step, position in enumerate(range(first, len(text))):
                p = probs[position]
                per_step.setdefault(step, []).append(float(-(p * torch.log2(p)).sum()))
        return {step: float(np.mean(values)) for step, values in per_step.items()}

    for column, net in (("before_bits", model), ("after_bits", after)):
        expected = direct(net)
        assert table["step"].tolist() == sorted(expected)
        assert table[column].tolist() == pytest.approx([expected[s] for s in table["step"]], abs=1e-5)
    assert not np.allclose(table["before_bits"], table["after_bits"])  # two models, two readings
    levels = digit_blind_levels(theory, problems, [])
    assert table["digit_blind_running_bits"].tolist() == pytest.approx(
        levels.set_index("step").loc[table["step"], "digit_blind_running_bits"].tolist())
    outside = frame.iloc[:3].assign(a_digits=7, b_digits=7)  # lengths the theory table lacks: no level, not an error
    assert table.columns.tolist() == rl_entropy_by_step(model, after, outside, theory).columns.tolist()
    assert rl_entropy_by_step(model, after, outside, theory)["digit_blind_running_bits"].isna().all()

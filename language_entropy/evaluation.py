"""Every measurement of one split: accuracy, entropy against theory, calibration, temperature, semantic entropy.

Built from `measure` (the model's statistics and answers), `uncertainty` (the metrics) and `theory`
(the reference levels); the evaluate stage writes and logs what `evaluate_split` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from language_entropy.measure import expected_answers, sample_sequences, teacher_forced_stats
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import EvalConfig
from language_entropy.problems import reorder_answer
from language_entropy.theory import theoretical_levels
from language_entropy.uncertainty import (
    auroc,
    digit_accuracy,
    expected_calibration_error,
    perplexity,
    semantic_entropy_by_problem,
)


@dataclass
class SplitReport:
    summary: dict  # nested numbers for eval.json
    entropy_by_step: pd.DataFrame  # per operation
    entropy_by_step_bucket: pd.DataFrame  # per operation and operand-length bucket
    reliability: pd.DataFrame
    temperature: pd.DataFrame


def _breakdown(problems: pd.DataFrame, tokens: pd.DataFrame, key: str, temperatures: tuple[float, ...],
               bins: int) -> dict[str, dict]:
    """Per value of `key` (op or bucket): accuracy, entropy, perplexity, calibration and temperature curve."""
    report = {}
    for value, group in problems.groupby(key, sort=True):
        group_tokens = tokens[tokens[key] == value]
        report[value] = {
            "n": len(group),
            "exact_match": float(group["right"].mean()),
            "digit_accuracy": digit_accuracy(group["written"].tolist(), group["answer"].tolist()),
            "mean_entropy_bits": float(group_tokens["entropy_bits"].mean()),
            **perplexity(group_tokens["nll_nats"].sum(), len(group_tokens)),
            "ece": expected_calibration_error(group_tokens["confidence"], group_tokens["correct"], bins)[0],
            "temperature": {f"{t:g}": float(group[f"right_at_{t:g}"].mean()) for t in temperatures},
        }
    return report


def _entropy_by_step(tokens: pd.DataFrame, keys: list[str], levels) -> pd.DataFrame:
    """Model entropy and accuracy per answer step, per group of `keys`, beside `levels(*group)`."""
    table = tokens.groupby([*keys, "step"]).agg(model_entropy_bits=("entropy_bits", "mean"),
                                                accuracy=("correct", "mean")).reset_index()
    theory = pd.concat([levels(*group).assign(**dict(zip(keys, group, strict=True)))
                        for group in table[keys].drop_duplicates().itertuples(index=False)], ignore_index=True)
    theory = theory.rename(columns={"marginal_bits": "theoretical_marginal_bits",
                                    "conditional_bits": "theoretical_conditional_bits"})
    return table.merge(theory, on=[*keys, "step"], how="left").rename(columns={"op": "operation"})


def evaluate_split(model: ArithmeticDecoder, frame: pd.DataFrame, theory: pd.DataFrame, scope: str,
                   config: EvalConfig, reverse_answer: bool, seed: int) -> SplitReport:
    """Every measurement of one split; `theory` is the theoretical-entropy table, `scope` the split's
    mixture in it (`in_distribution` or `ood`)."""
    texts = frame["text"].tolist()
    device = next(model.parameters()).device
    forced = teacher_forced_stats(model, texts, device, config.batch_size).tokens
    greedy = sample_sequences(model, texts, config.batch_size)
    expected = expected_answers(texts)
    problems = frame.assign(
        right=[got == want for got, want in zip(greedy["answer"], expected, strict=True)],
        written=[reorder_answer(answer, reverse_answer) for answer in greedy["answer"]],
        bucket=frame["op"] + "_" + frame["a_digits"].astype(str) + "x" + frame["b_digits"].astype(str))
    for column in ("op", "bucket", "a_digits", "b_digits"):
        forced[column] = problems[column].to_numpy()[forced["row"].to_numpy()]
    ece, reliability = expected_calibration_error(forced["confidence"], forced["correct"], config.calibration_bins)

    # entropy at each answer step, beside the theoretical levels of the same operation (and bucket)
    by_step = _entropy_by_step(forced, ["op"], lambda op: theoretical_levels(theory, scope, op))
    by_step_bucket = _entropy_by_step(forced, ["op", "a_digits", "b_digits"],
                                      lambda op, a, b: theoretical_levels(theory, "bucket", op, int(a), int(b)))

    generator = torch.Generator().manual_seed(seed)
    temperature_rows = []
    for temperature in config.temperatures:
        sampled = greedy if temperature == 0 else sample_sequences(
            model, texts, config.batch_size, temperature, config.top_k, config.top_p, generator=generator)
        right = np.equal(sampled["answer"].to_numpy(), np.asarray(expected))
        problems[f"right_at_{temperature:g}"] = right
        temperature_rows.append({"temperature": temperature, "exact_match": float(right.mean()),
                                 "mean_entropy_bits": float(sampled["mean_entropy_bits"].mean())})

    # semantic entropy on the first problems, against the same problems' token entropy and sequence NLL
    n_semantic = min(config.semantic_problems, len(texts))
    samples = sample_sequences(model, texts[:n_semantic], config.batch_size, config.semantic_temperature,
                               config.top_k, config.top_p, repeats=config.semantic_samples, generator=generator)
    samples["answer"] = [reorder_answer(answer, reverse_answer) for answer in samples["answer"]]
    semantic = semantic_entropy_by_problem(samples)
    wrong = ~problems["right"].to_numpy()[:n_semantic]
    scores = {"semantic_entropy": semantic["discrete_semantic_entropy"],
              "semantic_entropy_weighted": semantic["weighted_semantic_entropy"],
              "token_entropy": greedy["mean_entropy_bits"][:n_semantic],
              "sequence_nll": -greedy["logprob"][:n_semantic]}
    aurocs = {name: auroc(score.to_numpy(), wrong) for name, score in scores.items()}

    summary = {
        "n_problems": len(texts),
        "exact_match": float(problems["right"].mean()),
        "digit_accuracy": digit_accuracy(problems["written"].tolist(), problems["answer"].tolist()),
        **perplexity(forced["nll_nats"].sum(), len(forced)),
        "mean_entropy_bits": float(forced["entropy_bits"].mean()),
        "ece": ece,
        "per_operation": _breakdown(problems, forced, "op", config.temperatures, config.calibration_bins),
        "per_bucket": _breakdown(problems, forced, "bucket", config.temperatures, config.calibration_bins),
        "temperature": {f"{row['temperature']:g}": {k: row[k] for k in ("exact_match", "mean_entropy_bits")}
                        for row in temperature_rows},
        "semantic": {"problems": n_semantic, "samples": config.semantic_samples,
                     "temperature": config.semantic_temperature,
                     "mean_semantic_entropy_bits": float(semantic["discrete_semantic_entropy"].mean()),
                     "mean_weighted_semantic_entropy_bits": float(semantic["weighted_semantic_entropy"].mean())},
        "auroc": {name: result.value for name, result in aurocs.items()},
        "auroc_reason": {name: result.reason for name, result in aurocs.items() if result.value is None},
    }
    return SplitReport(summary, by_step, by_step_bucket, reliability, pd.DataFrame(temperature_rows))


def flatten_numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested report under dotted names (``test.auroc.token_entropy``)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, f"{name}."))
        elif isinstance(value, int | float | np.number) and not isinstance(value, bool) and np.isfinite(value):
            flat[name] = float(value)
    return flat


SPLIT_NAMES = {"test": ("test", "in_distribution"), "test_ood": ("ood", "ood")}  # report name -> (split, scope)

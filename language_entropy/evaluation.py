"""Every measurement of one split: accuracy, entropy against the digit-blind reference, calibration,
temperature, semantic entropy and continuity, each rate with its 95% interval.

Built from `measure` (the model's statistics and answers), `uncertainty` (the metrics) and `theory`
(the exact per-bucket levels); the evaluate stage writes and logs what `evaluate_split` returns.

Error-detection AUROCs come pooled (``auroc``) and as the mean of the AUROCs within each (operation,
operand lengths) bucket (``stratified_auroc``), which gives no credit for telling buckets apart.
`problem_table` is the per-problem table (each answer with its scores).

Intervals sit beside their value under the same name plus ``.ci_low`` / ``.ci_high``: Wilson for
every exact match, a percentile bootstrap over problems (N_BOOT resamples, seeded by `seed`; within
buckets for the stratified form) for every AUROC, none where fewer than 10 answers are wrong or right
(the ``*_reason`` entries say so). Every random draw comes from its own generator, seeded by (seed,
purpose) (`purpose_generator`): the temperature sweep (one per temperature), the semantic-entropy
samples and the sampled sequence calibration never share a stream, so changing one leaves the others'
numbers bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from language_entropy.errors import UserError
from language_entropy.measure import continuity_stats, expected_answers, sample_sequences, teacher_forced_stats
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import EvalConfig
from language_entropy.problems import reorder_answer, written_if_well_formed
from language_entropy.theory import theoretical_levels
from language_entropy.uncertainty import (
    auroc,
    bootstrap_auroc_interval,
    bootstrap_stratified_auroc_interval,
    digit_accuracy,
    expected_calibration_error,
    interval_withheld,
    perplexity,
    semantic_entropy_by_problem,
    sequence_calibration,
    stratified_auroc,
    stratified_interval_withheld,
    wilson_interval,
)

BUCKET_KEYS = ["op", "a_digits", "b_digits"]
LEVEL_COLUMNS = ["digit_blind_running_bits", "digit_blind_all_bits", "running_fraction"]
SEQUENCE_DECODINGS = ("greedy", "sampled_t1")  # sequence confidence of the greedy answer, of one sample at T=1
N_BOOT = 1000  # bootstrap resamples of every AUROC interval


@dataclass
class SplitReport:
    summary: dict  # nested numbers for eval.json
    entropy_by_step: pd.DataFrame  # per operation
    entropy_by_step_bucket: pd.DataFrame  # per operation and operand-length bucket
    token_reliability: pd.DataFrame  # teacher-forced next-token confidence against top-1 correctness
    sequence_reliability: pd.DataFrame  # per operation ("all" too) and decoding: sequence confidence vs exact match
    temperature: pd.DataFrame
    problems: pd.DataFrame  # the split's rows with each problem's readings (right, confidence_greedy, ...)


def purpose_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator of its own for one purpose (e.g. "semantic", "temperature 0.5"), seeded by (seed, purpose)."""
    state = np.random.SeedSequence([seed, *purpose.encode()]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


# ----------------------------------------------------------------------------- the digit-blind reference


def digit_blind_levels(theory: pd.DataFrame, problems: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The reference level of each answer step for the problems of a split, per group of `keys`.

    problems: one row per problem with columns op, a_digits, b_digits. keys: a subset of those
    (["op"]: per operation; BUCKET_KEYS: per bucket; []: the whole split). For bucket b (n_b problems
    of the group), H_b(t) = H(Y_t | Y_<t, op, lengths) (`conditional_bits` of the theory table: the
    entropy left to a *digit-blind* predictor, which reads the operation and lengths but not the
    digits) and r_b(t) its fraction of answers still running at step t (`running_fraction`).
    Ended answers emit "ended" with certainty, so H_b(t) = r_b(t) * H_b(t | running). Returns, by step:

    * ``digit_blind_running_bits = sum_b n_b r_b(t) H_b(t | running) / sum_b n_b r_b(t)``: the
      answers still running at t, as the model's per-step mean covers them (NaN where none runs);
    * ``digit_blind_all_bits = sum_b n_b H_b(t) / sum_b n_b``: all answers, ended ones included;
    * ``running_fraction = sum_b n_b r_b(t) / sum_b n_b``.

    A bucket past its last step has r_b = H_b = 0. NaN (a Monte Carlo conditional that could not be
    estimated) in any bucket of a group makes that group's step NaN.
    """
    counts = problems.groupby(BUCKET_KEYS).size().rename("n").reset_index()
    parts = [theoretical_levels(theory, "bucket", row.op, int(row.a_digits), int(row.b_digits))
             .assign(op=row.op, a_digits=int(row.a_digits), b_digits=int(row.b_digits), n=row.n)
             for row in counts.itertuples(index=False)]
    levels = pd.concat(parts, ignore_index=True)
    levels["all_mass"] = levels["n"] * levels["conditional_bits"]  # n_b H_b(t) = n_b r_b(t) H_b(t | running)
    levels["running_mass"] = levels["n"] * levels["running_fraction"]
    group = [*keys, "step"]
    sums = levels.groupby(group).agg(all_mass=("all_mass", lambda x: x.sum(skipna=False)),
                                     running_mass=("running_mass", "sum")).reset_index()
    totals = counts.groupby(keys)["n"].sum().rename("total").reset_index() if keys else \
        pd.DataFrame({"total": [counts["n"].sum()]})
    sums = sums.merge(totals, on=keys) if keys else sums.assign(total=int(totals["total"].iloc[0]))
    running = sums["running_mass"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sums["digit_blind_running_bits"] = np.where(running > 0, sums["all_mass"] / running, np.nan)
    sums["digit_blind_all_bits"] = sums["all_mass"] / sums["total"]
    sums["running_fraction"] = sums["running_mass"] / sums["total"]
    return sums[[*group, *LEVEL_COLUMNS]]


def _entropy_by_step(tokens: pd.DataFrame, keys: list[str], levels: pd.DataFrame) -> pd.DataFrame:
    """Model entropy and accuracy per answer step, per group of `keys`, beside the digit-blind `levels`."""
    table = tokens.groupby([*keys, "step"]).agg(model_entropy_bits=("entropy_bits", "mean"),
                                                accuracy=("correct", "mean"), n_tokens=("step", "size")).reset_index()
    return table.merge(levels, on=[*keys, "step"], how="left").rename(columns={"op": "operation"})


# ----------------------------------------------------------------------------- rates with intervals


def _rate(name: str, hits) -> dict[str, float]:
    """{name: fraction, name.ci_low, name.ci_high}: a proportion with its Wilson 95% interval."""
    hits = np.asarray(hits, dtype=bool)
    low, high = wilson_interval(int(hits.sum()), int(hits.size))
    return {name: float(hits.mean()), f"{name}.ci_low": low, f"{name}.ci_high": high}


def _auroc(name: str, scores, wrong, seed: int, groups=None, strata=None) -> tuple[dict, str | None]:
    """({name, name.ci_low, name.ci_high}, reason when undefined or without interval): an AUROC and its
    bootstrap 95% interval; with `strata`, the mean of the AUROCs within them (`stratified_auroc`) and its
    bootstrap within strata. No interval where fewer than 10 answers are wrong or right (`interval_withheld`; with
    `strata`, in any stratum the mean averages: `stratified_interval_withheld`)."""
    scores, wrong = np.asarray(scores, dtype=float), np.asarray(wrong, dtype=bool)
    if strata is None:
        result, withheld = auroc(scores, wrong), interval_withheld(wrong)
    else:  # the rule per bucket: the bootstrap resamples each bucket on its own
        result, withheld = stratified_auroc(scores, wrong, strata), stratified_interval_withheld(wrong, strata)
    withheld = withheld if result.value is not None else None
    if result.value is None or withheld is not None:
        interval = None
    elif strata is None:
        interval = bootstrap_auroc_interval(scores, wrong, n_boot=N_BOOT, seed=seed, groups=groups)
    else:
        interval = bootstrap_stratified_auroc_interval(scores, wrong, strata, n_boot=N_BOOT, seed=seed)
    low, high = interval if interval is not None else (None, None)
    return {name: result.value, f"{name}.ci_low": low, f"{name}.ci_high": high}, result.reason or withheld


def operand_length_rates(frame: pd.DataFrame, right) -> dict[str, dict[str, float]]:
    """Exact match per operand length: for each L, the problems whose longer operand has L digits (so every
    problem counts once; on OOD 4 and 5 read the RL-trained length and the never-trained one apart), as
    {str(L): {n, exact_match, exact_match.ci_low, exact_match.ci_high}}."""
    right = np.asarray(right, dtype=bool)
    length = np.maximum(frame["a_digits"].to_numpy(), frame["b_digits"].to_numpy())
    return {str(int(L)): {"n": int((length == L).sum()), **_rate("exact_match", right[length == L])}
            for L in np.unique(length)}


def operation_rates(frame: pd.DataFrame, right) -> dict:
    """Exact match over `frame` and per operation, each with its Wilson 95% interval:
    {exact_match, exact_match.ci_low, exact_match.ci_high, per_operation: {op: {n, exact_match, ...}}}."""
    right = np.asarray(right, dtype=bool)
    ops = frame["op"].to_numpy()
    return {**_rate("exact_match", right),
            "per_operation": {str(op): {"n": int((ops == op).sum()), **_rate("exact_match", right[ops == op])}
                              for op in sorted(np.unique(ops))}}


def _breakdown(problems: pd.DataFrame, tokens: pd.DataFrame, key: str, temperatures: tuple[float, ...],
               bins: int) -> dict[str, dict]:
    """Per value of `key` (op or bucket): accuracy, entropy, perplexity, calibration and temperature curve."""
    report = {}
    for value, group in problems.groupby(key, sort=True):
        group_tokens = tokens[tokens[key] == value]
        temperature = {}
        for t in temperatures:
            temperature.update(_rate(f"{t:g}", group[f"right_at_{t:g}"]))
        report[value] = {
            "n": len(group),
            **_rate("exact_match", group["right"]),
            "digit_accuracy": digit_accuracy(group["written"].tolist(), group["answer"].tolist()),
            "mean_entropy_bits": float(group_tokens["entropy_bits"].mean()),
            **perplexity(group_tokens["nll_nats"].sum(), len(group_tokens)),
            "token_ece": expected_calibration_error(group_tokens["confidence"], group_tokens["correct"], bins)[0],
            "temperature": temperature,
        }
    return report


def _sequence_calibration(problems: pd.DataFrame, bins: int) -> tuple[dict, dict, pd.DataFrame]:
    """Sequence confidence against exact match, per operation and for the whole split ("all"), per decoding.

    Returns ({operation: {"sequence_ece": {decoding: ...}, "sequence_brier": {...}}}, the same for
    the whole split, and the reliability rows with a Wilson interval on each bin's accuracy).
    """
    per_operation, overall, tables = {}, {}, []
    groups = [("all", problems), *problems.groupby("op", sort=True)]
    for operation, group in groups:
        entry = {"sequence_ece": {}, "sequence_brier": {}}
        for decoding in SEQUENCE_DECODINGS:
            result = sequence_calibration(group[f"confidence_{decoding}"], group[f"right_{decoding}"], bins)
            entry["sequence_ece"][decoding] = result["ece"]
            entry["sequence_brier"][decoding] = result["brier"]
            table = result["reliability"].assign(operation=operation, decoding=decoding)
            right = np.round(table["accuracy"].fillna(0) * table["count"]).astype(int)
            intervals = [wilson_interval(k, n) if n else (np.nan, np.nan)
                         for k, n in zip(right, table["count"], strict=True)]
            table["accuracy_ci_low"], table["accuracy_ci_high"] = zip(*intervals, strict=True)
            tables.append(table)
        (overall if operation == "all" else per_operation.setdefault(operation, {})).update(entry)
    return per_operation, overall, pd.concat(tables, ignore_index=True)


# ----------------------------------------------------------------------------- the sections of one split


def _answers(model: ArithmeticDecoder, frame: pd.DataFrame, config: EvalConfig,
             reverse_answer: bool) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """The greedy answers and the teacher-forced token statistics: (problems, with `right`, `written` and
    `bucket` added; the forced answer tokens, with each problem's op and lengths; the greedy sequences;
    the exact answers as the model writes them)."""
    texts = frame["text"].tolist()
    device = next(model.parameters()).device
    forced = teacher_forced_stats(model, texts, device, config.batch_size).tokens
    greedy = sample_sequences(model, texts, config.batch_size)
    expected = np.asarray(expected_answers(texts))
    problems = frame.assign(
        right=np.equal(greedy["answer"].to_numpy(), expected),
        written=[reorder_answer(answer, reverse_answer) for answer in greedy["answer"]],
        bucket=frame["op"] + "_" + frame["a_digits"].astype(str) + "x" + frame["b_digits"].astype(str))
    for column in ("op", "bucket", "a_digits", "b_digits"):
        forced[column] = problems[column].to_numpy()[forced["row"].to_numpy()]
    return problems, forced, greedy, expected


def _temperature_sweep(model: ArithmeticDecoder, problems: pd.DataFrame, greedy: pd.DataFrame,
                       expected: np.ndarray, config: EvalConfig, seed: int) -> pd.DataFrame:
    """Exact match at each of `config.temperatures` (one generator each; `right_at_<T>` added to `problems`).
    The entropy is that of the distribution sampled from, softmax(logits / T) (before top-k/top-p filtering,
    both off by default), so 0 for greedy decoding (a point mass)."""
    rows = []
    for temperature in config.temperatures:
        if temperature == 0:
            sampled, entropy = greedy, 0.0
        else:
            sampled = sample_sequences(model, problems["text"].tolist(), config.batch_size, temperature, config.top_k,
                                       config.top_p, generator=purpose_generator(seed, f"temperature {temperature:g}"))
            entropy = float(sampled["mean_entropy_bits"].mean())
        right = np.equal(sampled["answer"].to_numpy(), expected)
        problems[f"right_at_{temperature:g}"] = right
        rate = _rate("exact_match", right)
        rows.append({"temperature": temperature, "exact_match": rate["exact_match"],
                     "exact_match_ci_low": rate["exact_match.ci_low"],
                     "exact_match_ci_high": rate["exact_match.ci_high"], "mean_entropy_bits": entropy})
    return pd.DataFrame(rows)


def _sequence_confidences(model: ArithmeticDecoder, problems: pd.DataFrame, greedy: pd.DataFrame,
                          expected: np.ndarray, config: EvalConfig, seed: int) -> None:
    """P(answer) under greedy decoding and for one sample at T=1, beside whether each is right (added to
    `problems` as confidence_/right_ greedy and sampled_t1)."""
    once = sample_sequences(model, problems["text"].tolist(), config.batch_size, 1.0,
                            generator=purpose_generator(seed, "calibration"))
    problems["confidence_greedy"] = np.exp(greedy["logprob"].to_numpy(dtype=float))
    problems["right_greedy"] = problems["right"]
    problems["confidence_sampled_t1"] = np.exp(once["logprob"].to_numpy(dtype=float))
    problems["answer_sampled_t1"] = once["answer"].to_numpy()  # as emitted
    problems["right_sampled_t1"] = np.equal(once["answer"].to_numpy(), expected)


def _error_detection(model: ArithmeticDecoder, problems: pd.DataFrame, greedy: pd.DataFrame, config: EvalConfig,
                     reverse_answer: bool, seed: int) -> tuple[pd.DataFrame, dict[str, tuple[dict, dict]]]:
    """Semantic entropy on the first `semantic_problems` problems, and the AUROC of it, of the greedy answer's
    token entropy and of its sequence NLL for flagging wrong answers, pooled and within (operation, lengths)
    buckets: (semantic entropies, {"pooled" / "stratified": (AUROCs with intervals, reasons where undefined
    or without interval)}). Adds each problem's scores to `problems`."""
    n_semantic = min(config.semantic_problems, len(problems))
    samples = sample_sequences(model, problems["text"].tolist()[:n_semantic], config.batch_size,
                               config.semantic_temperature, config.top_k, config.top_p,
                               repeats=config.semantic_samples, generator=purpose_generator(seed, "semantic"))
    # only a well-formed answer is un-reversed: reordering "12-" would make the number -21 of it
    samples["answer"] = [written_if_well_formed(answer, reverse_answer) for answer in samples["answer"]]
    semantic = semantic_entropy_by_problem(samples)
    wrong = ~problems["right"].to_numpy()[:n_semantic]
    scores = {"semantic_entropy": semantic["discrete_semantic_entropy"],
              "semantic_entropy_weighted": semantic["weighted_semantic_entropy"],
              "semantic_entropy_reference": semantic["reference_semantic_entropy"],
              "token_entropy": greedy["mean_entropy_bits"][:n_semantic],
              "sequence_nll": -greedy["logprob"][:n_semantic]}
    buckets = problems["bucket"].to_numpy()[:n_semantic]
    aurocs, reasons, stratified, stratified_reasons = {}, {}, {}, {}
    for name, score in scores.items():
        entry, reasons[name] = _auroc(name, score.to_numpy(), wrong, seed)
        aurocs.update(entry)
        entry, stratified_reasons[name] = _auroc(name, score.to_numpy(), wrong, seed, strata=buckets)
        stratified.update(entry)
    # each problem's scores beside its answer, for the per-problem table (NaN past the semantic problems)
    problems["mean_token_entropy_bits"] = greedy["mean_entropy_bits"].to_numpy(dtype=float)
    for column, values in (("semantic_entropy_bits", semantic["discrete_semantic_entropy"]),
                           ("weighted_semantic_entropy_bits", semantic["weighted_semantic_entropy"]),
                           ("reference_semantic_entropy_nats", semantic["reference_semantic_entropy"])):
        problems[column] = np.nan
        problems.loc[problems.index[:n_semantic], column] = values.to_numpy(dtype=float)
    return semantic, {"pooled": (aurocs, reasons), "stratified": (stratified, stratified_reasons)}


def _token_error_detection(forced: pd.DataFrame, seed: int) -> tuple[dict, dict]:
    """Per-token entropy as a detector of per-token errors (top-1 wrong) under teacher forcing, overall and per
    operation, bootstrapped over problems (a problem's tokens are not independent)."""
    aurocs, reasons = {}, {}
    for operation, group in [("all", forced), *forced.groupby("op", sort=True)]:
        entry, reasons[operation] = _auroc(operation, group["entropy_bits"], ~group["correct"].to_numpy(),
                                           seed, groups=group["row"].to_numpy())
        aurocs.update(entry)
    return aurocs, reasons


# ----------------------------------------------------------------------------- one split


def evaluate_split(model: ArithmeticDecoder, frame: pd.DataFrame, theory: pd.DataFrame, config: EvalConfig,
                   reverse_answer: bool, seed: int, continuity_on: str | int = "final",
                   continuity_positions: str = "answer") -> SplitReport:
    """Every measurement of one split; `theory` is the theoretical-entropy table (its bucket rows are
    mixed with this split's bucket counts), `continuity_on` and `continuity_positions` the trained
    model's `loss.continuity_on` / `loss.continuity_positions` (what its continuity loss acts on)."""
    problems, forced, greedy, expected = _answers(model, frame, config, reverse_answer)
    token_ece, token_reliability = expected_calibration_error(forced["confidence"], forced["correct"],
                                                              config.calibration_bins)
    # entropy at each answer step, beside the digit-blind level of the same operation (and bucket)
    by_step = _entropy_by_step(forced, ["op"], digit_blind_levels(theory, problems, ["op"]))
    by_step_bucket = _entropy_by_step(forced, BUCKET_KEYS, digit_blind_levels(theory, problems, BUCKET_KEYS))
    temperatures = _temperature_sweep(model, problems, greedy, expected, config, seed)
    _sequence_confidences(model, problems, greedy, expected, config, seed)
    calibration_per_op, calibration, sequence_reliability = _sequence_calibration(problems, config.calibration_bins)
    semantic, detection = _error_detection(model, problems, greedy, config, reverse_answer, seed)
    (aurocs, reasons), (stratified, stratified_reasons) = detection["pooled"], detection["stratified"]
    token_aurocs, token_reasons = _token_error_detection(forced, seed)

    per_operation = _breakdown(problems, forced, "op", config.temperatures, config.calibration_bins)
    for operation, entry in calibration_per_op.items():
        per_operation[operation].update(entry)
    temperature_summary = {f"{row.temperature:g}": {
        "exact_match": row.exact_match, "exact_match.ci_low": row.exact_match_ci_low,
        "exact_match.ci_high": row.exact_match_ci_high, "mean_entropy_bits": row.mean_entropy_bits}
        for row in temperatures.itertuples()}
    device = next(model.parameters()).device
    summary = {
        "n_problems": len(problems),
        **_rate("exact_match", problems["right"]),
        "digit_accuracy": digit_accuracy(problems["written"].tolist(), problems["answer"].tolist()),
        **perplexity(forced["nll_nats"].sum(), len(forced)),
        "mean_entropy_bits": float(forced["entropy_bits"].mean()),
        "token_ece": token_ece,
        **calibration,
        **continuity_stats(model, problems["text"].tolist(), device, continuity_on, continuity_positions,
                           config.batch_size),
        "continuity_representation": f"{continuity_on}, {continuity_positions} positions",
        "per_operation": per_operation,
        "per_operand_length": operand_length_rates(problems, problems["right"]),
        "per_bucket": _breakdown(problems, forced, "bucket", config.temperatures, config.calibration_bins),
        "temperature": temperature_summary,
        "semantic": {"problems": len(semantic), "samples": config.semantic_samples,
                     "temperature": config.semantic_temperature,
                     "mean_semantic_entropy_bits": float(semantic["discrete_semantic_entropy"].mean()),
                     "mean_weighted_semantic_entropy_bits": float(semantic["weighted_semantic_entropy"].mean()),
                     # Farquhar et al. 2024's estimator (every sample, EOS cut, nats), to compare with published numbers
                     "mean_reference_semantic_entropy_nats": float(semantic["reference_semantic_entropy"].mean())},
        "auroc": aurocs,
        "auroc_reason": {name: reason for name, reason in reasons.items() if reason is not None},
        # the mean of the AUROCs within each (operation, lengths) bucket: no credit for telling buckets apart
        "stratified_auroc": stratified,
        "stratified_auroc_reason": {name: reason for name, reason in stratified_reasons.items() if reason is not None},
        "token_error_auroc": token_aurocs,
        "token_error_auroc_reason": {name: reason for name, reason in token_reasons.items() if reason is not None},
    }
    return SplitReport(summary, by_step, by_step_bucket, token_reliability, sequence_reliability, temperatures,
                       problems)


PROBLEM_COLUMNS = {  # the per-problem table (metrics/problems.parquet): column -> column of SplitReport.problems
    "operation": "op", "a": "a", "b": "b", "a_digits": "a_digits", "b_digits": "b_digits", "answer": "answer",
    "written": "written", "correct": "right", "sequence_probability": "confidence_greedy",
    "mean_token_entropy_bits": "mean_token_entropy_bits", "semantic_entropy_bits": "semantic_entropy_bits",
    "weighted_semantic_entropy_bits": "weighted_semantic_entropy_bits",
    "reference_semantic_entropy_nats": "reference_semantic_entropy_nats",
}


def rl_entropy_by_step(before: ArithmeticDecoder, after: ArithmeticDecoder, problems: pd.DataFrame,
                       theory: pd.DataFrame) -> pd.DataFrame:
    """Mean teacher-forced entropy per answer step of the model before and after RL on `problems`, beside their
    digit-blind level (NaN where the theory table holds none of their buckets: rl.digits outside the data's)."""
    texts = problems["text"].tolist()
    device = next(after.parameters()).device
    by_step = {name: teacher_forced_stats(model, texts, device).tokens.groupby("step")["entropy_bits"].mean()
               for name, model in (("before_bits", before), ("after_bits", after))}
    table = pd.DataFrame(by_step).rename_axis("step").reset_index()
    try:
        reference = digit_blind_levels(theory, problems, [])[["step", "digit_blind_running_bits"]]
    except UserError:  # no theory for these lengths
        reference = pd.DataFrame({"step": table["step"], "digit_blind_running_bits": float("nan")})
    return table.merge(reference, on="step", how="left")


def problem_table(problems: pd.DataFrame) -> pd.DataFrame:
    """One row per problem of a split: the problem (operation, operands, their lengths, the right answer), the
    greedy answer as written and whether it is right, its sequence probability and mean token entropy (bits),
    and the semantic entropies (bits, the reference one in nats; NaN past `eval.semantic_problems`)."""
    return problems[list(PROBLEM_COLUMNS.values())].set_axis(list(PROBLEM_COLUMNS), axis=1).reset_index(drop=True)


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


SPLIT_NAMES = {"test": "test", "test_ood": "ood"}  # report name -> data split
# semantic_entropy is the discrete estimator: it needs no likelihoods and is Farquhar et al.'s own discrete one (an
# AUROC does not see bits or nats), so it compares with published AUROCs as it stands
HEADLINE_AUROCS = ("semantic_entropy", "token_entropy", "sequence_nll")


def headline(report: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """The numbers a researcher reads first (metrics/summary.json, the file DVC shows as metrics), per split
    (the report's other sections, e.g. ``digit_geometry``, are not splits):
    exact match with its Wilson 95% interval and per operation, mean answer entropy (bits), the greedy
    answers' sequence ECE and perplexity; on OOD also the AUROCs of the three error detectors (None where
    undefined) and exact match per operand length (`exact_match_<L>_digits`), beside the trained model's before
    RL fine-tuning where the report holds it (`exact_match_<L>_digits_before_rl`; on test the trained model's
    exact match overall and per operation, `exact_match_before_rl`, `exact_match_<op>_before_rl`). Under
    ``training``: whether the training learned (1) or stalled (0), its last validation exact match and the steps
    to 50% and 90% (None where never reached). Every one of them is also in the full report (eval.json)."""
    top = {}
    for split, numbers in ((split, report[split]) for split in SPLIT_NAMES if split in report):
        entry = {"exact_match": numbers["exact_match"], "exact_match_ci_low": numbers["exact_match.ci_low"],
                 "exact_match_ci_high": numbers["exact_match.ci_high"]}
        entry.update({f"exact_match_{op}": values["exact_match"] for op, values in numbers["per_operation"].items()})
        entry.update(mean_entropy_bits=numbers["mean_entropy_bits"], sequence_ece=numbers["sequence_ece"]["greedy"],
                     perplexity=numbers["perplexity"])
        if split == "test_ood":
            entry.update({f"auroc_{name}": numbers["auroc"].get(name) for name in HEADLINE_AUROCS})
            for when, rates in (("", numbers["per_operand_length"]),
                                ("_before_rl", numbers.get("before_rl", {}).get("per_operand_length", {}))):
                entry.update({f"exact_match_{length}_digits{when}": rate["exact_match"]
                              for length, rate in rates.items()})
        if "before_rl" in numbers and "per_operation" in numbers["before_rl"]:
            before = numbers["before_rl"]
            entry["exact_match_before_rl"] = before["exact_match"]
            entry.update({f"exact_match_{op}_before_rl": values["exact_match"]
                          for op, values in before["per_operation"].items()})
        top[split] = entry
    if "learning" in report:
        learning = report["learning"]
        top["training"] = {key: learning[key] if math.isfinite(learning[key]) else None
                           for key in ("learned", "final", "steps_to_50", "steps_to_90") if key in learning}
    return top

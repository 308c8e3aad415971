"""Measuring a model on problem texts: teacher-forced token statistics and generated answers.

Shared by training (validation every `train.eval_every` steps) and the evaluate stage.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from language_entropy import tokenizer, tracking
from language_entropy.checkpoint import load_checkpoint, load_model
from language_entropy.cli import UserError
from language_entropy.data import encode_batch, prompt_of, read_split
from language_entropy.devices import select_device
from language_entropy.entropy import NATS_TO_BITS, entropy_from_log_probs, entropy_from_logits
from language_entropy.model import ArithmeticDecoder, generate_batched
from language_entropy.params import EvalConfig, Params
from language_entropy.theory import load_theoretical_entropy, theoretical_levels
from language_entropy.uncertainty import (
    RELIABILITY_COLUMNS,
    auroc,
    digit_accuracy,
    expected_calibration_error,
    perplexity,
    semantic_entropy_by_problem,
)


@dataclass(frozen=True)
class TeacherForcedStats:
    tokens: pd.DataFrame  # one row per answer token: row, step, nll_nats, entropy_bits, confidence, correct

    @property
    def ce_nats(self) -> float:
        return float(self.tokens["nll_nats"].mean())

    @property
    def entropy_bits_by_step(self) -> list[float]:
        return self.tokens.groupby("step")["entropy_bits"].mean().tolist()


@torch.no_grad()
def teacher_forced_stats(model: ArithmeticDecoder, texts: list[str], device: torch.device,
                         batch_size: int = 512) -> TeacherForcedStats:
    """Per answer token (digits, sign and EOS): NLL, entropy, top-1 probability and whether top-1 is right."""
    model.eval()
    frames = []
    for start in range(0, len(texts), batch_size):
        batch = encode_batch(texts[start: start + batch_size], device)
        tokens, mask = batch["tokens"], batch["answer_mask"]
        logits = model(tokens[:, :-1]).float()  # (B, T-1, V)
        targets = tokens[:, 1:]
        log_probs = torch.log_softmax(logits, dim=-1)
        nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        confidence, top1 = log_probs.exp().max(dim=-1)
        step = torch.cumsum(mask.long(), dim=1) - 1  # index of each answer token within its answer
        rows = torch.arange(start, start + len(tokens), device=device).unsqueeze(1).expand_as(mask)
        entropy_bits = entropy_from_logits(logits) * NATS_TO_BITS
        columns = {"row": rows, "step": step, "nll_nats": nll, "entropy_bits": entropy_bits,
                   "confidence": confidence, "correct": top1 == targets}
        frames.append(pd.DataFrame({name: values[mask].cpu().numpy() for name, values in columns.items()}))
    return TeacherForcedStats(pd.concat(frames, ignore_index=True))


def expected_answers(texts: list[str]) -> list[str]:
    """The answer part of each text as the model emits it (after '=', without EOS)."""
    return [text[len(prompt_of(text)):].removesuffix(tokenizer.EOS) for text in texts]


def generation_prompts(texts: list[str]) -> tuple[list[list[int]], int]:
    """Prompt ids (BOS + up to '=') and a generation budget: the longest expected answer, EOS, one spare."""
    prompts = [[tokenizer.BOS_ID, *tokenizer.encode(prompt_of(text))] for text in texts]
    return prompts, max(len(answer) for answer in expected_answers(texts)) + 2


def greedy_right(model: ArithmeticDecoder, texts: list[str], batch_size: int = 512) -> np.ndarray:
    """Whether the greedy answer to each problem is exactly right, (N,) bool."""
    answers = sample_sequences(model, texts, batch_size)["answer"].to_numpy()
    return np.equal(answers, np.asarray(expected_answers(texts)))


def greedy_exact_match(model: ArithmeticDecoder, texts: list[str], batch_size: int = 512) -> float:
    return float(greedy_right(model, texts, batch_size).mean())


def _entropy_bits(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of distributions given as probabilities (..., V)."""
    return entropy_from_log_probs(probs.clamp_min(1e-30).log()) * NATS_TO_BITS


def written_answer(emitted: str, reverse_answer: bool) -> str:
    """An emitted answer as a person writes it: digits back in order, sign first."""
    return tokenizer.decode_answer(tokenizer.encode(emitted), reverse_answer)


@torch.no_grad()
def sample_sequences(model: ArithmeticDecoder, texts: list[str], batch_size: int, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, repeats: int = 1,
                     generator: torch.Generator | None = None) -> pd.DataFrame:
    """Generate `repeats` answers per problem; one row per sequence with its score.

    Columns: problem (index into `texts`), answer (as emitted), logprob (nats, of the emitted tokens
    incl. EOS under softmax(logits / temperature), the model's own distribution when greedy, before
    any top-k/top-p filtering), length (tokens incl. EOS), mean_entropy_bits (mean over the emitted
    tokens of the entropy of that same distribution).
    """
    model.eval()
    problems = np.repeat(np.arange(len(texts)), repeats)
    prompts, budget = generation_prompts(texts)
    out = generate_batched(model, [prompts[i] for i in problems], batch_size, max_new_tokens=budget,
                           temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, return_probs=True)
    emitted = out.tokens != tokenizer.PAD_ID  # (N, S): PAD after EOS
    chosen = out.probs.gather(-1, out.tokens.unsqueeze(-1)).squeeze(-1).clamp_min(1e-30)
    entropy = _entropy_bits(out.probs)  # (N, S)
    length = emitted.sum(1)
    return pd.DataFrame({
        "problem": problems,
        "answer": [tokenizer.emitted_answer(row) for row in out.tokens],
        "logprob": (chosen.log() * emitted).sum(1).numpy(),
        "length": length.numpy(),
        "mean_entropy_bits": ((entropy * emitted).sum(1) / length.clamp_min(1)).numpy(),
    })


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
        written=[written_answer(answer, reverse_answer) for answer in greedy["answer"]],
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
    samples["answer"] = [written_answer(answer, reverse_answer) for answer in samples["answer"]]
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


def print_generation_steps(model: ArithmeticDecoder, frame: pd.DataFrame, reverse_answer: bool, count: int) -> None:
    """--verbose: each step of the first problems' greedy generation: token, p, entropy, top-3, right/wrong."""
    texts = frame["text"].tolist()[:count]
    prompts, budget = generation_prompts(texts)
    out = generate_batched(model, prompts, len(texts), max_new_tokens=budget, return_probs=True)
    entropy = _entropy_bits(out.probs)  # (N, S)
    for i, (text, expected) in enumerate(zip(texts, expected_answers(texts), strict=True)):
        answer = tokenizer.emitted_answer(out.tokens[i])
        verdict = "right" if answer == expected else "wrong"
        print(f"{prompt_of(text)}  expected {frame['answer'].iloc[i]}  got "
              f"{written_answer(answer, reverse_answer)}  ({verdict})")
        wanted = expected + tokenizer.EOS
        for step in range(int((out.tokens[i] != tokenizer.PAD_ID).sum())):
            probs = out.probs[i, step]
            top = torch.topk(probs, 3)
            token = tokenizer.VOCAB[int(out.tokens[i, step])]
            mark = "right" if step < len(wanted) and token == wanted[step] else "wrong"
            alternatives = "  ".join(f"{tokenizer.VOCAB[int(t)]}:{float(p):.3f}"
                                     for p, t in zip(top.values, top.indices, strict=True))
            print(f"  step {step}: {token!r} p={float(probs[out.tokens[i, step]]):.3f} "
                  f"H={float(entropy[i, step]):.3f} bits  top-3 {alternatives}  {mark}")


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


def read_report(path: Path) -> dict:
    """metrics/eval.json, or a one-line error saying which stage makes it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro evaluate` first") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): run `dvc repro evaluate`") \
            from None


def run_evaluation(params: Params, checkpoint: Path, samples: int | None, verbosity: int) -> dict:
    """The evaluate stage: measure the checkpoint on test and OOD, write metrics, log to its MLflow run."""
    samples = samples if samples is not None else params.eval.samples
    if samples is not None and samples <= 0:
        raise UserError(f"--samples must be >= 1 (got {samples})")
    if not checkpoint.exists() and checkpoint == Path(params.paths.model):
        raise UserError(f"{checkpoint} not found: run `dvc repro train` first")
    payload = load_checkpoint(checkpoint)
    device = select_device(params.train.device)
    model = load_model(payload, device).eval()
    theory_path = Path(params.paths.metrics) / "theoretical_entropy.csv"
    theory = load_theoretical_entropy(theory_path)
    frames = {name: read_split(params.paths.data, split) for name, (split, _) in SPLIT_NAMES.items()}
    experiment_id = tracking.connect(params.mlflow.experiment)  # before the work: a bad server fails fast
    if samples is not None and samples > min(len(frame) for frame in frames.values()):
        sizes = ", ".join(f"{name}: {len(frame)}" for name, frame in frames.items())
        print(f"--samples {samples} is more than some split holds ({sizes}): those are used whole", file=sys.stderr)

    report, by_step, by_step_bucket, reliability, temperature = {}, [], [], [], []
    for name, (_, scope) in SPLIT_NAMES.items():
        frame = frames[name].iloc[:samples].reset_index(drop=True)
        if verbosity > 0 and name == "test":
            print_generation_steps(model, frame, params.data.reverse_answer, count=min(10, len(frame)))
        split_report = evaluate_split(model, frame, theory, scope, params.eval, params.data.reverse_answer,
                                      params.seed)
        report[name] = split_report.summary
        by_step.append(split_report.entropy_by_step.assign(split=name))
        by_step_bucket.append(split_report.entropy_by_step_bucket.assign(split=name))
        reliability.append(split_report.reliability.assign(split=name))
        temperature.append(split_report.temperature.assign(split=name))
        if verbosity >= 0:
            summary = split_report.summary
            print(f"{name}: exact match {summary['exact_match']:.4f}  perplexity {summary['perplexity']:.4f}  "
                  f"ECE {summary['ece']:.4f}  AUROC(semantic entropy) {summary['auroc']['semantic_entropy']}")

    metrics_dir = Path(params.paths.metrics)
    step_columns = ["step", "model_entropy_bits", "theoretical_marginal_bits", "theoretical_conditional_bits",
                    "accuracy"]
    tables = {"entropy_by_step.csv": (by_step, ["split", "operation", *step_columns]),
              "entropy_by_step_bucket.csv": (by_step_bucket, ["split", "operation", "a_digits", "b_digits",
                                                              *step_columns]),
              "reliability.csv": (reliability, ["split", *RELIABILITY_COLUMNS]),
              "temperature.csv": (temperature, ["split", "temperature", "exact_match", "mean_entropy_bits"])}
    written = [metrics_dir / "eval.json"]
    metrics_dir.mkdir(parents=True, exist_ok=True)
    written[0].write_text(json.dumps(report, indent=2, default=float) + "\n")
    for file_name, (parts, columns) in tables.items():
        pd.concat(parts, ignore_index=True)[columns].to_csv(metrics_dir / file_name, index=False)
        written.append(metrics_dir / file_name)

    tracking.start_pipeline_run(experiment_id, payload.get("mlflow_run_id"), params.flat())
    tracking.log_metrics(flatten_numbers(report))
    for path in [*written, theory_path, theory_path.with_suffix(".json")]:
        if path.exists():
            tracking.log_artifact(str(path), artifact_path="evaluation")
    tracking.end_run()
    return report

"""The evaluate stage: measure a checkpoint on test and OOD, write the metrics files, log them to MLflow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch

from language_entropy import tokenizer, tracking
from language_entropy.checkpoint import load_checkpoint, load_model
from language_entropy.data import prompt_of, read_split
from language_entropy.devices import select_device
from language_entropy.entropy import entropy_bits_from_probs
from language_entropy.errors import UserError
from language_entropy.evaluation import SPLIT_NAMES, evaluate_split, flatten_numbers
from language_entropy.measure import expected_answers, generation_prompts
from language_entropy.model import ArithmeticDecoder, generate_batched
from language_entropy.params import Params
from language_entropy.pipeline.guards import checkpoint_params, clean_leftovers, interruptible
from language_entropy.pipeline.outputs import check_outputs, output_set
from language_entropy.problems import reorder_answer
from language_entropy.theory import load_theoretical_entropy
from language_entropy.uncertainty import RELIABILITY_COLUMNS

OUTPUT_FILES = ["eval.json", "entropy_by_step.csv", "entropy_by_step_bucket.csv", "reliability.csv", "temperature.csv"]


def print_generation_steps(model: ArithmeticDecoder, frame: pd.DataFrame, reverse_answer: bool, count: int) -> None:
    """--verbose: each step of the first problems' greedy generation: token, p, entropy, top-3, right/wrong."""
    texts = frame["text"].tolist()[:count]
    prompts, budget = generation_prompts(texts)
    out = generate_batched(model, prompts, len(texts), max_new_tokens=budget, return_probs=True)
    entropy = entropy_bits_from_probs(out.probs)  # (N, S)
    for i, (text, expected) in enumerate(zip(texts, expected_answers(texts), strict=True)):
        answer = tokenizer.emitted_answer(out.tokens[i])
        verdict = "right" if answer == expected else "wrong"
        print(f"{prompt_of(text)}  expected {frame['answer'].iloc[i]}  got "
              f"{reorder_answer(answer, reverse_answer)}  ({verdict})")
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




@interruptible("evaluate")
def run_evaluation(params: Params, checkpoint: Path, samples: int | None, verbosity: int, as_is: bool = False) -> dict:
    """The evaluate stage: measure the checkpoint on test and OOD, write metrics, log to its MLflow run.
    `as_is` (--base): a checkpoint whose model config differs from params is measured and logged with its own."""
    samples = samples if samples is not None else params.eval.samples
    if samples is not None and samples <= 0:
        raise UserError(f"--samples must be >= 1 (got {samples})")
    if not checkpoint.exists() and checkpoint == Path(params.paths.model):
        raise UserError(f"{checkpoint} not found: run `dvc repro train` first")
    payload = load_checkpoint(checkpoint)
    logged_params = checkpoint_params(params, payload, checkpoint, as_is)
    check_outputs(files=[("paths.metrics", Path(params.paths.metrics) / name) for name in OUTPUT_FILES])
    device = select_device(params.train.device)
    model = load_model(payload, device).eval()
    theory_path = Path(params.paths.metrics) / "theoretical_entropy.csv"
    theory = load_theoretical_entropy(theory_path)
    frames = {name: read_split(params.paths.data, split, params.data.reverse_answer)
              for name, (split, _) in SPLIT_NAMES.items()}
    experiment_id = tracking.connect(params.mlflow.experiment)  # before the work: a bad server fails fast
    clean_leftovers(params)
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
    written = [metrics_dir / name for name in OUTPUT_FILES]
    with output_set(written) as staged:  # all five replace the previous five, or none does
        staged(metrics_dir / "eval.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        for file_name, (parts, columns) in tables.items():
            pd.concat(parts, ignore_index=True)[columns].to_csv(staged(metrics_dir / file_name), index=False)

    tracking.start_pipeline_run(experiment_id, payload.get("mlflow_run_id"), logged_params)
    tracking.log_metrics(flatten_numbers(report))
    for path in [*written, theory_path, theory_path.with_suffix(".json")]:
        if path.exists():
            tracking.log_artifact(str(path), artifact_path="evaluation")
    tracking.end_run()
    return report

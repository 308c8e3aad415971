"""The evaluate stage: measure a checkpoint on test and OOD, write the metrics files, log them to MLflow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch

from language_entropy import tokenizer
from language_entropy.checkpoint import load_checkpoint, load_model
from language_entropy.data import prompt_of, read_split
from language_entropy.digit_geometry import digit_embeddings, digit_geometry
from language_entropy.entropy import entropy_bits_from_probs
from language_entropy.errors import UserError
from language_entropy.evaluation import (
    SPLIT_NAMES,
    evaluate_split,
    flatten_numbers,
    headline,
    operand_length_rates,
    operation_rates,
    problem_table,
    rl_entropy_by_step,
)
from language_entropy.generation import generate_batched
from language_entropy.learning_speed import learning_outcome
from language_entropy.measure import expected_answers, generation_prompts, greedy_right
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import LossConfig, Params
from language_entropy.pipeline import tracking
from language_entropy.pipeline.devices import select_device
from language_entropy.pipeline.guards import checkpoint_params, clean_leftovers, interruptible
from language_entropy.pipeline.outputs import adhoc_folder, check_outputs, output_set
from language_entropy.problems import reorder_answer
from language_entropy.theory import load_theoretical_entropy
from language_entropy.uncertainty import RELIABILITY_COLUMNS


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




STEP_COLUMNS = ["step", "model_entropy_bits", "digit_blind_running_bits", "digit_blind_all_bits", "running_fraction",
                "accuracy", "n_tokens"]
TABLES = {  # file -> (SplitReport attribute, columns after "split")
    "entropy_by_step.csv": ("entropy_by_step", ["operation", *STEP_COLUMNS]),
    "entropy_by_step_bucket.csv": ("entropy_by_step_bucket", ["operation", "a_digits", "b_digits", *STEP_COLUMNS]),
    "token_reliability.csv": ("token_reliability", list(RELIABILITY_COLUMNS)),
    "sequence_reliability.csv": ("sequence_reliability", ["operation", "decoding", *RELIABILITY_COLUMNS,
                                                          "accuracy_ci_low", "accuracy_ci_high"]),
    "temperature.csv": ("temperature", ["temperature", "exact_match", "exact_match_ci_low", "exact_match_ci_high",
                                        "mean_entropy_bits"]),
}
REPORT_FILE, HEADLINE_FILE = "eval.json", "summary.json"  # every number; the dozen DVC shows as metrics
PROBLEMS_FILE = "problems.parquet"  # one row per problem: its answer and scores (evaluation.problem_table)
OUTPUT_FILES = [REPORT_FILE, HEADLINE_FILE, *TABLES, PROBLEMS_FILE]
CURVE_FILE = "train_curve.csv"  # the train stage's curve, read for the learning-speed readings


@interruptible
def run_evaluation(params: Params, checkpoint: Path, samples: int | None, verbosity: int, adhoc: bool = False,
                   as_is: bool = False) -> dict:
    """The evaluate stage: measure the checkpoint (the fine-tuned model) on test and OOD, and the trained model's
    greedy OOD exact match per operand length (before RL), write metrics, log to its MLflow run.

    `adhoc` (any of --samples, --base, --verbose): the files go to a new folder under reports/adhoc/ and
    the numbers to a separate MLflow run tagged `adhoc`, never to the pipeline's outputs or run. `as_is`
    (--base): a checkpoint whose model config differs from params is measured and logged with its own."""
    samples = samples if samples is not None else params.eval.samples
    if samples is not None and samples <= 0:
        raise UserError(f"--samples must be >= 1 (got {samples})")
    if not checkpoint.exists() and checkpoint == Path(params.paths.finetuned):
        raise UserError(f"{checkpoint} not found: run `dvc repro finetune` first")
    payload = load_checkpoint(checkpoint)
    logged_params = checkpoint_params(params, payload, checkpoint, as_is)
    metrics_dir = adhoc_folder("evaluate") if adhoc else Path(params.paths.metrics)
    if not adhoc:
        check_outputs(files=[("paths.metrics", metrics_dir / name) for name in OUTPUT_FILES])
    device = select_device(params.train.device)
    model = load_model(payload, device).eval()
    model.graphed_generation = params.train.cuda_graphs  # acts on CUDA only
    theory_path = Path(params.paths.metrics) / "theoretical_entropy.csv"
    theory = load_theoretical_entropy(theory_path)
    frames = {name: read_split(params.paths.data, split, params.data.reverse_answer)
              for name, split in SPLIT_NAMES.items()}
    experiment_id = tracking.connect(params.mlflow.experiment)  # before the work: a bad server fails fast
    clean_leftovers(params)
    if samples is not None and samples > min(len(frame) for frame in frames.values()):
        sizes = ", ".join(f"{name}: {len(frame)}" for name, frame in frames.items())
        print(f"--samples {samples} is more than some split holds ({sizes}): those are used whole", file=sys.stderr)
    # the representation the trained model's continuity loss acted on (the defaults for an older checkpoint)
    trained = payload.get("params", {})
    continuity_on = trained.get("loss.continuity_on", LossConfig.continuity_on)
    continuity_positions = trained.get("loss.continuity_positions", LossConfig.continuity_positions)

    report = {}
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in [*TABLES, PROBLEMS_FILE]}
    for name in SPLIT_NAMES:
        frame = frames[name].iloc[:samples].reset_index(drop=True)
        if verbosity > 0 and name == "test":
            print_generation_steps(model, frame, params.data.reverse_answer, count=min(10, len(frame)))
        split_report = evaluate_split(model, frame, theory, params.eval, params.data.reverse_answer, params.seed,
                                      continuity_on, continuity_positions)
        report[name] = split_report.summary
        for file_name, (attribute, _) in TABLES.items():
            tables[file_name].append(getattr(split_report, attribute).assign(split=name))
        tables[PROBLEMS_FILE].append(problem_table(split_report.problems).assign(split=name))
        if verbosity >= 0:
            summary = split_report.summary
            print(f"{name}: exact match {summary['exact_match']:.4f} [{summary['exact_match.ci_low']:.4f}, "
                  f"{summary['exact_match.ci_high']:.4f}]  perplexity {summary['perplexity']:.4f}  "
                  f"sequence ECE (greedy) {summary['sequence_ece']['greedy']:.4f}  "
                  f"AUROC(semantic entropy) {summary['auroc']['semantic_entropy']}")

    # readings of the model rather than of a split: the digit embeddings' geometry, and how fast the pipeline's
    # own model learned (its train curve, also of the fine-tuned model: the training it started from; an ad-hoc
    # checkpoint's curve is not at hand)
    report["digit_geometry"] = digit_geometry(digit_embeddings(model))
    curve = Path(params.paths.metrics) / CURVE_FILE
    if checkpoint in (Path(params.paths.model), Path(params.paths.finetuned)) and curve.exists():
        report["learning"] = learning_outcome(pd.read_csv(curve))

    trained = Path(params.paths.model)
    if not adhoc and checkpoint != trained and trained.exists():  # the model RL started from, on the same problems
        ood = frames["test_ood"].iloc[:samples].reset_index(drop=True)
        before = load_model(load_checkpoint(trained), device).eval()
        before.graphed_generation = params.train.cuda_graphs
        right = greedy_right(before, ood["text"].tolist(), params.eval.batch_size)
        report["test_ood"]["before_rl"] = {"model": str(trained),
                                           "per_operand_length": operand_length_rates(ood, right)}
        test = frames["test"].iloc[:samples].reset_index(drop=True)  # the trained lengths: what RL must keep
        report["test"]["before_rl"] = {"model": str(trained), **operation_rates(
            test, greedy_right(before, test["text"].tolist(), params.eval.batch_size))}
        # entropy per answer step on the RL validation problems before and after RL, beside the digit-blind level
        by_step = rl_entropy_by_step(before, model, read_split(params.paths.data, "rl_val",
                                                                   params.data.reverse_answer), theory)
        report["rl_val"] = {"entropy_by_step": {  # JSON has no NaN: a step without a digit-blind level holds null
            str(int(row.pop("step"))): {key: value if pd.notna(value) else None for key, value in row.items()}
            for row in by_step.to_dict("records")}}

    written = [metrics_dir / name for name in OUTPUT_FILES]
    top = headline(report)
    with output_set(written) as staged:  # all of them replace the previous set, or none does
        staged(metrics_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, default=float) + "\n")
        staged(metrics_dir / HEADLINE_FILE).write_text(json.dumps(top, indent=2, default=float) + "\n")
        for file_name, (_, columns) in TABLES.items():
            pd.concat(tables[file_name], ignore_index=True)[["split", *columns]].to_csv(staged(metrics_dir / file_name),
                                                                                        index=False)
        problems = pd.concat(tables[PROBLEMS_FILE], ignore_index=True)
        problems[["split", *problems.columns.drop("split")]].to_parquet(staged(metrics_dir / PROBLEMS_FILE),
                                                                       index=False)
    if adhoc:
        tracking.start_adhoc_run(experiment_id, logged_params, stage="evaluate", source=str(checkpoint))
        print(f"ad-hoc evaluation written to {metrics_dir}/ (the pipeline's outputs and MLflow run are untouched)",
              file=sys.stderr)
    else:
        tracking.start_pipeline_run(experiment_id, payload.get("mlflow_run_id"), logged_params)
    tracking.log_metrics(flatten_numbers(report))
    for path in [*written, theory_path, theory_path.with_suffix(".json")]:
        if path.exists():
            tracking.log_artifact(str(path), artifact_path="evaluation")
    tracking.end_run()
    return report

"""The visualize stage: collect what the figures need from the model and the metrics, draw, log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch

from language_entropy import plots, tokenizer
from language_entropy.checkpoint import load_checkpoint, load_model
from language_entropy.data import prompt_of, read_split
from language_entropy.digit_geometry import digit_embeddings
from language_entropy.errors import UserError
from language_entropy.evaluation import SPLIT_NAMES, digit_blind_levels, rl_entropy_by_step
from language_entropy.generation import generate_batched
from language_entropy.measure import generation_prompts, greedy_right
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import Params
from language_entropy.pipeline import tracking
from language_entropy.pipeline.devices import select_device
from language_entropy.pipeline.guards import checkpoint_params, clean_leftovers, interruptible
from language_entropy.pipeline.outputs import adhoc_folder, check_outputs, output_set
from language_entropy.problems import reorder_answer
from language_entropy.theory import load_theoretical_entropy

FIGURES = ["trajectories.png", "digit_geometry.png", "entropy_by_step.png", "entropy_during_training.png",
           "training_curves.png", "reliability.png", "temperature.png", "rl_entropy_accuracy.png",
           "rl_entropy_by_step.png", "rl_curves.png"]


def pick_problems(frame: pd.DataFrame, right: pd.Series, count: int) -> pd.DataFrame:
    """Up to `count` problems, half right and half wrong where both exist, taking the operations in turn."""

    def operations_in_turn(pool: pd.DataFrame) -> list:
        rank = pool.groupby("op").cumcount()
        return pool.assign(rank=rank).sort_values(["rank", "op"], kind="stable").index.tolist()

    rights, wrongs = operations_in_turn(frame[right]), operations_in_turn(frame[~right])
    n_right = min(len(rights), count - min(len(wrongs), count // 2))
    n_wrong = min(len(wrongs), count - n_right)
    return frame.loc[rights[:n_right] + wrongs[:n_wrong]]


@torch.no_grad()
def collect_trajectories(model: ArithmeticDecoder, frame: pd.DataFrame, layers: list[int], count: int,
                         reverse_answer: bool) -> list[plots.Trajectory]:
    """Greedy generations of right and wrong answers with the hidden state behind every emitted token."""
    model.eval()
    right = pd.Series(greedy_right(model, frame["text"].tolist()), index=frame.index)
    picked = pick_problems(frame, right, count)
    prompts, budget = generation_prompts(picked["text"].tolist())
    out = generate_batched(model, prompts, len(picked), max_new_tokens=budget, return_hidden=True)
    trajectories = []
    for row, (index, problem) in enumerate(picked.iterrows()):
        steps = int((out.tokens[row] != tokenizer.PAD_ID).sum())
        tokens = [tokenizer.VOCAB[int(t)] for t in out.tokens[row, :steps]]
        answer = reorder_answer("".join(tokens).rstrip(tokenizer.EOS), reverse_answer)
        trajectories.append(plots.Trajectory(
            label=f"{prompt_of(problem['text'])}{answer}", correct=bool(right[index]), tokens=tokens,
            states={layer: out.hidden[layer][row, :steps].numpy() for layer in layers}))
    return trajectories


def headline_lines(summary: dict[str, dict]) -> list[str]:
    """metrics/summary.json as a few lines for the end of `dvc repro`: the training's outcome, then a line per
    split (with each reading before -> after RL where the headline holds the trained model's)."""
    lines = []
    training = summary.get("training")
    if training is not None:
        steps = {level: training.get(f"steps_to_{level}") for level in (50, 90)}
        reached = "  ".join(f"{level}% at step {step:.0f}" if step is not None else f"{level}% never"
                            for level, step in steps.items())
        verdict = "learned" if training["learned"] else "STALLED (validation exact match below 0.9 at the end)"
        lines.append(f"{'training':<9} {verdict}: validation exact match {training['final']:.4f}  {reached}")
    for split, numbers in ((split, numbers) for split, numbers in summary.items() if split != "training"):
        operations = "  ".join(f"{key.removeprefix('exact_match_')} {value:.4f}" for key, value in numbers.items()
                               if key.startswith("exact_match_") and not key.startswith("exact_match_ci")
                               and "_digits" not in key and not key.endswith("_before_rl"))
        line = (f"{split:<9} exact match {numbers['exact_match']:.4f} [{numbers['exact_match_ci_low']:.4f}, "
                f"{numbers['exact_match_ci_high']:.4f}]  {operations}  entropy {numbers['mean_entropy_bits']:.4f} bits"
                f"  sequence ECE {numbers['sequence_ece']:.4f}  perplexity {numbers['perplexity']:.4f}")
        before = {key: value for key, value in numbers.items() if key.endswith("_before_rl")}
        if before:  # the trained model -> after RL: overall, per operation, per operand length
            line += "  RL " + "  ".join(
                f"{key.removeprefix('exact_match').removesuffix('_before_rl').strip('_').replace('_', ' ') or 'all'} "
                f"{value:.4f} -> {numbers[key.removesuffix('_before_rl')]:.4f}" for key, value in before.items())
        aurocs = {key.removeprefix("auroc_"): value for key, value in numbers.items() if key.startswith("auroc_")}
        if aurocs:
            line += "  AUROC " + " ".join(f"{name} {'undefined' if value is None else f'{value:.3f}'}"
                                          for name, value in aurocs.items())
        lines.append(line)
    return lines


def read_report(path: Path, stage: str = "evaluate") -> dict:
    """A JSON metrics file (metrics/eval.json, ...), or a one-line error saying which stage makes it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro {stage}` first") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): run `dvc repro {stage}`") \
            from None


@interruptible
def run_visualization(params: Params, base: Path | None = None) -> list[Path]:
    """Draw every figure into `paths.plots` and log them to the model's MLflow run. `base`: the checkpoint
    to draw instead of paths.finetuned, used with its own model config when that differs from params; such a
    run is ad hoc: its figures go to a new folder under reports/adhoc/ and a separate MLflow run tagged
    `adhoc`, never to the pipeline's plots or run."""
    adhoc = base is not None
    checkpoint = base or Path(params.paths.finetuned)
    if not checkpoint.exists() and base is None:
        raise UserError(f"{checkpoint} not found: run `dvc repro finetune` first")
    if not Path(params.paths.model).exists():
        raise UserError(f"{params.paths.model} not found: run `dvc repro train` first")
    payload = load_checkpoint(checkpoint)
    logged_params = checkpoint_params(params, payload, checkpoint, as_is=base is not None)
    model = load_model(payload, select_device(params.train.device)).eval()
    model.graphed_generation = params.train.cuda_graphs  # acts on CUDA only
    experiment_id = tracking.connect(params.mlflow.experiment)  # before the work: a bad server fails fast
    metrics, dpi = Path(params.paths.metrics), params.viz.dpi
    out = adhoc_folder("visualize") if adhoc else Path(params.paths.plots)
    if not adhoc:
        check_outputs(files=[("paths.plots", out / name) for name in FIGURES], dirs=[("paths.plots", out)])
    clean_leftovers(params)
    tables = {}
    for name, stage in (("train_curve", "train"), ("entropy_by_step", "evaluate"),
                        ("sequence_reliability", "evaluate"), ("temperature", "evaluate"), ("rl_curve", "finetune")):
        path = metrics / f"{name}.csv"
        if not path.exists():
            raise UserError(f"{path} not found: run `dvc repro {stage}` first")
        tables[name] = pd.read_csv(path)
    report = read_report(metrics / "eval.json")
    summary = read_report(metrics / "summary.json")
    fit = read_report(metrics / "rl_fit.json", "finetune")
    trained = load_model(load_checkpoint(params.paths.model), model.tok_emb.weight.device).eval()
    rl_val = read_split(params.paths.data, "rl_val", params.data.reverse_answer)
    theory = load_theoretical_entropy(metrics / "theoretical_entropy.csv")
    # validation entropy per step is a mean over every val answer still running: the matching reference
    # mixes the val split's buckets (both operations) with the same weights
    reference = digit_blind_levels(theory, read_split(params.paths.data, "val", params.data.reverse_answer), [])
    problems = pd.concat([read_split(params.paths.data, split, params.data.reverse_answer)
                          for split in ("test", "ood")], ignore_index=True)
    figures = [out / name for name in FIGURES]
    with output_set(figures) as staged:  # the figures replace the previous ones together, or none does
        trajectories = collect_trajectories(model, problems, list(params.viz.layers), params.viz.trajectories,
                                            params.data.reverse_answer)
        digits = digit_embeddings(model)
        plots.plot_trajectories(trajectories, list(params.viz.layers), staged(out / "trajectories.png"), dpi)
        plots.plot_digit_geometry(digits, staged(out / "digit_geometry.png"), dpi)
        plots.plot_entropy_by_step(tables["entropy_by_step"], staged(out / "entropy_by_step.png"), dpi)
        plots.plot_entropy_during_training(tables["train_curve"], reference,
                                           staged(out / "entropy_during_training.png"), dpi)
        plots.plot_training_curves(tables["train_curve"], staged(out / "training_curves.png"), dpi)
        plots.plot_reliability(tables["sequence_reliability"], staged(out / "reliability.png"), dpi,
                               ece={split: report[split]["sequence_ece"] for split in SPLIT_NAMES if split in report})
        plots.plot_temperature(tables["temperature"], staged(out / "temperature.png"), dpi)
        plots.plot_rl_entropy_accuracy(tables["rl_curve"], fit, staged(out / "rl_entropy_accuracy.png"), dpi)
        plots.plot_rl_entropy_by_step(rl_entropy_by_step(trained, model, rl_val, theory),
                                      staged(out / "rl_entropy_by_step.png"), dpi)
        plots.plot_rl_curves(tables["rl_curve"], staged(out / "rl_curves.png"), dpi)
    if adhoc:
        tracking.start_adhoc_run(experiment_id, logged_params, stage="visualize", source=str(checkpoint))
        print(f"ad-hoc figures written to {out}/ (the pipeline's plots and MLflow run are untouched)", file=sys.stderr)
    else:
        tracking.start_pipeline_run(experiment_id, payload.get("mlflow_run_id"), logged_params)
    for figure in figures:
        tracking.log_artifact(str(figure), artifact_path="plots")
    tracking.end_run()
    print(*(f"wrote {figure}" for figure in figures), sep="\n")
    if not adhoc:
        print(f"headline ({metrics / 'summary.json'}):", *headline_lines(summary), sep="\n  ")
    return figures

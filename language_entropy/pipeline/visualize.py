"""The visualize stage: collect what the figures need from the model and the metrics, draw, log."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from language_entropy import plots, tokenizer, tracking
from language_entropy.checkpoint import load_checkpoint, load_model
from language_entropy.data import prompt_of, read_split
from language_entropy.devices import select_device
from language_entropy.errors import UserError
from language_entropy.evaluation import digit_blind_levels
from language_entropy.measure import generation_prompts, greedy_right
from language_entropy.model import ArithmeticDecoder, generate_batched
from language_entropy.params import Params
from language_entropy.problems import reorder_answer
from language_entropy.theory import load_theoretical_entropy


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


def read_report(path: Path) -> dict:
    """metrics/eval.json, or a one-line error saying which stage makes it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `dvc repro evaluate` first") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): run `dvc repro evaluate`") \
            from None


def run_visualization(params: Params) -> list[Path]:
    """Draw every figure into `paths.plots` and log them to the model's MLflow run."""
    checkpoint = Path(params.paths.model)
    if not checkpoint.exists():
        raise UserError(f"{checkpoint} not found: run `dvc repro train` first")
    payload = load_checkpoint(checkpoint)
    model = load_model(payload, select_device(params.train.device)).eval()
    experiment_id = tracking.connect(params.mlflow.experiment)  # before the work: a bad server fails fast
    metrics, out, dpi = Path(params.paths.metrics), Path(params.paths.plots), params.viz.dpi
    tables = {}
    for name, stage in (("train_curve", "train"), ("entropy_by_step", "evaluate"),
                        ("sequence_reliability", "evaluate"), ("temperature", "evaluate")):
        path = metrics / f"{name}.csv"
        if not path.exists():
            raise UserError(f"{path} not found: run `dvc repro {stage}` first")
        tables[name] = pd.read_csv(path)
    report = read_report(metrics / "eval.json")
    theory = load_theoretical_entropy(metrics / "theoretical_entropy.csv")
    # validation entropy per step is a mean over every val answer still running: the matching reference
    # mixes the val split's buckets (both operations) with the same weights
    reference = digit_blind_levels(theory, read_split(params.paths.data, "val"), [])

    problems = pd.concat([read_split(params.paths.data, split) for split in ("test", "ood")], ignore_index=True)
    trajectories = collect_trajectories(model, problems, list(params.viz.layers), params.viz.trajectories,
                                        params.data.reverse_answer)
    digits = model.tok_emb.weight[list(tokenizer.DIGIT_IDS)].detach().float().cpu().numpy()
    figures = [
        plots.plot_trajectories(trajectories, list(params.viz.layers), out / "trajectories.png", dpi),
        plots.plot_digit_geometry(digits, out / "digit_geometry.png", dpi),
        plots.plot_entropy_by_step(tables["entropy_by_step"], out / "entropy_by_step.png", dpi),
        plots.plot_entropy_during_training(tables["train_curve"], reference, out / "entropy_during_training.png", dpi),
        plots.plot_training_curves(tables["train_curve"], out / "training_curves.png", dpi),
        plots.plot_reliability(tables["sequence_reliability"], out / "reliability.png", dpi,
                               ece={split: report[split]["sequence_ece"] for split in report}),
        plots.plot_temperature(tables["temperature"], out / "temperature.png", dpi),
    ]
    tracking.start_pipeline_run(experiment_id, payload.get("mlflow_run_id"), params.flat())
    for figure in figures:
        tracking.log_artifact(str(figure), artifact_path="plots")
    tracking.end_run()
    return figures

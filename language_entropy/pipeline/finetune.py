"""The finetune stage: RL fine-tuning of the trained model (`rl` section) around the `FineTuner`, with train's
integrity: preflight checks before any work, one training or fine-tuning per checkout (the lock in
`paths.resume`), a resume checkpoint named by the run's fingerprint (rl params, the trained model's bytes, the RL
splits and the stage's code) so that kill -9 then a re-run continues bit-exactly, SIGINT/SIGTERM ending in a
checkpoint and a KILLED MLflow run, and the outputs (fine-tuned model, curve, fit) written as a set.

The fine-tuning is an MLflow run of its own, tagged with the training run it started from (`train_run_id`);
evaluate and visualize then log into it. With `rl.steps: 0` the stage is a pass-through: the trained model's
file is copied byte for byte (its run id included, so evaluation logs into the training run as before).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch

from language_entropy import tokenizer
from language_entropy.checkpoint import load_checkpoint, load_model, model_payload, save_checkpoint
from language_entropy.data import RL_SPLITS, read_split, split_path
from language_entropy.errors import UserError
from language_entropy.params import Params
from language_entropy.pipeline import tracking
from language_entropy.pipeline.cli import StageInterrupted
from language_entropy.pipeline.devices import select_device
from language_entropy.pipeline.guards import (
    checkpoint_params,
    clean_leftovers,
    hold_train_lock,
    interruptible,
    release_train_lock,
)
from language_entropy.pipeline.outputs import check_outputs, output_set
from language_entropy.pipeline.train import (
    StopSignals,
    load_resume_state,
    resume_checkpoint_path,
    run_fingerprint,
    save_resume_state,
)
from language_entropy.rl import FineTuner

FINETUNE_SCRIPT = "stages/finetune.py"
CURVE_FILE, FIT_FILE = "rl_curve.csv", "rl_fit.json"  # the curve and its summary: the entropy-ceiling fit
FIRST_COLUMNS = ["step", "wall_time_s", "reward", "sample_exact_match", "val_exact_match", "entropy_bits",
                 "covariance", "clip_fraction", "kl", "no_signal_groups", "masked_fraction", "entropy_coef",
                 "answer_length", "replay_ce", "step_ms"]


def output_paths(params: Params) -> list[Path]:
    metrics = Path(params.paths.metrics)
    return [Path(params.paths.finetuned), metrics / CURVE_FILE, metrics / FIT_FILE]


def trained_model(params: Params) -> tuple[dict, Path]:
    """The trained model's checkpoint, refused in one line when it is missing or was made with another model
    config or answer format than params say."""
    path = Path(params.paths.model)
    if not path.exists():
        raise UserError(f"{path} not found: run `dvc repro train` first")
    payload = load_checkpoint(path)
    checkpoint_params(params, payload, path, as_is=False)  # another model config: one line listing the keys
    trained = payload.get("params", {}).get("data.reverse_answer", params.data.reverse_answer)
    if trained != params.data.reverse_answer:
        raise UserError(f"{path} was trained with data.reverse_answer: {str(trained).lower()} and params say "
                        f"{str(params.data.reverse_answer).lower()}: its answers would be read the wrong way round")
    return payload, path


def curve_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    curve = pd.DataFrame(rows)
    columns = [column for column in FIRST_COLUMNS if column in curve] + \
              sorted((c for c in curve if c not in FIRST_COLUMNS), key=lambda c: int(c.rsplit("_", 1)[1]))
    return curve[columns]


def write_outputs(params: Params, curve: pd.DataFrame, fit: dict, model_file) -> None:
    """The fine-tuned model, the curve and the fit replace the previous three together. `model_file(path)`
    writes the model."""
    finetuned, curve_path, fit_path = output_paths(params)
    with output_set([finetuned, curve_path, fit_path]) as staged:
        curve.to_csv(staged(curve_path), index=False)
        finite = {key: value if math.isfinite(value) else None for key, value in fit.items()}  # JSON has no NaN
        staged(fit_path).write_text(json.dumps(finite, indent=2) + "\n")
        model_file(staged(finetuned))


def rl_split_names(params: Params) -> tuple[str, ...]:
    """The splits the finetune stage reads: the RL prompts and validation problems, and the train split when the
    replay term is on."""
    return (*RL_SPLITS, "train") if params.rl.replay_weight > 0 else RL_SPLITS


def fine_tuner(params: Params, payload: dict, splits: dict[str, pd.DataFrame], device) -> FineTuner:
    """A `FineTuner` of the trained model on the RL prompt and validation splits (and the train split to replay)."""
    model = load_model(payload, device)
    model.graphed_generation = params.train.cuda_graphs  # acts on CUDA only
    replay = splits["train"]["text"].tolist() if "train" in splits else None
    return FineTuner(model, params.rl, splits["rl_prompts"]["text"].tolist(), splits["rl_val"]["text"].tolist(),
                     device, replay)


def pass_through(params: Params, tuner: FineTuner, trained: Path) -> Path:
    """rl.steps 0: the trained model's file, byte for byte, and a curve of its step-0 validation."""
    result = tuner.fit(on_log=lambda row: None, on_checkpoint=lambda state: None, stop_requested=lambda: None)
    write_outputs(params, curve_frame(result.curve.to_dict("records")), {"steps": 0, **result.fit},
                  lambda path: shutil.copyfile(trained, path))
    return Path(params.paths.finetuned)


@interruptible
def run_finetune(params: Params, wait: bool = False) -> Path:
    """The finetune stage; returns the fine-tuned model's path. Another training or fine-tuning in this checkout
    makes it refuse at once, or with `wait` wait for it."""
    check_outputs(files=[("paths.finetuned", output_paths(params)[0]),
                         *(("paths.metrics", path) for path in output_paths(params)[1:])],
                  dirs=[("paths.resume", Path(params.paths.resume)), ("paths.metrics", Path(params.paths.metrics))])
    payload, trained = trained_model(params)
    device = select_device(params.train.device)
    splits = {name: read_split(params.paths.data, name, params.data.reverse_answer) for name in rl_split_names(params)}
    if params.rl.steps == 0:
        return pass_through(params, fine_tuner(params, payload, splits, device), trained)
    experiment_id = tracking.connect(params.mlflow.experiment)  # before the work: a bad server fails fast
    lock = hold_train_lock(Path(params.paths.resume), wait=wait)
    clean_leftovers(params, writers_gone=True)  # the lock is ours: no one else writes checkpoints here
    threads = torch.get_num_threads()  # fixed by the stage from train.threads before any work
    trajectory = {key: value for key, value in params.flat().items()  # what decides the weights, as train's
                  if key.startswith("rl.") or key in ("train.device", "train.cuda_graphs")}
    fingerprint = run_fingerprint(trajectory,
                                  [trained, *(split_path(params.paths.data, name) for name in rl_split_names(params))],
                                  None, script=FINETUNE_SCRIPT)
    resume_path = resume_checkpoint_path(params, fingerprint, threads)
    state, why = load_resume_state(resume_path, fingerprint, threads)

    tuner = fine_tuner(params, payload, splits, device)
    if state is not None:
        tuner.restore(state)
    run_id = state.get("mlflow_run_id") if state else None
    print(why, file=sys.stderr)
    if run_id is not None and not tracking.run_exists(run_id):
        print(f"the resumed run's MLflow run {run_id} is not in the store; logging to a new run", file=sys.stderr)
        run_id = None
    resumed = run_id is not None
    train_run_id = payload.get("mlflow_run_id")
    tags = tracking.run_tags(params.flat())
    tags.update({tracking.STAGE_TAG: tracking.FINETUNE_STAGE, "mlflow.runName": f"finetune {tags['mlflow.runName']}",
                 **({tracking.TRAIN_RUN_TAG: train_run_id} if train_run_id else {})})
    run_id = tracking.start_run(experiment_id, run_id=run_id, tags=None if resumed else tags)

    def on_log(row: dict[str, float]) -> None:
        step = int(row["step"])
        tracking.log_metrics({f"rl_{key}": value for key, value in row.items()
                              if key != "step" and math.isfinite(value)}, step=step)
        if not sys.stderr.isatty() or "val_exact_match" in row:
            reading = "  ".join(f"{key} {row[key]:.4f}" for key in ("reward", "entropy_bits", "val_exact_match")
                                if key in row)
            print(f"rl step {step}/{params.rl.steps}  {reading}", file=sys.stderr, flush=True)

    def on_checkpoint(state: dict) -> None:
        save_resume_state(resume_path, state, fingerprint, run_id, threads)

    try:
        tracking.log_params(params.flat())
        if not resumed:
            for name, frame in splits.items():
                tracking.log_dataset(frame, split_path(params.paths.data, name), name)
            on_checkpoint(tuner.state())  # the run id is on disk from the start: a kill resumes this run
        with StopSignals() as stop:
            result = tuner.fit(on_log, on_checkpoint, stop)
        if stop() is not None:
            tracking.end_run(status="KILLED")
            print(f"interrupted by signal {stop()} at rl step {tuner.step}: checkpoint written to {resume_path}; "
                  "run again to resume", file=sys.stderr)
            raise SystemExit(128 + stop())
    except BaseException as error:  # anything else: the run did not finish (MLflow's exit hook would say FINISHED)
        if not isinstance(error, SystemExit):
            tracking.end_run(status="KILLED" if isinstance(error, StageInterrupted) else "FAILED")
        raise

    curve = curve_frame(result.curve.to_dict("records"))
    fit = {"steps": tuner.step, **result.fit}
    write_outputs(params, curve, fit, lambda path: save_checkpoint(path, {
        **model_payload(result.model), "vocab": tokenizer.VOCAB, "params": params.flat(), "mlflow_run_id": run_id,
        "train_run_id": train_run_id, "steps": tuner.step, "threads": threads}))
    tracking.log_metrics({f"rl_fit.{key}": value for key, value in result.fit.items() if math.isfinite(value)})
    for path in output_paths(params)[1:]:
        tracking.log_artifact(str(path), artifact_path="finetune")
    tracking.log_artifact(str(output_paths(params)[0]), artifact_path="checkpoint")
    tracking.end_run()
    resume_path.unlink(missing_ok=True)  # finished: the next run of this stage starts fresh
    release_train_lock(lock)
    return output_paths(params)[0]

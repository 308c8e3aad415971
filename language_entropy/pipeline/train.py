"""The train stage: preflight checks, resume state, signals, DDP and MLflow around the `Trainer`.

A run resumes from its own checkpoint in `paths.resume`, named by its fingerprint (params, data bytes and
the files the train stage runs), which no other run writes or deletes; one training per checkout holds
the lock there (`guards.hold_train_lock`). SIGINT/SIGTERM write a checkpoint and mark the MLflow run KILLED.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from language_entropy import tokenizer
from language_entropy.checkpoint import load_checkpoint, model_config_differences, model_payload, save_checkpoint
from language_entropy.data import SPLITS, read_split, split_path
from language_entropy.errors import UserError
from language_entropy.learning_speed import describe_outcome, learning_outcome
from language_entropy.params import Params
from language_entropy.pipeline import tracking
from language_entropy.pipeline.cli import StageInterrupted
from language_entropy.pipeline.deps import ROOT, stage_files
from language_entropy.pipeline.devices import select_device
from language_entropy.pipeline.guards import clean_leftovers, hold_train_lock, interruptible, release_train_lock
from language_entropy.pipeline.outputs import check_outputs, output_set
from language_entropy.training import (
    CURVE_LOSS_COLUMNS,
    Distributed,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
)

TRAIN_SCRIPT = "stages/train.py"
RESOLVED_THREADS_PARAM = "train.threads_resolved"  # the thread count `train.threads` resolved to, in MLflow


def init_distributed(device_name: str) -> Distributed:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1), else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    backend = "nccl" if select_device(device_name).type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))



class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, so a checkpoint gets written."""

    def __init__(self):
        self.signum: int | None = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __call__(self) -> int | None:
        return self.signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def load_resume_state(path: Path, fingerprint: str, threads: int) -> tuple[dict | None, str]:
    """The resume checkpoint if it belongs to this exact run (params, data, code, thread count), with the
    reason either way."""
    if not path.exists():
        other_threads = sorted(path.parent.glob(f"resume-{fingerprint[:16]}-t*.pt"))
        if other_threads:  # this run, interrupted with another thread count: its rest would not be bit-identical
            names = ", ".join(other.name for other in other_threads)
            return None, (f"{names} holds this run interrupted with another thread count (this run has {threads}, "
                          "train.threads); starting fresh and leaving it for a run with its count")
        others = sorted(other.name for other in path.parent.glob("resume-*.pt"))
        kept = f" ({', '.join(others)}: other params, data or code, left for their runs)" if others else ""
        return None, f"no resume checkpoint for these params, data and code; starting fresh{kept}"
    try:
        state = load_checkpoint(path)
    except UserError as error:
        return None, f"resume checkpoint unusable ({error}); starting fresh"
    if state.get("threads") != threads:  # a different reduction order: the rest would not be bit-identical
        return None, (f"{path} was written with {state.get('threads')} threads and this run has {threads} "
                      "(train.threads); starting fresh")
    if state.get("fingerprint") != fingerprint:
        return None, f"{path} was written with other params, data or code; starting fresh"
    return state, f"resuming from {path} at step {state['step']}"


def resume_checkpoint_path(params: Params, fingerprint: str, threads: int) -> Path:
    """This run's own resume checkpoint: another run (other params, data, code or thread count) never writes or
    deletes it."""
    return Path(params.paths.resume) / f"resume-{fingerprint[:16]}-t{threads}.pt"


LEARNING_FILE = "learning.json"  # whether the run learned, and when it reached 50% and 90% validation exact match


def check_train_outputs(params: Params) -> None:
    check_outputs(files=[("paths.model", Path(params.paths.model)),
                         ("paths.metrics", Path(params.paths.metrics) / "train_curve.csv"),
                         ("paths.metrics", Path(params.paths.metrics) / LEARNING_FILE)],
                  dirs=[("paths.resume", Path(params.paths.resume)), ("paths.metrics", Path(params.paths.metrics))])


def save_resume_state(path: Path, state: dict, fingerprint: str, run_id: str | None, threads: int) -> None:
    save_checkpoint(path, {**state, "fingerprint": fingerprint, "mlflow_run_id": run_id, "threads": threads})


def run_fingerprint(trajectory_params: dict, data_files: list[Path], base: Path | None, root: Path = ROOT,
                    script: str = TRAIN_SCRIPT) -> str:
    """Hash of everything that decides the weights: the params, the data bytes, the code the stage `script` runs
    (exactly its DVC deps: editing evaluation or plotting code keeps an interrupted run resumable)."""
    digest = hashlib.sha256(json.dumps(trajectory_params, sort_keys=True, default=str).encode())
    code = [root / path for path in stage_files(script, root)]
    for path in [*data_files, *code, *([base] if base else [])]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def preflight(params: Params, base: Path | None) -> tuple[dict | None, dict[str, pd.DataFrame], str]:
    """Every check a user mistake can fail, before any training (and before torchrun starts workers,
    whose errors would end in its traceback): the base checkpoint, the data, the tracking store.
    Returns the base payload, the data splits and the MLflow experiment id."""
    check_train_outputs(params)
    base_payload = None
    if base is not None:
        base_payload = load_checkpoint(base)
        if "model_config" not in base_payload or "model_state" not in base_payload:
            raise UserError(f"--base {base}: not a model checkpoint (it holds no model config and weights)")
        differences = model_config_differences(base_payload["model_config"], params.model)
        if differences:
            raise UserError(f"--base {base} has another model config than params: {'; '.join(differences)}")
    splits = {name: read_split(params.paths.data, name, params.data.reverse_answer) for name in SPLITS}
    return base_payload, splits, tracking.connect(params.mlflow.experiment)


def log_run_inputs(params: Params, splits: dict[str, pd.DataFrame], threads: int) -> None:
    """Into the open MLflow run: every param (and the thread count `train.threads` resolved to) and every split."""
    tracking.log_params({**params.flat(), RESOLVED_THREADS_PARAM: threads})
    for name, frame in splits.items():
        tracking.log_dataset(frame, split_path(params.paths.data, name), name)


def log_training_terms(step: int, values: dict[str, float]) -> None:
    """The training loss terms and learning rate of `step` (`Trainer.fit`'s on_log), the finite ones."""
    tracking.log_metrics({k: v for k, v in values.items() if math.isfinite(v)}, step=step)


def log_validation(row: dict[str, float]) -> None:
    """A curve row's validation readings (`Trainer.fit`'s on_eval); its training terms and lr go through
    `log_training_terms` (every train.log_every steps)."""
    validation = {k: v for k, v in row.items() if k not in ("step", "lr", *CURVE_LOSS_COLUMNS)}
    tracking.log_metrics({k: v for k, v in validation.items() if math.isfinite(v)}, step=int(row["step"]))


def write_trained_model(params: Params, trainer: Trainer, curve: pd.DataFrame, run_id: str, threads: int) -> Path:
    """The curve, the learning outcome (`learning_speed.learning_outcome`: learned or stalled, steps to 50% and
    90%) and the model (weights, optimizer state, vocabulary, params, run id) replace the old set together, and go
    to the open MLflow run (the outcome as `learning.*` metrics, the files as artifacts); returns the model's path.
    The outcome's line is printed: a stalled run says so at the end of the stage's output."""
    metrics = Path(params.paths.metrics)
    model_path, curve_path, learning_path = (Path(params.paths.model), metrics / "train_curve.csv",
                                             metrics / LEARNING_FILE)
    outcome = learning_outcome(curve)
    with output_set([curve_path, learning_path, model_path]) as staged:
        curve.to_csv(staged(curve_path), index=False)
        finite = {key: value if math.isfinite(value) else None for key, value in outcome.items()}  # JSON has no NaN
        staged(learning_path).write_text(json.dumps(finite, indent=2) + "\n")
        save_checkpoint(staged(model_path), {
            **model_payload(trainer.model), "optimizer": trainer.optimizer.state_dict(), "vocab": tokenizer.VOCAB,
            "params": params.flat(), "mlflow_run_id": run_id, "steps": trainer.step, "threads": threads})
    tracking.log_metrics({f"learning.{key}": value for key, value in outcome.items() if math.isfinite(value)})
    tracking.log_artifact(str(curve_path))
    tracking.log_artifact(str(learning_path))
    tracking.log_artifact(str(model_path), artifact_path="checkpoint")
    print(describe_outcome(outcome, trainer.step), file=sys.stderr)
    return model_path


@interruptible
def run_training(params: Params, base: Path | None = None, wait: bool = False) -> Path:
    """The train stage: fresh, resumed or continued (`base`) training, logged to MLflow; returns the model path.
    Another training in this checkout makes it refuse at once, or with `wait` wait for it."""
    dist_info = init_distributed(params.train.device)
    device = select_device(params.train.device, dist_info.local_rank)
    base_payload, splits, experiment_id = preflight(params, base)
    lock = hold_train_lock(Path(params.paths.resume), dist_info.is_main, wait)
    if dist_info.is_main:
        clean_leftovers(params, writers_gone=True)  # the lock is ours: no one else writes checkpoints here

    threads = torch.get_num_threads()  # fixed by the stage from train.threads before any work
    trajectory = {key: value for key, value in params.flat().items()
                  if key.split(".")[0] in ("seed", "model", "loss", "train") and key != "train.threads"}
    fingerprint = run_fingerprint(trajectory, [split_path(params.paths.data, name) for name in ("train", "val")], base)
    resume_path = resume_checkpoint_path(params, fingerprint, threads)  # the thread count is in the name
    state, why = load_resume_state(resume_path, fingerprint, threads)

    trainer = Trainer(params.model, params.loss, params.train, params.seed, splits["train"]["text"].tolist(),
                      splits["val"]["text"].tolist(), device, dist_info)
    if state is not None:
        trainer.restore(state)
    elif base_payload is not None:
        why = f"continuing from --base {base}: {trainer.load_base(base_payload)}"
    run_id = state.get("mlflow_run_id") if state else None

    def on_eval(row: dict[str, float]) -> None:
        log_validation(row)
        if not sys.stderr.isatty():
            print(f"step {int(row['step'])}/{params.train.steps}  loss {row['loss']:.4f}  "
                  f"val_loss {row['val_loss']:.4f}  val_exact_match {row['val_exact_match']:.4f}  "
                  f"{row['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)

    def on_checkpoint(state: dict) -> None:
        save_resume_state(resume_path, state, fingerprint, run_id, threads)

    if dist_info.is_main:
        print(why, file=sys.stderr)
        if run_id is not None and not tracking.run_exists(run_id):
            print(f"the resumed run's MLflow run {run_id} is not in the store; logging to a new run", file=sys.stderr)
            run_id = None
        resumed = run_id is not None
        run_id = tracking.start_run(experiment_id, run_id=run_id, tags=tracking.run_tags(params.flat()))
    try:
        if dist_info.is_main:
            if resumed:  # the splits are logged already, and log_params skips the params it holds
                tracking.log_params({**params.flat(), RESOLVED_THREADS_PARAM: threads})
            else:
                log_run_inputs(params, splits, threads)
                on_checkpoint(trainer.state())  # the run id is on disk from the start: a kill resumes this run
        with StopSignals() as stop:
            result = trainer.fit(on_eval, on_checkpoint, stop, log_training_terms)
    except TrainingInterrupted as interrupted:
        if dist_info.is_main:
            tracking.end_run(status="KILLED")
            print(f"{interrupted}: checkpoint written to {resume_path}; run again to resume", file=sys.stderr)
        raise SystemExit(128 + interrupted.signum) from None
    except TrainingDiverged as error:
        if dist_info.is_main:
            tracking.end_run(status="FAILED")
        raise TrainingDiverged(f"{error}; the last good checkpoint is kept at {resume_path}") from None
    except BaseException as error:  # anything else: the run did not finish (MLflow's exit hook would say FINISHED)
        if dist_info.is_main:
            tracking.end_run(status="KILLED" if isinstance(error, StageInterrupted) else "FAILED")
        raise

    model_path = Path(params.paths.model)
    if dist_info.is_main:
        write_trained_model(params, trainer, result.curve, run_id, threads)
        tracking.end_run()
        resume_path.unlink(missing_ok=True)  # finished: the next run of this stage starts fresh
    release_train_lock(lock)
    if dist_info.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return model_path

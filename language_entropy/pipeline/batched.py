"""Batched seeds: training runs that differ only in seed (and loss.entropy_weight) trained as one batched model
(`batched.BatchedTrainer`), each run's model, curve and MLflow run written as the train stage writes them.

Each run has its own params (its seed, and paths of its own): its data is read from its `paths.data`, and
its model, curve and MLflow run (tags, params, splits, every training and validation metric, the two
artifacts) are written by the train stage's own functions, once the batch has finished. So `stages/evaluate.py
--params <that run's params>` measures it and logs into its run, as after `dvc repro train`. An interrupted or
diverged batch writes nothing (there is no resume: run it again).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from language_entropy.batched import BatchedTrainer
from language_entropy.errors import UserError
from language_entropy.params import Params
from language_entropy.pipeline import tracking
from language_entropy.pipeline.devices import select_device
from language_entropy.pipeline.guards import clean_leftovers, hold_train_lock, interruptible, release_train_lock
from language_entropy.pipeline.train import (
    log_run_inputs,
    log_training_terms,
    log_validation,
    preflight,
    write_trained_model,
)
from language_entropy.training import Trainer

RUN_KEYS = ("seed", "loss.entropy_weight")  # what may differ between the runs of one batch, paths aside


def check_runs(runs: list[Params]) -> None:
    """One line naming the param when `runs` are not runs of one configuration that differ only in `RUN_KEYS`
    and paths, or when two runs would write the same files."""
    if not runs:
        raise UserError("batched training needs at least one run")
    first = runs[0].flat()
    for k, params in enumerate(runs[1:], start=1):
        for key, value in params.flat().items():
            if key not in RUN_KEYS and not key.startswith("paths.") and value != first[key]:
                raise UserError(f"{key} differs between batched runs ({first[key]!r} in run 0, {value!r} in run {k}): "
                                f"they may differ only in {', '.join(RUN_KEYS)} and paths")
    for key in ("paths.model", "paths.metrics"):
        paths = [Path(params.flat()[key]).resolve() for params in runs]
        if len(set(paths)) < len(paths):
            raise UserError(f"{key} must differ between batched runs (each writes its own model and curve)")


@interruptible
def run_batched_training(runs: list[Params]) -> list[Path]:
    """Train `runs` as one batched model and write each as the train stage would; returns their model paths."""
    check_runs(runs)
    device = select_device(runs[0].train.device)
    inputs = [preflight(params, base=None) for params in runs]  # (None, splits, MLflow experiment id) per run
    locks = [hold_train_lock(resume) for resume in dict.fromkeys(Path(params.paths.resume) for params in runs)]
    for params in runs:
        clean_leftovers(params, writers_gone=True)
    threads = torch.get_num_threads()
    trainers = [Trainer(params.model, params.loss, params.train, params.seed, splits["train"]["text"].tolist(),
                        splits["val"]["text"].tolist(), device) for params, (_, splits, _) in zip(runs, inputs,
                                                                                               strict=True)]
    logs: list[list[tuple[int, dict]]] = [[] for _ in runs]
    rows: list[list[dict]] = [[] for _ in runs]

    def on_eval(k: int, row: dict[str, float]) -> None:
        rows[k].append(row)
        if k == len(runs) - 1:  # one line a validation, over every run
            exact = [run_rows[-1]["val_exact_match"] for run_rows in rows]
            print(f"step {int(row['step'])}/{runs[0].train.steps}  {len(runs)} runs: val_exact_match "
                  f"{min(exact):.4f}..{max(exact):.4f}  {row['wall_time_s']:.1f} s", file=sys.stderr, flush=True)

    results = BatchedTrainer(trainers).fit(on_eval, on_log=lambda k, step, values: logs[k].append((step, values)))
    model_paths = []
    for params, trainer, result, (_, splits, experiment_id), run_logs, run_rows in zip(
            runs, trainers, results, inputs, logs, rows, strict=True):
        run_id = tracking.start_run(experiment_id, tags=tracking.run_tags(params.flat()))
        log_run_inputs(params, splits, threads)
        for step, values in run_logs:
            log_training_terms(step, values)
        for row in run_rows:
            log_validation(row)
        model_paths.append(write_trained_model(params, trainer, result.curve, run_id, threads))
        tracking.end_run()
    for lock in locks:
        release_train_lock(lock)
    return model_paths

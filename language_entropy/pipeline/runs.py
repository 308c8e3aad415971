"""Loading a study's finished runs from MLflow for the report (`language_entropy.report`).

`load_runs` reads the finished runs of an experiment with MLflow's `search_runs` and, given a study,
keeps the runs tagged ``study`` = that name and the runs derived from them (evaluate/visualize runs
tagged ``train_run_id``); when no run carries a study tag, every finished run is the study. It adds
the columns the report reads: ``fine_tuned`` (a finetune stage's run: tag ``stage`` = finetune) and
``derived_from`` (the run a derived run measured, else ""; a fine-tuning run is no derived run, though it
carries its training run's id). `load_curves` reads the fine-tuning runs' curves (metric histories).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import mlflow
import pandas as pd

from language_entropy.errors import UserError
from language_entropy.pipeline.tracking import FINETUNE_STAGE, STAGE_TAG, STUDY_TAG, TRAIN_RUN_TAG
from language_entropy.report import CURVE_METRICS, DERIVED_FROM, FINE_TUNED


def _check_sqlite_store(uri: str) -> None:
    """A sqlite store that does not exist yet would be created empty: say so instead."""
    if uri.startswith("sqlite:///"):
        path = Path(unquote(uri[len("sqlite:///"):].split("?")[0]))
        if not path.is_file():
            raise UserError(f"no MLflow store at {path} (run the pipeline first, or set MLFLOW_TRACKING_URI)")


def _tag(runs: pd.DataFrame, name: str) -> pd.Series:
    """Tag `name` of every run as a string, "" where a run lacks it."""
    column = f"tags.{name}"
    if column not in runs.columns:
        return pd.Series("", index=runs.index, dtype=object)
    return runs[column].fillna("").astype(str)


def select_study(runs: pd.DataFrame, study: str) -> pd.DataFrame:
    """The runs tagged ``study`` = `study`, and the runs derived from them, when any run carries a
    study tag; else all of `runs`."""
    tags = _tag(runs, STUDY_TAG)
    if not (tags != "").any():
        runs = runs.copy()
        runs.attrs["selection"] = f"All finished runs (no run is tagged `{STUDY_TAG}`)"
        return runs
    chosen = tags == study
    chosen |= _tag(runs, TRAIN_RUN_TAG).isin(set(runs.loc[chosen, "run_id"]))
    if not chosen.any():
        raise UserError(f"no finished run is tagged {STUDY_TAG} = {study!r} "
                        f"(studies there: {', '.join(sorted(set(tags) - {''}))})")
    runs = runs[chosen].copy()
    runs.attrs["selection"] = f"Finished runs tagged `{STUDY_TAG}` = `{study}` and the runs derived from them"
    return runs


def load_runs(experiment_name: str, tracking_uri: str | None = None, study: str | None = None) -> pd.DataFrame:
    """The finished runs of `experiment_name` (of `study`, when given: see `select_study`).

    tracking_uri: when given, set as MLflow's tracking URI (process-wide, like
    `mlflow.set_tracking_uri`); else MLflow's current one. A missing store, a missing or
    deleted experiment, or one without finished runs raises `UserError`.
    """
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    _check_sqlite_store(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = sorted(e.name for e in mlflow.search_experiments())
        raise UserError(f"MLflow experiment {experiment_name!r} not found in {uri} "
                        f"(experiments there: {', '.join(known) or 'none'})")
    runs = mlflow.search_runs(experiment_names=[experiment_name], filter_string="attributes.status = 'FINISHED'")
    if runs.empty:
        raise UserError(f"MLflow experiment {experiment_name!r} in {uri} has no finished runs")
    runs = runs if study is None else select_study(runs, study)
    runs[FINE_TUNED] = _tag(runs, STAGE_TAG) == FINETUNE_STAGE
    runs[DERIVED_FROM] = _tag(runs, TRAIN_RUN_TAG).where(~runs[FINE_TUNED], "")
    return runs


def load_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The fine-tuning runs' curves: one row per (``run_id``, ``step``) with each of `report.CURVE_METRICS` logged
    at that step (NaN where it was not: validation is sparser than the other readings)."""
    client = mlflow.MlflowClient()
    frames = []
    for run_id in runs.loc[runs[FINE_TUNED], "run_id"]:
        for metric in CURVE_METRICS:
            history = client.get_metric_history(run_id, metric)
            frames.append(pd.DataFrame({"run_id": run_id, "step": [m.step for m in history], "metric": metric,
                                        "value": [m.value for m in history]}))
    if not frames:
        return pd.DataFrame(columns=["run_id", "step", *CURVE_METRICS])
    long = pd.concat(frames, ignore_index=True)
    return (long.pivot_table(index=["run_id", "step"], columns="metric", values="value", aggfunc="last")
            .reindex(columns=list(CURVE_METRICS)).reset_index().rename_axis(columns=None))

"""MLflow tracking: one run per pipeline experiment, in the repository root's store.

The embedded default is a sqlite store `mlflow.db` with artifacts in `mlartifacts/`, both at the
repository root, so `mlflow ui` started there shows every run. Queued DVC experiments run in a
temporary copy with `DVC_ROOT` pointing at the real root: everything here resolves against that
root, never the copy (an experiment created from the copy would keep an artifact path that
vanishes with it). `MLFLOW_TRACKING_URI`, when set, wins (a team server).

A fresh sqlite store is created under a file lock (concurrent first-use schema migrations race on
"table already exists"), and writes that meet "database is locked" are retried with back-off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import mlflow
import yaml
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from language_entropy.errors import UserError
from language_entropy.params import flatten

T = TypeVar("T")
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
SERVER_PROBE_TIMEOUT_S = 5
PARAMS_DIGEST_TAG = "params_digest"
STUDY_TAG = "study"  # mlflow.study: the study a run belongs to (stages/compare.py selects by it)
TRAIN_RUN_TAG = "train_run_id"  # on a run of evaluate/visualize derived from a training run: that run's id
STAGE_TAG, FINETUNE_STAGE = "stage", "finetune"  # the finetune stage's own run: runs.py tells RL studies by it
SCHEMA_ROWS = 1000  # rows a logged split's schema is inferred from


def project_root() -> Path:
    """The real repository root: DVC_ROOT inside a DVC stage (also in a queued copy), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / STORE_FILE}"


def retry_locked(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry `fn` with jittered exponential back-off while sqlite says the database is locked."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for attempt in range(8):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # sqlite errors surface as MlflowException or SQLAlchemy's own
                if "database is locked" not in str(error) or attempt == 7:
                    raise
                time.sleep(0.1 * 2**attempt * (1 + random.random()))
        raise AssertionError("unreachable")

    return wrapper


@retry_locked
def _get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # another process created it between our look-up and create
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _probe_server(uri: str) -> None:
    """Fail within seconds, with a clear message, when a tracking server does not answer."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(SERVER_PROBE_TIMEOUT_S))
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UserError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable: {reason}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at the project's store, make sure `experiment` exists, and return its id."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines about creating the store's tables
    root = root or project_root()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)  # note: MLflow also exports it as MLFLOW_TRACKING_URI to child processes
    if uri.startswith("sqlite:///"):
        store = Path(uri.removeprefix("sqlite:///")).resolve()
        # Opening a client migrates a fresh store's schema: one process at a time. Artifacts go beside
        # the store, an absolute path that outlives the temporary copy a queued experiment runs in.
        with FileLock(f"{store}.lock"):
            return _get_or_create_experiment(MlflowClient(uri), experiment, (store.parent / ARTIFACT_DIR).as_uri())
    if uri.startswith(("http://", "https://")):
        _probe_server(uri)
    return _get_or_create_experiment(MlflowClient(uri), experiment, None)


def git_commit(cwd: Path | None = None) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def params_digest(flat_params: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(flat_params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _same_value(a: object, b: object) -> bool:
    """Params compare by value: 0 and 0.0 are the same, as are a YAML list and a tuple of the same items."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def swept_values(flat_params: dict[str, object], baseline_rev: str) -> dict[str, object]:
    """The params that differ from params.yaml at `baseline_rev` (DVC's experiment baseline, or HEAD for a
    plain `dvc repro`), read from the real repository; empty when that file cannot be read."""
    done = subprocess.run(["git", "show", f"{baseline_rev}:params.yaml"], cwd=project_root(), capture_output=True,
                          text=True)
    try:
        baseline = flatten(yaml.safe_load(done.stdout) or {}) if done.returncode == 0 else None
    except yaml.YAMLError:
        baseline = None
    if not isinstance(baseline, dict):
        return {}
    return {key: value for key, value in flat_params.items()
            if key in baseline and not _same_value(baseline[key], value)}


def run_tags(flat_params: dict[str, object]) -> dict[str, str]:
    """Where a run came from: the code's git commit, the params' digest, DVC's experiment name (`workspace`
    for a plain `dvc repro`) and baseline commit, the swept values against it, and the MLflow run name
    made of those (`mlflow.runName`, e.g. ``brisk-gnat loss.entropy_weight=0.2 seed=1``)."""
    commit = git_commit(project_root())
    baseline = os.environ.get("DVC_EXP_BASELINE_REV") or commit
    experiment = os.environ.get("DVC_EXP_NAME") or "workspace"
    swept = {key: value for key, value in swept_values(flat_params, baseline).items() if not key.startswith("mlflow.")}
    described = " ".join(f"{key}={value}" for key, value in swept.items())
    tags = {"git_commit": commit, PARAMS_DIGEST_TAG: params_digest(flat_params), "dvc_exp_name": experiment,
            "dvc_exp_baseline_rev": baseline, "swept": described or "none",
            "mlflow.runName": f"{experiment} {described}".strip()}
    if flat_params.get("mlflow.study"):
        tags[STUDY_TAG] = str(flat_params["mlflow.study"])
    return tags


@retry_locked
def run_exists(run_id: str) -> bool:
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def process_tags() -> dict[str, str]:
    """Which process holds a run open: a later stage marks the run FAILED once that process has ended
    (`fail_abandoned_runs`). Set whenever a run is started or reopened."""
    return {"pid": str(os.getpid()), "host": socket.gethostname(), "checkout": str(project_root())}


@retry_locked
def start_run(experiment_id: str, run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Start a new run, or reopen `run_id` (a resumed training run, or evaluate adding to train's run)."""
    if run_id is not None and not run_exists(run_id):
        raise UserError(f"MLflow run {run_id} is not in the store {mlflow.get_tracking_uri()}")
    tags = {**(tags or {}), **process_tags()}
    return mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, tags=tags).info.run_id


@retry_locked
def fail_abandoned_runs(alive: Callable[[int], bool]) -> list[str]:
    """Mark FAILED the runs of this checkout on this host that are RUNNING although the process that opened
    them has ended (killed: nothing closed them); returns `run id (pid N)` for each."""
    client, here = MlflowClient(), process_tags()
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    failed = []
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'") if experiments else []:
        tags = run.data.tags
        if tags.get("host") != here["host"] or tags.get("checkout") != here["checkout"]:
            continue
        pid = int(tags["pid"]) if tags.get("pid", "").isdigit() else None
        if pid is None or pid == os.getpid() or alive(pid):
            continue
        client.set_tag(run.info.run_id, "failed_because", f"process {pid} ended with the run still open")
        client.set_terminated(run.info.run_id, status="FAILED")
        failed.append(f"{run.info.run_id} (pid {pid})")
    return failed


def end_active_run(status: str) -> None:
    """End the run this process has open, if any, with `status`."""
    if mlflow.active_run() is not None:
        end_run(status=status)


@retry_locked
def _find_run(experiment_id: str, filter_string: str) -> str | None:
    found = MlflowClient().search_runs([experiment_id], filter_string=filter_string, max_results=1)
    return found[0].info.run_id if found else None


def start_pipeline_run(experiment_id: str, train_run_id: str | None, flat_params: dict[str, object]) -> str:
    """The run that evaluate and visualize log into: the training run when params are unchanged since
    training, else (only eval or viz params changed, so DVC reused the trained model) the run of these
    params derived from it, created once with every param and a `train_run_id` tag.

    Not retried as a whole (its parts are): a retry after the create would make a second run."""
    digest = params_digest(flat_params)
    if train_run_id is not None:
        same_params = _find_run(experiment_id, f"attributes.run_id = '{train_run_id}' and "
                                               f"tags.{PARAMS_DIGEST_TAG} = '{digest}'")
        derived = same_params or _find_run(experiment_id, f"tags.{TRAIN_RUN_TAG} = '{train_run_id}' and "
                                                          f"tags.{PARAMS_DIGEST_TAG} = '{digest}'")
        if derived:
            return start_run(experiment_id, run_id=derived)
    tags = run_tags(flat_params) | ({TRAIN_RUN_TAG: train_run_id} if train_run_id else {})
    run_id = start_run(experiment_id, tags=tags)
    log_params(flat_params)
    return run_id


def start_adhoc_run(experiment_id: str, flat_params: dict[str, object], stage: str, source: str) -> str:
    """A run of its own for an ad-hoc evaluate or visualize (--samples, --base, --verbose), tagged `adhoc`, so
    it never changes the pipeline's runs; filter it out in `mlflow ui` with `tags.adhoc != 'true'`."""
    tags = run_tags(flat_params)
    tags.update(adhoc="true", adhoc_stage=stage, adhoc_source=source,
                **{"mlflow.runName": f"adhoc {stage} {tags['mlflow.runName']}"})
    run_id = start_run(experiment_id, tags=tags)
    log_params(flat_params)
    return run_id


end_run = retry_locked(mlflow.end_run)
log_metrics = retry_locked(mlflow.log_metrics)
log_artifact = retry_locked(mlflow.log_artifact)


@retry_locked
def log_params(params: dict[str, object]) -> None:
    """Log params under their dotted params.yaml names, skipping ones the run already holds (resume)."""
    logged = MlflowClient().get_run(mlflow.active_run().info.run_id).data.params
    fresh = {key: str(value) for key, value in params.items() if key not in logged}
    if fresh:
        mlflow.log_params(fresh)


@retry_locked
def log_dataset(frame, source: Path, split: str) -> None:
    """Record a data split as a run input, with MLflow's content digest and schema."""
    with warnings.catch_warnings():  # schema inference warns that integer columns cannot hold missing values
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=str(source), name=split)
        # MLflow's own inference walks every value (1 s on the 100k-row train split); each column holds one
        # dtype, so the first rows give the same schema
        dataset.schema = infer_signature(frame.head(SCHEMA_ROWS)).inputs
        mlflow.log_input(dataset, context=split)

"""What keeps the stages honest around their work: one training per checkout, checkpoints that match params,
interrupts that end in one line, and the leftovers of killed processes cleaned at the next start."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from language_entropy.checkpoint import model_config_differences, stale_temp_files
from language_entropy.errors import UserError
from language_entropy.params import Params
from language_entropy.pipeline import tracking
from language_entropy.pipeline.cli import StageInterrupted
from language_entropy.pipeline.outputs import stale_staging

LOCK_NAME = "train.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- one training per checkout ------------------------------------------------------------------------


def hold_train_lock(resume_dir: Path, enabled: bool = True, wait: bool = False) -> FileLock | None:
    """Take the lock beside the resume state (`paths.resume/train.lock`), or refuse at once naming the holder
    (pid, host, start time); with `wait`, wait for it instead. Held until `release_train_lock` or the process
    ends (the OS drops it even after kill -9). `enabled` False (DDP ranks other than 0) takes nothing."""
    if not enabled:
        return None
    resume_dir.mkdir(parents=True, exist_ok=True)
    path = resume_dir / LOCK_NAME
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        if not wait:
            raise UserError(f"another training is running in this checkout ({_holder(path)}; it holds {path}): "
                            "wait for it to end, stop it, or pass --wait") from None
        print(f"waiting for the training that holds {path} ({_holder(path)})", file=sys.stderr, flush=True)
        lock.acquire(timeout=-1)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "command": " ".join(sys.argv)}
    _holder_file(path).write_text(json.dumps(holder) + "\n")
    atexit.register(release_train_lock, lock)  # however the stage ends (release is idempotent)
    return lock


def check_train_lock(resume_dir: Path, wait: bool = False) -> None:
    """Refuse (or wait) as `hold_train_lock` would, holding nothing: before torchrun starts the workers."""
    release_train_lock(hold_train_lock(resume_dir, wait=wait))


def release_train_lock(lock: FileLock | None) -> None:
    if lock is not None and lock.is_locked:
        _holder_file(Path(lock.lock_file)).unlink(missing_ok=True)  # before the release: a new holder's stays
        lock.release()


def _holder_file(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".json")  # not the lock file itself: acquiring truncates it


def _holder(lock_path: Path) -> str:
    try:
        holder = json.loads(_holder_file(lock_path).read_text())
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said which"


# --- checkpoints against params -----------------------------------------------------------------------


def checkpoint_params(params: Params, payload: dict, checkpoint: Path, as_is: bool) -> dict[str, object]:
    """The params to log with a checkpoint's measurements. A checkpoint whose model config differs from
    params is refused (one line listing the keys) unless `as_is` (--base), and then its own config is logged."""
    saved = payload.get("model_config", {})
    differences = model_config_differences(saved, params.model)
    flat = params.flat()
    if not differences:
        return flat
    if not as_is:
        raise UserError(f"{checkpoint} was trained with another model config than params ({'; '.join(differences)}): "
                        f"retrain with these params, or pass --base {checkpoint} to use it with its own config")
    return {**flat, **{f"model.{key}": value for key, value in saved.items() if f"model.{key}" in flat}}


# --- interrupts -----------------------------------------------------------------------------------------


def interruptible(run):
    """Decorator for a stage's run function: an interrupt (`cli.StageInterrupted`, raised by the handler
    `cli.run_stage` installs) ends the MLflow run this process has open KILLED on its way to `run_stage`,
    which says so in one line. An output set being written is discarded (`outputs.output_set`)."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except StageInterrupted:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C does not interrupt the clean-up
            tracking.end_active_run("KILLED")
            raise

    return wrapper


# --- leftovers of killed processes ----------------------------------------------------------------------


def clean_leftovers(params: Params, writers_gone: bool = False) -> None:
    """At a stage's start (after `tracking.connect`): mark FAILED the MLflow runs of this checkout left RUNNING
    by a process that has ended, and remove the temporary files and staging directories such processes left
    beside the outputs; say so in one line. `writers_gone`: the caller holds the train lock, so checkpoint
    temp files without a pid (older versions) are stale too."""
    paths = params.paths
    checkpoint_dirs = [Path(paths.model).parent, Path(paths.resume)]
    output_dirs = dict.fromkeys([*checkpoint_dirs, *(Path(p) for p in (paths.metrics, paths.plots, paths.data))])
    stale = [path for directory in checkpoint_dirs for path in stale_temp_files(directory, pid_alive, writers_gone)]
    removed = []
    for path in [*stale, *stale_staging(output_dirs, pid_alive)]:
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError:
            continue
        removed.append(str(path))
    failed = tracking.fail_abandoned_runs(pid_alive)
    said = [f"marked MLflow run {', '.join(failed)} FAILED (left RUNNING)"] if failed else []
    said += [f"removed {', '.join(removed)}"] if removed else []
    if said:
        print(f"cleaned up after ended processes: {'; '.join(said)}", file=sys.stderr)

"""A scratch copy of this pipeline in a fresh git repository: what end-to-end tests and benchmarks run.

Not part of the installed package: tests (through tests/conftest.py) and benchmarks import it from here.

The copy holds exactly what `dvc repro` and `dvc exp run` need (stages, package, dvc.yaml, DVC's config,
the ignore files) and the given params.yaml, committed, so DVC's queue can copy it for experiments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from language_entropy.pipeline.deps import ROOT

TINY_OVERRIDES = {
    "seed": 0,
    "data": {"operations": ["add", "sub"], "digits": {"min": 1, "max": 2}, "ood_digits": {"min": 3, "max": 3},
             "train_size": 400, "val_size": 40, "test_size": 40, "ood_size": 40},
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "max_seq_len": 32},
    "train": {"steps": 20, "batch_size": 32, "eval_every": 10, "checkpoint_every": 10, "warmup_steps": 2, "threads": 1,
              "log_every": 5},
    "eval": {"semantic_problems": 8, "semantic_samples": 4, "temperatures": [0.0, 1.0], "batch_size": 64},
    "viz": {"trajectories": 4, "layers": [0, 1], "dpi": 40},
    "mlflow": {"experiment": "tiny"},
    "rl": {"steps": 0, "prompt_size": 200, "val_size": 40, "digits": {"min": 3, "max": 3}},  # tests/test_finetune.py
}


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied section by section (nested mappings merge, other values replace)."""
    result = dict(base)
    for key, value in overrides.items():
        result[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return result


# The repository's params.yaml (paths included: dvc.yaml templates them) shrunk to a pipeline of seconds.
TINY_PARAMS = merged(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_OVERRIDES)

PROJECT_FILES = ["stages", "language_entropy", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvc/plots", ".dvcignore",
                 ".gitignore"]


def git_env() -> dict[str, str]:
    """The environment for commands in a scratch repository: a git identity, no outside tracking server."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(GIT_AUTHOR_NAME="scratch", GIT_AUTHOR_EMAIL="scratch@example.com", GIT_COMMITTER_NAME="scratch",
               GIT_COMMITTER_EMAIL="scratch@example.com")
    return env


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command in `cwd`; a failure raises with its output when `check`.

    The output goes through files, not pipes: `dvc exp run --run-all` leaves its queue workers running in the
    background, and one that misses the queue's shutdown (a race in DVC's worker monitor, seen here) keeps the
    pipes open, so waiting for their end would wait until the timeout although the command itself is done."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(args, cwd=cwd, env=env or git_env(), stdout=out, stderr=err, text=True, timeout=timeout)
        out.seek(0)
        err.seek(0)
        done.stdout, done.stderr = out.read(), err.read()
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def make_project(path: Path, params: dict, root: Path = ROOT) -> Path:
    """Copy the pipeline of `root` into `path`, write `params`, and commit it as a fresh git repository."""
    for name in PROJECT_FILES:
        source, target = root / name, path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "scratch project"], path)
    return path

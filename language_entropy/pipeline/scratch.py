"""A scratch copy of this pipeline in a fresh git repository: what end-to-end tests and the sweep benchmark run.

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

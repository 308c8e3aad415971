"""The thread count is part of a run: fixed before any work, recorded, and what makes parallel runs reproducible."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import git_env
from test_training import setup, weights

from language_entropy.checkpoint import save_checkpoint
from language_entropy.params import Params, PathsConfig
from language_entropy.pipeline.train import RESOLVED_THREADS_PARAM, load_resume_state, resume_checkpoint_path
from language_entropy.threads import resolve_threads, usable_cores

ROOT = Path(__file__).resolve().parents[1]


def test_auto_resolves_to_the_usable_cores_and_a_number_to_itself():
    assert resolve_threads("auto") == usable_cores() >= 1
    assert resolve_threads(3) == 3


def test_apply_threads_sets_torch_and_the_math_libraries_before_they_load():
    code = ("import os; from language_entropy.threads import apply_threads; n = apply_threads(1); import torch; "
            "print(n, torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], os.environ['MKL_DYNAMIC'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**git_env(), "OMP_NUM_THREADS": "7"})
    assert done.stdout.split() == ["1", "1", "1", "FALSE"], done.stderr


def test_apply_threads_loads_no_torch_and_sets_one_already_loaded():
    """The data stage never pays torch's import (0.9 s): neither the thread set-up nor the data code loads it."""
    code = ("import sys; from language_entropy.threads import apply_threads; apply_threads(1); "
            "import language_entropy.data, language_entropy.pipeline.outputs; print('torch' in sys.modules); "
            "import torch; apply_threads(2); print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=git_env())
    assert done.stdout.split() == ["False", "2"], done.stderr


def test_a_resume_state_of_another_thread_count_is_not_used_and_is_kept(tmp_path):
    params = Params(paths=PathsConfig(resume=str(tmp_path)))
    two = resume_checkpoint_path(params, "abc", threads=2)
    save_checkpoint(two, {"step": 5, "fingerprint": "abc", "threads": 2})
    one = resume_checkpoint_path(params, "abc", threads=1)
    state, why = load_resume_state(one, "abc", threads=1)
    assert state is None and two.name in why and "another thread count" in why and "has 1" in why
    assert "starting fresh" in why and two.exists()
    state, why = load_resume_state(two, "abc", threads=2)
    assert state["step"] == 5 and why.startswith("resuming")
    save_checkpoint(one, {"step": 5, "fingerprint": "abc", "threads": 2})  # a file whose count disagrees with its name
    state, why = load_resume_state(one, "abc", threads=1)
    assert state is None and "2 threads" in why


def start_training(cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "stages" / "train.py")], cwd=cwd, env=git_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err


@pytest.mark.slow
def test_two_trainings_side_by_side_give_the_weights_of_the_same_runs_one_after_the_other(tmp_path):
    train = {"steps": 60, "threads": 1}
    runs = {name: setup(tmp_path / name, seed=seed, train=train)
            for name, seed in (("alone_a", 0), ("alone_b", 1), ("together_a", 0), ("together_b", 1))}
    for name in ("alone_a", "alone_b"):
        finish(start_training(runs[name]))
    together = [start_training(runs[name]) for name in ("together_a", "together_b")]
    for process in together:
        finish(process)
    for letter in "ab":
        alone, beside = weights(runs[f"alone_{letter}"] / "models" / "model.pt"), \
            weights(runs[f"together_{letter}"] / "models" / "model.pt")
        assert all(torch.equal(alone[key], beside[key]) for key in alone), letter
    checkpoint = torch.load(runs["alone_a"] / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert checkpoint["threads"] == 1
    mlflow.set_tracking_uri(f"sqlite:///{runs['alone_a'] / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["tiny"]).iloc[0]
    assert run[f"params.{RESOLVED_THREADS_PARAM}"] == "1" and run["params.train.threads"] == "1"

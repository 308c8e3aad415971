"""Shared fixtures: a temporary git + DVC repository made from this project, with a tiny params.yaml."""

from pathlib import Path

import pytest
import yaml

from language_entropy.pipeline.scratch import git_env, make_project, run  # noqa: F401 (the tests import them from here)

ROOT = Path(__file__).resolve().parents[1]

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
}


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied section by section (nested mappings merge, other values replace)."""
    result = dict(base)
    for key, value in overrides.items():
        result[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return result


# The repository's params.yaml (paths included: dvc.yaml templates them) shrunk to a pipeline of seconds.
TINY_PARAMS = merged(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_OVERRIDES)


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    return make_project(tmp_path / "project", TINY_PARAMS)

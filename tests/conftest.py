"""Shared fixtures: a temporary git + DVC repository made from this project, with a tiny params.yaml.

The scratch-project helpers live in benchmarks/scratch.py (benchmarks use them too); the tests import them from here.
"""

from pathlib import Path

import pytest

from benchmarks.scratch import TINY_PARAMS, git_env, make_project, merged, run  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    return make_project(tmp_path / "project", TINY_PARAMS)

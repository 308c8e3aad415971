"""The benchmark suite in smoke mode: it runs end to end and writes every figure the README reports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"cpu_cores", "torch_version", "datagen_problems_per_s", "theory_add_sub_20_digits_s", "train_tokens_per_s",
        "train_tokens_per_s_ce_only", "generate_tokens_per_s_kv_cache", "generate_tokens_per_s_recompute",
        "eval_default_s", "time_to_99_add3_s", "sweep_4_runs_recipe_s",
        "sweep_4_runs_speedup_vs_sequential_same_threads", "sweep_4_runs_weights_identical_to_alone",
        "startup_train_wall_s", "startup_train_imports_s", "mlflow_fresh_store_connect_s",
        "mlflow_existing_store_connect_s", "mlflow_existing_store_run_s"}
STAGES = ("generate_data", "compute_theoretical_entropy", "train", "evaluate", "visualize")


@pytest.mark.slow
def test_smoke_run_writes_every_key(tmp_path):
    out = tmp_path / "benchmark.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures == json.loads(done.stdout)
    assert set(figures) >= KEYS
    assert figures["sweep_4_runs_weights_identical_to_alone"] is True
    for key in KEYS - {"torch_version", "time_to_99_add3_s", "sweep_4_runs_weights_identical_to_alone"}:
        assert figures[key] > 0, key
    for stage in STAGES:  # every stage imports something, and its imports are part of its wall time
        assert 0 < figures[f"startup_{stage}_imports_s"] < figures[f"startup_{stage}_wall_s"], stage

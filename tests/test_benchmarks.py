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


GPU_KEYS = {"train_step_eager_ms", "train_step_captured_ms", "train_step_captured_all_losses_ms",
            "train_step_all_losses_ratio", "decode_kv_captured_vs_recompute", "decode_kv_captured_tokens_per_s",
            "eval_default_eager_s", "eval_default_captured_s", "sweep_1_at_a_time_s", "sweep_2_at_a_time_speedup",
            "default_repro_s"}


@pytest.mark.slow
def test_gpu_figures_run_on_a_cpu_in_smoke_mode():
    """The GPU suite's code paths (bench_gpu.py; on a CPU nothing is captured): every figure, no part failed."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--smoke"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert not [key for key in figures if key.endswith("_error")], figures
    assert set(figures) >= GPU_KEYS
    for key in GPU_KEYS:
        assert figures[key] > 0, key
    assert figures["decode_captured_same_tokens"] is True

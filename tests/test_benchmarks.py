"""The benchmark suite in smoke mode: it runs end to end and writes every figure the README reports; the race's
params file differs from the shipped params only where it says."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from language_entropy.model import ArithmeticDecoder
from language_entropy.params import load_params

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"cpu_cores", "torch_version", "race", "race_params",
        "datagen_problems_per_s", "theory_add_sub_20_digits_s", "train_tokens_per_s",
        "train_tokens_per_s_ce_only", "generate_tokens_per_s_kv_cache", "generate_tokens_per_s_recompute",
        "eval_default_s", "time_to_99_add3_s", "sweep_4_runs_recipe_s",
        "sweep_4_runs_speedup_vs_sequential_same_threads", "sweep_4_runs_weights_identical_to_alone",
        "startup_train_wall_s", "startup_train_imports_s", "mlflow_fresh_store_connect_s",
        "mlflow_existing_store_connect_s", "mlflow_existing_store_run_s", "rl_step_ms", "train_step_ms",
        "rl_step_vs_train_step", "finetune_share_of_repro"}
STAGES = ("generate_data", "compute_theoretical_entropy", "train", "finetune", "evaluate", "visualize")


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
    for key in KEYS - {"torch_version", "race", "race_params", "time_to_99_add3_s",
                       "sweep_4_runs_weights_identical_to_alone"}:
        assert figures[key] > 0, key
    for stage in STAGES:  # every stage imports something, and its imports are part of its wall time
        assert 0 < figures[f"startup_{stage}_imports_s"] < figures[f"startup_{stage}_wall_s"], stage

    assert figures["race_params"] == "benchmarks/add3.yaml"
    assert figures["time_to_99_add3_steps"] == {"0": 4, "1": 4, "2": 4}  # smoke: 4 steps a seed, no 99%


# benchmarks/add3.yaml against params.yaml: 3-digit addition data (digits 1-3 -> 3, OOD 4-5 -> 4, the split sizes
# the race always used) and the offset on '=', nothing else
RACE_DIFFERENCES = {"data.operations": ["add"], "data.digits.min": 3, "data.ood_digits.max": 4, "data.val_size": 500,
                    "data.test_size": 500, "data.ood_size": 100, "model.abacus_offset_equals": True}


def test_the_race_trains_the_default_model_class_with_only_the_named_params_changed():
    default, race = load_params(ROOT / "params.yaml"), load_params(ROOT / "benchmarks" / "add3.yaml")
    default_flat, race_flat = default.flat(), race.flat()
    assert race_flat.keys() == default_flat.keys()
    assert {key: value for key, value in race_flat.items() if default_flat[key] != value} == RACE_DIFFERENCES
    # the same model class, parameter for parameter, trained by the same loss and schedule
    assert dataclasses.replace(race.model, abacus_offset_equals=False) == default.model
    assert (race.loss, race.train, race.seed) == (default.loss, default.train, default.seed)
    def shapes(model):
        return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}

    assert shapes(ArithmeticDecoder(race.model)) == shapes(ArithmeticDecoder(default.model))


def test_race_smoke_runs_from_the_params_file_and_names_it():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_race.py"), "--smoke", "--seeds", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["race_params"] == "benchmarks/add3.yaml" and "model.abacus_offset_equals: true" in figures["race"]
    assert figures["race_seeds"] == [1]
    assert figures["time_to_99_add3_steps"] == {"1": 4}
    assert figures["time_to_99_add3_s"] == {"1": None}  # 4 steps do not reach 99%
    assert "mingpt_add3_time_to_99_s" not in figures  # no --mingpt: no minGPT figures, and no ratio


GPU_KEYS = {"train_step_eager_ms", "train_step_captured_ms", "train_step_captured_all_losses_ms",
            "train_step_all_losses_ratio", "decode_kv_captured_vs_recompute", "decode_kv_captured_tokens_per_s",
            "eval_default_eager_s", "eval_default_captured_s", "sweep_1_at_a_time_s", "sweep_2_at_a_time_speedup",
            "default_repro_s", "batched_runs_vs_one"}


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

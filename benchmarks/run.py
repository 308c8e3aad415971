"""The benchmark suite: every speed figure of the project, measured the same way each time.

    python benchmarks/run.py [--repeats 3] [--skip-time-to-99] [--skip-sweep] [--skip-startup] [--mingpt DIR]
                             [--smoke]
                             [--out metrics/benchmark.json]
    python benchmarks/run.py --device cuda [--skip-sweep] [--skip-startup] [--smoke]

With `--device cuda` only the GPU figures run (benchmarks/bench_gpu.py: captured against eager training
steps, decoding, a sweep of 8 default trainings on one GPU and, unless --skip-startup, the whole default
`dvc repro`); they are written under "cuda" in `--out`, keeping the CPU figures beside them.

Prints one JSON object and writes it to `--out`. Each figure is the median of `--repeats` runs after
a warm-up, beside the machine's core count, torch version and device. `--smoke` shrinks every
workload to seconds (for CI: it checks that the suite runs and has its keys, not the speed).
The 3-digit-addition race (benchmarks/bench_race.py) trains this project from the committed params file
benchmarks/add3.yaml (the shipped params.yaml with 3-digit addition data and `model.abacus_offset_equals:
true`), seeds 0, 1 and 2, and reports each seed's time to 99% validation exact match; `--mingpt DIR` (a
checkout of karpathy/minGPT outside this repository) runs minGPT's adder, unchanged, in the same run right
after them, and each seed's time as a multiple of minGPT's (benchmarks/bench_mingpt.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_gpu
import bench_model
import bench_race
import bench_rl
import bench_startup
import bench_sweep
import bench_theory

from language_entropy.data import generate_splits
from language_entropy.params import DataConfig

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def datagen_problems_per_s(problems: int, repeats: int) -> float:
    config = DataConfig(train_size=problems - 3000, val_size=1000, test_size=1000, ood_size=1000)
    return problems / bench_model.median_seconds(lambda: generate_splits(config, seed=0), CPU, repeats)


def write_gpu_figures(args: argparse.Namespace) -> None:
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(figures: dict) -> None:
        args.out.write_text(json.dumps({**existing, "cuda": figures}, indent=2) + "\n")

    figures = bench_gpu.run_all(args.device, args.smoke, args.skip_sweep, args.skip_startup, progress=write)
    print(json.dumps(figures, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-time-to-99", action="store_true", help="skip the 3-digit-addition race (minutes)")
    parser.add_argument("--skip-sweep", action="store_true", help="skip the few-minute queued-sweep benchmark")
    parser.add_argument("--skip-startup", action="store_true",
                        help="skip the stage start-up benchmark (runs the default pipeline once)")
    parser.add_argument("--mingpt", type=Path, help="a karpathy/minGPT checkout: time its adder beside ours")
    parser.add_argument("--smoke", action="store_true", help="tiny workloads: check the suite runs, not its speed")
    parser.add_argument("--out", type=Path, default=ROOT / "metrics" / "benchmark.json")
    parser.add_argument("--device", default="cpu",
                        help="cuda: the GPU figures (benchmarks/bench_gpu.py) only, written under 'cuda' in --out "
                             "beside the CPU figures already there")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    if args.device != "cpu":
        write_gpu_figures(args)
        return

    figures: dict[str, object] = {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                  "torch_version": torch.__version__, "python": platform.python_version(),
                                  "device": "cpu", "smoke": args.smoke}
    figures["datagen_problems_per_s"] = datagen_problems_per_s(20_000 if args.smoke else 1_000_000, repeats)
    figures["theory_add_sub_20_digits_s"] = (bench_theory.time_add_sub_20_digits() if not args.smoke else
                                             bench_model.median_seconds(bench_theory.time_mul_div_3x3, CPU, 1))
    steps = bench_model.bench_train_steps("cpu", steps=2 if args.smoke else 10, repeats=repeats)
    tokens_per_step = steps["train_batch_size"] * steps["train_tokens_per_row"]
    figures["train_tokens_per_s"] = tokens_per_step / (steps["train_step_all_losses_ms"] / 1e3)
    figures["train_tokens_per_s_ce_only"] = tokens_per_step / (steps["train_step_ce_only_ms"] / 1e3)
    decoding = bench_model.bench_decoding("cpu", batch_size=64 if args.smoke else 512, repeats=repeats)
    figures["generate_tokens_per_s_kv_cache"] = decoding["decode_kv_cache_tokens_per_s"]
    figures["generate_tokens_per_s_recompute"] = decoding["decode_recompute_tokens_per_s"]
    figures["eval_default_s"], figures["eval_default_model"] = bench_gpu.eval_default_s("cpu", False, repeats,
                                                                                      args.smoke)
    figures.update(bench_rl.bench_rl_step(repeats, smoke=args.smoke))
    if args.smoke or not args.skip_time_to_99:
        figures.update(bench_race.race(mingpt=args.mingpt, smoke=args.smoke))
    if not args.skip_startup:
        figures.update(bench_startup.stage_startup(smoke=args.smoke))
    if not args.skip_sweep:
        figures.update(bench_sweep.run_sweeps(steps=10 if args.smoke else 400, smoke=args.smoke))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

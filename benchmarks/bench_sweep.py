"""Sweep throughput on one machine: the README's queued-sweep recipe against the same experiments one by one.

    python benchmarks/bench_sweep.py [--steps 400] [--smoke]

Four experiments (`loss.entropy_weight` 0 and 0.1 x `loss.continuity_weight` 0 and 0.1) of a small
pipeline are queued with `dvc exp run --queue` and run by `dvc exp run --run-all -j J`, each time in a
fresh scratch repository (so DVC's run cache cannot skip a training), three ways:

* `sequential_all_cores`: -j 1, `train.threads: auto` (what running them one after another gives);
* `sequential_one_thread`: -j 1, `train.threads: 1` (the recipe's experiments, one after another);
* `recipe`: -j <usable cores>, `train.threads: 1` (the README's sweep recipe).

Prints one JSON object: the wall times, the recipe's speedup against both sequential ways, and
whether every recipe experiment's weights are bit-identical to the same experiment run one after
another with the same thread count (read from DVC's cache through each experiment's dvc.lock).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratch import make_project, run  # noqa: E402

from language_entropy.threads import usable_cores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID = {"loss.entropy_weight": (0, 0.1), "loss.continuity_weight": (0, 0.1)}
SMALL = {  # a pipeline of seconds per stage: 1-2 digit add/sub, a small model
    "data": {"digits": {"min": 1, "max": 2}, "ood_digits": {"min": 3, "max": 3}, "train_size": 2000,
             "val_size": 100, "test_size": 100, "ood_size": 100},
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "max_seq_len": 32},
    "eval": {"semantic_problems": 50, "semantic_samples": 4, "temperatures": [0.0, 1.0]},
    "viz": {"trajectories": 4, "layers": [0, 2], "dpi": 40},
    "mlflow": {"experiment": "sweep-benchmark"},
    "rl": {"steps": 0, "prompt_size": 2000, "val_size": 100, "digits": {"min": 3, "max": 3}},  # a training sweep
}


def small_params(steps: int, threads: int | str) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section] = {**params[section], **values}
    params["train"] = {**params["train"], "steps": steps, "eval_every": max(1, steps // 4),
                       "checkpoint_every": steps, "warmup_steps": max(1, steps // 20), "threads": threads}
    return params


def model_weights(repo: Path, ref: str) -> tuple[tuple, dict[str, torch.Tensor]]:
    """The swept values of experiment `ref` and its trained weights, from DVC's cache."""
    params = yaml.safe_load(run(["git", "show", f"{ref}:params.yaml"], repo).stdout)
    key = tuple(params[name.split(".")[0]][name.split(".")[1]] for name in GRID)  # the full grid's names
    lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], repo).stdout)
    md5 = next(out["md5"] for out in lock["stages"]["train"]["outs"] if out["path"] == params["paths"]["model"])
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return key, torch.load(cached, map_location="cpu", weights_only=True)["model_state"]


def sweep(workdir: Path, steps: int, threads: int | str, jobs: int, grid: dict[str, tuple]) -> tuple[float, dict]:
    """Queue `grid` in a fresh scratch repository whose data and theory stages are done and committed (as in
    a real study, where the sweep changes only training params), run it with `jobs` workers; wall time and
    weights per experiment."""
    repo = make_project(workdir, small_params(steps, threads))
    run(["dvc", "repro", "--quiet", "generate-data", "compute-theoretical-entropy"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "data and theory"], repo)
    flags = [f"-S{name}={','.join(map(str, values))}" for name, values in grid.items()]
    run(["dvc", "exp", "run", "--queue", "--quiet", *flags], repo)
    start = time.perf_counter()
    run(["dvc", "exp", "run", "--run-all", "-j", str(jobs), "--quiet"], repo, timeout=3600)
    elapsed = time.perf_counter() - start
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    refs = [ref for ref in refs if ref.count("/") >= 4]  # refs/exps/xx/<baseline>/<name>: the experiments
    weights = dict(model_weights(repo, ref) for ref in refs)
    expected = math.prod(len(values) for values in grid.values())
    if len(weights) != expected:
        raise RuntimeError(f"expected {expected} finished experiments in {repo}, found {len(weights)}")
    return elapsed, weights


def run_sweeps(steps: int, smoke: bool = False) -> dict[str, object]:
    """The figures above; `smoke` runs 2 experiments of 10 steps, the recipe and one-thread ways only."""
    jobs = usable_cores()
    grid = {"loss.entropy_weight": (0, 0.1)} if smoke else GRID
    with tempfile.TemporaryDirectory(prefix="sweep-benchmark-") as tmp:
        all_cores_s = None if smoke else sweep(Path(tmp) / "all_cores", steps, "auto", 1, grid)[0]
        one_thread_s, alone = sweep(Path(tmp) / "one_thread", steps, 1, 1, grid)
        recipe_s, side_by_side = sweep(Path(tmp) / "recipe", steps, 1, jobs, grid)
    identical = all(torch.equal(alone[key][name], side_by_side[key][name]) for key in alone for name in alone[key])
    return {"sweep_4_runs_jobs": jobs, "sweep_4_runs_experiments": len(alone), "sweep_4_runs_train_steps": steps,
            "sweep_4_runs_sequential_all_cores_s": all_cores_s,
            "sweep_4_runs_sequential_one_thread_s": one_thread_s, "sweep_4_runs_recipe_s": recipe_s,
            "sweep_4_runs_speedup_vs_sequential": all_cores_s / recipe_s if all_cores_s else None,
            "sweep_4_runs_speedup_vs_sequential_same_threads": one_thread_s / recipe_s,
            "sweep_4_runs_weights_identical_to_alone": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps per experiment")
    parser.add_argument("--smoke", action="store_true", help="2 experiments of 10 steps: the code path, not the speed")
    args = parser.parse_args()
    print(json.dumps(run_sweeps(10 if args.smoke else args.steps, args.smoke), indent=2))


if __name__ == "__main__":
    main()

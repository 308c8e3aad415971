"""Stage start-up: how much of each stage's wall time is imports and MLflow set-up.

    python benchmarks/bench_startup.py [--smoke]

Runs the pipeline's six stages one after another in a scratch repository (the shipped params.yaml;
`--smoke`: a pipeline of seconds), each as `python -X importtime stages/<stage>.py`, whose stderr
times every import as the stage makes it (lazy ones included). Per stage: wall seconds, import
seconds (the top-level imports' cumulative times) and their share. MLflow's set-up is timed apart in
fresh processes: importing the tracking module, connecting to a new store (creating its tables) and
to an existing one, and opening a run with every param logged, then closing it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_sweep  # noqa: E402
from scratch import make_project, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate_data", "compute_theoretical_entropy", "train", "finetune", "evaluate", "visualize"]
MLFLOW_SETUP = """
import json, sys, time
start = time.perf_counter()
from language_entropy.pipeline import tracking
from language_entropy.params import load_params
imported = time.perf_counter()
experiment = tracking.connect("startup-benchmark")
connected = time.perf_counter()
flat = load_params("params.yaml").flat()
tracking.start_run(experiment, tags=tracking.run_tags(flat))
tracking.log_params(flat)
tracking.end_run()
print(json.dumps({"import_s": imported - start, "connect_s": connected - imported,
                  "run_s": time.perf_counter() - connected}))
"""


def import_seconds(stderr: str) -> float:
    """Sum of the top-level imports' cumulative times in `python -X importtime` output (microseconds)."""
    total = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2  # the name is indented two spaces per level
        if depth == 1:  # top level: its cumulative time holds everything it imported
            total += int(cumulative)
    return total / 1e6


def timed(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of `args` run in `cwd` (a failure raises with its output), and its result."""
    start = time.perf_counter()
    done = run(args, cwd, timeout=900)
    return time.perf_counter() - start, done


def stage_startup(smoke: bool) -> dict[str, float]:
    params = (bench_sweep.small_params(steps=10, threads="auto") if smoke
              else yaml.safe_load((ROOT / "params.yaml").read_text()))
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        project = make_project(Path(scratch) / "project", params)
        for stage in STAGES:
            wall, done = timed([sys.executable, "-X", "importtime", f"stages/{stage}.py"], project)
            imports = import_seconds(done.stderr)
            figures.update({f"startup_{stage}_wall_s": wall, f"startup_{stage}_imports_s": imports,
                            f"startup_{stage}_imports_share": imports / wall})
        repro = sum(figures[f"startup_{stage}_wall_s"] for stage in STAGES)
        figures["finetune_share_of_repro"] = figures["startup_finetune_wall_s"] / repro  # the bound: 1/4
        (project / "mlflow.db").unlink()  # the stages made it: the first set-up below creates a new one
        for store in ("fresh_store", "existing_store"):
            _, done = timed([sys.executable, "-c", MLFLOW_SETUP], project)
            for name, seconds in json.loads(done.stdout).items():
                figures[f"mlflow_{store}_{name}"] = seconds
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a pipeline of seconds: check the path, not the speed")
    args = parser.parse_args()
    print(json.dumps(stage_startup(args.smoke), indent=2))


if __name__ == "__main__":
    main()

"""GPU figures: the captured training step and decode loop against eager, a sweep that fills one GPU, many
seeds as one batched model, and the whole default pipeline.

    python benchmarks/bench_gpu.py [--device cuda] [--smoke] [--skip-sweep] [--skip-repro]

Prints one JSON object (benchmarks/run.py --device cuda writes it into metrics/benchmark.json, under
"cuda"). Every timing is the median of timed blocks after a warm-up, with the device synchronised
around each block; training runs as the pipeline trains (`training.Trainer.train_step`, default
params.yaml model, loss and batch, bf16 autocast, the log read every `train.log_every` steps).
`--smoke` shrinks every workload so the code paths run on a CPU in seconds (not a speed figure).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_model  # noqa: E402
from scratch import TINY_PARAMS, make_project, run  # noqa: E402

from language_entropy.batched import BatchedTrainer  # noqa: E402
from language_entropy.checkpoint import load_model  # noqa: E402
from language_entropy.data import generate_splits  # noqa: E402
from language_entropy.evaluation import evaluate_split  # noqa: E402
from language_entropy.model import ArithmeticDecoder  # noqa: E402
from language_entropy.params import (  # noqa: E402
    DataConfig,
    EntropyConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    load_params,
)
from language_entropy.theory import theoretical_entropy_table  # noqa: E402
from language_entropy.threads import usable_cores  # noqa: E402
from language_entropy.training import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def default_trainer(device: torch.device, loss: LossConfig, cuda_graphs: bool, steps: int) -> Trainer:
    params = load_params(ROOT / "params.yaml")
    config = dataclasses.replace(params.train, steps=steps, cuda_graphs=cuda_graphs)
    return Trainer(params.model, loss, config, params.seed, bench_model.training_texts(20_000, 0),
                   bench_model.training_texts(100, 1), device)


def train_step_ms(device: torch.device, loss: LossConfig, cuda_graphs: bool, block: int, repeats: int) -> float:
    """Median milliseconds per `train_step` over `repeats` blocks of `block` steps (log read once a block)."""
    trainer = default_trainer(device, loss, cuda_graphs, steps=(repeats + 1) * block + 10)

    def steps() -> None:
        for _ in range(block):
            trainer.train_step()
        trainer.flush_log()

    return 1e3 * bench_model.median_seconds(steps, device, repeats) / block  # warm-up block: allocations, capture


def training_figures(device: torch.device, block: int, repeats: int) -> dict[str, float]:
    ce, every = LossConfig(), bench_model.ALL_LOSSES
    figures = {f"train_step_{mode}_ms": train_step_ms(device, ce, graphs, block, repeats)
               for mode, graphs in (("eager", False), ("captured", True))}
    figures["train_step_captured_all_losses_ms"] = train_step_ms(device, every, True, block, repeats)
    figures["train_step_eager_all_losses_ms"] = train_step_ms(device, every, False, block, repeats)
    figures["train_step_captured_speedup"] = figures["train_step_eager_ms"] / figures["train_step_captured_ms"]
    figures["train_step_all_losses_ratio"] = (figures["train_step_captured_all_losses_ms"]
                                              / figures["train_step_captured_ms"])
    return figures


def decode_figures(device: torch.device, batch_size: int, repeats: int) -> dict[str, float]:
    """Greedy decoding of 12 tokens after `^abc+def=`: the captured KV-cache loop, the eager one, and
    recomputing the whole sequence each step (eager), at `batch_size` rows, fp32 as evaluation runs."""
    eager = bench_model.bench_decoding(device, batch_size=batch_size, repeats=repeats, autocast=False)
    captured = bench_model.bench_decoding(device, batch_size=batch_size, repeats=repeats, autocast=False,
                                          graphed=device.type == "cuda")
    return {"decode_batch_size": batch_size,
            "decode_kv_captured_tokens_per_s": captured["decode_kv_cache_tokens_per_s"],
            "decode_kv_eager_tokens_per_s": eager["decode_kv_cache_tokens_per_s"],
            "decode_recompute_tokens_per_s": eager["decode_recompute_tokens_per_s"],
            "decode_kv_captured_vs_recompute": captured["decode_speedup"],
            "decode_kv_eager_vs_recompute": eager["decode_speedup"],
            "decode_captured_same_tokens": captured["decode_same_tokens"]}


def eval_default_s(device: str | torch.device, graphed: bool, repeats: int, smoke: bool) -> tuple[float, str]:
    """The default evaluation (test and OOD splits, temperatures, semantic sampling) of the trained
    default model at models/model.pt when there is one, else of an untrained default-size model, on
    `device`, with generation captured in CUDA graphs when `graphed`."""
    device = torch.device(device)
    data = DataConfig()
    splits = generate_splits(data, seed=0)
    theory = theoretical_entropy_table(data, EntropyConfig())
    checkpoint = ROOT / "models" / "model.pt"
    if checkpoint.exists():
        model, which = load_model(checkpoint, device), "trained models/model.pt"
    else:
        model, which = ArithmeticDecoder(ModelConfig()).to(device).eval(), "untrained default-size model"
    model.graphed_generation = graphed
    config = EvalConfig(semantic_problems=10, semantic_samples=2) if smoke else EvalConfig()
    frames = [splits["test"], splits["ood"]]
    if smoke:
        frames = [frame.iloc[:50] for frame in frames]

    def evaluate() -> None:
        for frame in frames:
            evaluate_split(model, frame, theory, config, data.reverse_answer, seed=0)

    return bench_model.median_seconds(evaluate, device, repeats), which  # the warm-up captures every graph


# --- a sweep on one GPU -----------------------------------------------------------------------------------

ONE_RUN = """
import sys, time
sys.path.insert(0, {benchmarks!r})
import torch
import bench_gpu
from language_entropy.params import load_params
start = time.perf_counter()
device = torch.device({device!r})
trainer = bench_gpu.default_trainer(device, load_params(bench_gpu.ROOT / "params.yaml").loss, True, {steps})
trainer.fit(on_eval=lambda row: None, on_checkpoint=lambda state: None, stop_requested=lambda: None)
print(time.perf_counter() - start)
"""


def sweep_wall_s(experiments: int, jobs: int, steps: int, device: str) -> float:
    """Wall seconds for `experiments` default trainings (fit: validation included, start-up included) run as
    separate processes, `jobs` at a time, each with cores // jobs CPU threads."""
    threads = max(1, usable_cores() // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ONE_RUN.format(benchmarks=str(ROOT / "benchmarks"), device=device, steps=steps)
    start = time.perf_counter()
    waiting, running = list(range(experiments)), []
    while waiting or running:
        while waiting and len(running) < jobs:
            waiting.pop()
            running.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL))
        running[0].wait()
        if running[0].returncode:
            raise RuntimeError(f"a sweep training failed with exit code {running[0].returncode}")
        running.pop(0)
    return time.perf_counter() - start


def sweep_figures(experiments: int, steps: int, device: str, job_counts: tuple[int, ...]) -> dict[str, float]:
    figures: dict[str, float] = {"sweep_experiments": experiments, "sweep_train_steps": steps}
    for jobs in job_counts:
        figures[f"sweep_{jobs}_at_a_time_s"] = sweep_wall_s(experiments, jobs, steps, device)
    for jobs in job_counts[1:]:
        figures[f"sweep_{jobs}_at_a_time_speedup"] = figures[f"sweep_{job_counts[0]}_at_a_time_s"] / figures[
            f"sweep_{jobs}_at_a_time_s"]
    return figures


# --- many seeds as one batched model -------------------------------------------------------------------------


def batched_seeds_figures(device: torch.device, runs: int, steps: int | None = None,
                          smoke: bool = False) -> dict[str, object]:
    """Wall seconds of one default training (params.yaml, seed 0: `Trainer` built and fit, validation included;
    its data drawn before the clock) and of `runs` of them, seeds 0..runs-1, as one batched model
    (`batched.BatchedTrainer`), on `device`, after a 2-step warm-up of both; `steps` replaces train.steps;
    smoke: small data splits."""
    params = load_params(ROOT / "params.yaml")
    config = params.train if steps is None else dataclasses.replace(params.train, steps=steps)
    data = params.data
    if smoke:
        data = dataclasses.replace(data, train_size=2000, val_size=50, test_size=50, ood_size=50)
    splits = [generate_splits(data, seed) for seed in range(runs)]

    def trainer(seed: int, train=config) -> Trainer:
        return Trainer(params.model, params.loss, train, seed, splits[seed]["train"]["text"].tolist(),
                       splits[seed]["val"]["text"].tolist(), device)

    def no_eval(*args) -> None:
        return None

    def one_run(train=config) -> None:
        trainer(0, train).fit(on_eval=no_eval, on_checkpoint=no_eval, stop_requested=no_eval)

    def batched(train=config, count=runs) -> None:
        BatchedTrainer([trainer(seed, train) for seed in range(count)]).fit(on_eval=no_eval)

    warm_up = dataclasses.replace(config, steps=2)  # cuBLAS, the allocator, both paths' code (2 runs: quick)
    one_run(warm_up)
    batched(warm_up, count=min(2, runs))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    one_s = bench_model.median_seconds(one_run, device, repeats=1, warmup=0)
    batched_s = bench_model.median_seconds(batched, device, repeats=1, warmup=0)
    figures = {"batched_runs": runs, "batched_train_steps": config.steps, "batched_one_run_s": one_s,
               "batched_runs_s": batched_s, "batched_runs_vs_one": batched_s / one_s}
    if device.type == "cuda":
        figures["batched_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return figures


REPRO_STAGES = ("generate-data", "compute-theoretical-entropy", "train", "finetune", "evaluate", "visualize")


def default_repro_s(smoke: bool) -> dict[str, float]:
    """Wall seconds of the default pipeline (the shipped params.yaml; smoke: the tests' tiny params) in a
    fresh scratch repository on this machine, reproduced one stage at a time (`dvc repro <stage>` in
    order; DVC and MLflow must be importable): each stage's and their sum."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if smoke:
        params = TINY_PARAMS
    figures = {}
    with tempfile.TemporaryDirectory(prefix="gpu-repro-") as tmp:
        repo = make_project(Path(tmp) / "project", params)
        for stage in REPRO_STAGES:
            start = time.perf_counter()
            run([sys.executable, "-m", "dvc", "repro", "--quiet", stage], repo, timeout=1800)
            figures[f"default_repro_{stage.replace('-', '_')}_s"] = time.perf_counter() - start
    return {"default_repro_s": sum(figures.values()), **figures}


def run_all(device: str, smoke: bool, skip_sweep: bool, skip_repro: bool,
            progress=lambda figures: None) -> dict[str, object]:
    """Every figure above; `progress(figures)` after each part, so a part that fails keeps the others.
    The sweep and the repro run other programs: their failure is recorded as `<part>_error`, not raised."""
    device_ = torch.device(device)
    figures: dict[str, object] = {
        "device": torch.cuda.get_device_name(device_) if device_.type == "cuda" else "cpu",
        "torch_version": torch.__version__, "cpu_cores": os.cpu_count(), "smoke": smoke}
    figures.update(training_figures(device_, block=3 if smoke else 50, repeats=1 if smoke else 5))
    progress(figures)
    figures.update(decode_figures(device_, batch_size=16 if smoke else 512, repeats=1 if smoke else 5))
    for mode, graphed in (("eager", False), ("captured", True)):
        figures[f"eval_default_{mode}_s"], figures["eval_default_model"] = eval_default_s(device_, graphed, 1, smoke)
    progress(figures)
    parts = {"sweep": None if skip_sweep else lambda: sweep_figures(2 if smoke else 8, 5 if smoke else 1500, device,
                                                                    (1, 2) if smoke else (1, 4, 8)),
             "batched": lambda: batched_seeds_figures(device_, 2 if smoke else 64, 5 if smoke else None, smoke),
             "default_repro": None if skip_repro else lambda: default_repro_s(smoke)}
    for name, part in parts.items():
        if part is None:
            continue
        try:
            figures.update(part())
        except (AssertionError, OSError, RuntimeError, subprocess.TimeoutExpired) as error:
            figures[f"{name}_error"] = str(error)[-2000:]
        progress(figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny workloads: the code paths, not the speed")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-repro", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run_all(args.device, args.smoke, args.skip_sweep, args.skip_repro), indent=2))


if __name__ == "__main__":
    main()

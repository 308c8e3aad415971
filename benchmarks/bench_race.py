"""The 3-digit-addition race: this project's time to 99% per seed, from a committed params file, against minGPT's adder.

    python benchmarks/bench_race.py [--mingpt DIR] [--seeds 0 1 2] [--smoke]

The project runs from `benchmarks/add3.yaml`: the shipped params.yaml with only the race's differences
(3-digit addition data, and `model.abacus_offset_equals: true`, which the shipped defaults leave off to keep
length generalisation; tests/test_benchmarks.py checks that nothing else differs). Each seed sets `seed` as a
pipeline run would: its data split and its training. The clock runs from the first step, through training
and validation (greedy exact match on the validation split every `eval_every` steps), to >= 99%, within the
file's `train.steps`. minGPT's adder (a checkout of karpathy/minGPT outside this repository) runs unchanged,
once, right after the project's seeds in the same process (benchmarks/bench_mingpt.py, scored the same way);
each seed's ratio is its time over minGPT's (goal: at most 0.5 in every seed).

`--smoke` runs 4 steps per seed (and 4 minGPT iterations): it checks the code path, not the speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_mingpt  # noqa: E402

from language_entropy.data import generate_splits  # noqa: E402
from language_entropy.measure import greedy_exact_match  # noqa: E402
from language_entropy.params import load_params  # noqa: E402
from language_entropy.training import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RACE_PARAMS = Path("benchmarks") / "add3.yaml"
SEEDS = (0, 1, 2)
RACE = ("3-digit addition to 99% validation exact match: this project trained from benchmarks/add3.yaml (the "
        "shipped params.yaml with 3-digit addition data and model.abacus_offset_equals: true), one run per seed; "
        "minGPT's adder unchanged, in the same run")


def time_to_99(seed: int, max_steps: int | None, eval_every: int) -> dict[str, float | int | None]:
    """One seed of the race: wall seconds (training and validation) to >= 99% validation exact match (None if the
    file's train.steps, or `max_steps`, run out first), the steps taken and the last validation exact match."""
    params = dataclasses.replace(load_params(ROOT / RACE_PARAMS), seed=seed)
    splits = generate_splits(params.data, seed=params.seed)
    config = params.train if max_steps is None else dataclasses.replace(params.train, steps=max_steps)
    val_texts = splits["val"]["text"].tolist()
    trainer = Trainer(params.model, params.loss, config, seed=params.seed, train_texts=splits["train"]["text"].tolist(),
                      val_texts=val_texts, device=torch.device("cpu"))
    start = time.perf_counter()
    exact = 0.0
    while trainer.step < config.steps:
        trainer.train_step()
        if trainer.step % eval_every == 0:
            exact = greedy_exact_match(trainer.model, val_texts)
            if exact >= 0.99:
                break
    return {"s": time.perf_counter() - start if exact >= 0.99 else None, "steps": trainer.step,
            "final_val_exact_match": exact}


def race(seeds: tuple[int, ...] = SEEDS, mingpt: Path | None = None, smoke: bool = False) -> dict[str, object]:
    """The race's figures: per seed (keyed by the seed) this project's time, steps and last exact match, then,
    with a minGPT checkout, minGPT's figures and each seed's time as a multiple of minGPT's."""
    max_steps, eval_every = (4, 2) if smoke else (None, 50)
    figures: dict[str, object] = {"race": RACE, "race_params": str(RACE_PARAMS), "race_seeds": list(seeds)}
    per_seed = {str(seed): time_to_99(seed, max_steps, eval_every) for seed in seeds}
    for name in ("s", "steps", "final_val_exact_match"):
        figures[f"time_to_99_add3_{name}"] = {seed: result[name] for seed, result in per_seed.items()}
    if mingpt is not None:
        figures.update(bench_mingpt.time_to_99(mingpt, eval_every=eval_every, max_iters=4 if smoke else 30_000))
        theirs = figures["mingpt_add3_time_to_99_s"]
        ratios = {seed: result["s"] / theirs if result["s"] and theirs else None for seed, result in per_seed.items()}
        figures["time_to_99_add3_vs_mingpt"] = ratios  # None: a side did not reach 99%
        figures["time_to_99_add3_vs_mingpt_worst"] = None if None in ratios.values() else max(ratios.values())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mingpt", type=Path, help="a karpathy/minGPT checkout: race its adder against ours")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--smoke", action="store_true", help="4 steps a seed: check the code path, not the speed")
    args = parser.parse_args()
    if args.mingpt is not None and not (args.mingpt / "mingpt" / "model.py").is_file():
        sys.exit(f"error: --mingpt {args.mingpt} is not a checkout of karpathy/minGPT (no mingpt/model.py)")
    figures = {"torch_threads": torch.get_num_threads(), **race(tuple(args.seeds), args.mingpt, args.smoke)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

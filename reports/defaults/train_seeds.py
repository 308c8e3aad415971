"""Train the default train stage's model for several seeds in one process and score each: the seed table of
reports/defaults (the supervised recipes).

Each seed runs what `dvc repro train` runs for it (the same data splits, `Trainer`, params and thread count),
then scores the trained model greedily on its test and OOD splits. Validation every `--eval-every` steps
gives the time-to-learn readings. One row per seed is appended to `--out` as soon as the seed ends, so an
interrupted sweep keeps what it finished and a rerun skips the seeds already in the file.

    python reports/defaults/train_seeds.py --config old --seeds 0-23 --out reports/defaults/supervised.csv \
        --set train.lr=0.003
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's package

from language_entropy.threads import apply_threads  # noqa: E402


def parse_seeds(text: str) -> list[int]:
    """'0-23' or '0,5,9' -> the seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the configuration's name in the table")
    parser.add_argument("--seeds", required=True, type=parse_seeds)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override, as `dvc exp run -S`")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--save-models", type=Path, help="write each trained model to DIR/CONFIG-seedN.pt")
    args = parser.parse_args()
    apply_threads(args.threads)

    import pandas as pd
    import torch

    from language_entropy.pipeline.seed_table import score_trained_seed

    done = set()
    if args.out.exists():
        table = pd.read_csv(args.out)
        done = set(table.loc[table["config"] == args.config, "seed"].astype(int))
    for seed in args.seeds:
        if seed in done:
            continue
        start = time.perf_counter()
        row = score_trained_seed(args.params, seed, [*args.set, f"train.eval_every={args.eval_every}"],
                                 torch.device("cpu"),
                                 args.save_models / f"{args.config}-seed{seed}.pt" if args.save_models else None)
        row = {"config": args.config, "seed": seed, **row, "wall_s": time.perf_counter() - start}
        frame = pd.DataFrame([row])
        frame.to_csv(args.out, mode="a", header=not args.out.exists(), index=False)
        print(f"{args.config} seed {seed}: test {row['test_exact_match']:.3f} ood {row['ood_exact_match']:.3f} "
              f"steps_to_90 {row['steps_to_90']} ({row['wall_s']:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

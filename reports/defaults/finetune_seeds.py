"""Fine-tune trained models with the finetune stage's `FineTuner` in one process and score each before and after:
the RL table of reports/defaults.

Each row is one (trained model, rl.seed): the model at `--model` (trained with `--seed`, whose data splits it
uses), fine-tuned with the params and `--set` overrides, scored greedily on test (1-3 digits), the RL validation
problems and OOD, overall and per operation, before and after. Rows are appended to `--out` as they end.

    python reports/defaults/finetune_seeds.py --config default --model models/model.pt --seed 0 --rl-seeds 0-2 \
        --out reports/defaults/rl.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's package

from language_entropy.threads import apply_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the configuration's name in the table")
    parser.add_argument("--model", required=True, type=Path, help="the trained model's checkpoint")
    parser.add_argument("--seed", required=True, type=int, help="the seed the model was trained with")
    parser.add_argument("--rl-seeds", required=True, help="rl.seed values, e.g. 0-2")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override, as `dvc exp run -S`")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    apply_threads(args.threads)

    import pandas as pd
    import torch

    from language_entropy.pipeline.seed_table import score_finetuned_seed

    lo, _, hi = args.rl_seeds.partition("-")
    for rl_seed in range(int(lo), int(hi or lo) + 1):
        start = time.perf_counter()
        row = score_finetuned_seed(args.params, args.model, args.seed, [*args.set, f"rl.seed={rl_seed}"],
                                   torch.device("cpu"))
        row = {"config": args.config, "seed": args.seed, "rl_seed": rl_seed, **row,
               "wall_s": time.perf_counter() - start}
        pd.DataFrame([row]).to_csv(args.out, mode="a", header=not args.out.exists(), index=False)
        print(f"{args.config} seed {args.seed} rl {rl_seed}: test {row['before_test_exact_match']:.3f} -> "
              f"{row['after_test_exact_match']:.3f}, 4x4 {row['before_rl_val_exact_match']:.3f} -> "
              f"{row['after_rl_val_exact_match']:.3f} ({row['wall_s']:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

"""The defaults study's report from its rows: supervised.csv, rl.csv and levers.csv, then summary.csv, summary.md
and time_to_90.png (language_entropy/recipe_report.py).

    python reports/defaults/summarise.py --rows reports/defaults/rows --study reports/defaults

Each row file is one seed (or one trained model's RL seeds) as run.sh wrote it; files of the same kind are
concatenated in (config, seed) order, so the tables do not depend on the order the jobs ended in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's package

import pandas as pd  # noqa: E402

from language_entropy.recipe_report import write_defaults_report  # noqa: E402

BASELINE, BUDGET = "old", 1500  # the recipe every other is compared with, and the training budget (train.steps)
KINDS = {"supervised.csv": "supervised-*.csv", "rl.csv": "rl-*.csv", "levers.csv": "L-*.csv"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, help="the folder of row files run.sh wrote (omit: use the tables)")
    parser.add_argument("--study", type=Path, default=Path("reports/defaults"))
    args = parser.parse_args()
    if args.rows is not None:
        for table, pattern in KINDS.items():
            files = sorted(args.rows.glob(pattern))
            if files:
                frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
                keys = [k for k in ("config", "seed", "rl_seed") if k in frame]
                frame.sort_values(keys, kind="stable").to_csv(args.study / table, index=False)
    paths = write_defaults_report(args.study, BASELINE, BUDGET)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()

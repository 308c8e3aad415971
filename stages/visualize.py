"""visualize stage: trajectories, digit geometry, entropy dynamics, training and calibration figures.

Reads the viz, data, train (device), mlflow and paths sections.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from language_entropy.cli import run_stage, stage_parser
from language_entropy.params import load_params
from language_entropy.pipeline.visualize import run_visualization


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", type=Path, help="checkpoint to draw (default: paths.model), with its own model "
                                                  "config where that differs from params")
    args = parser.parse_args()
    params = load_params(args.params)
    for figure in run_visualization(params, args.base):
        print(f"wrote {figure}")


if __name__ == "__main__":
    run_stage(main)

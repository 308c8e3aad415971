"""visualize stage: trajectories, digit geometry, entropy dynamics, training, calibration and RL figures.

Reads the viz, data, train (device, threads), mlflow and paths sections.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.pipeline.cli import run_stage, stage_params, stage_parser


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", type=Path, help="checkpoint to draw (default: paths.finetuned), with its own "
                                                  "model config where that differs from params")
    args = parser.parse_args()
    params = stage_params(args)
    from language_entropy.pipeline.visualize import run_visualization  # after the thread count is fixed

    run_visualization(params, args.base)  # prints the figures it wrote, then the headline


if __name__ == "__main__":
    run_stage(main)

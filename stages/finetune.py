"""finetune stage: policy-gradient fine-tuning of the trained model with a verifiable reward (docs/rl.md).

Reads the rl, data (reverse_answer), train (device, cuda_graphs, threads), mlflow and paths sections.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.pipeline.cli import run_stage, stage_params, stage_parser


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--wait", action="store_true",
                        help="wait for another training or fine-tuning in this checkout to end (default: refuse)")
    args = parser.parse_args()
    params = stage_params(args)  # before torch and MLflow load: a params mistake is told at once
    from language_entropy.pipeline.finetune import run_finetune  # after the thread count is fixed

    print(f"fine-tuned model written to {run_finetune(params, wait=args.wait)}")


if __name__ == "__main__":
    run_stage(main)

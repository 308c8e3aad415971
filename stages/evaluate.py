"""evaluate stage: accuracy, entropy against theory, calibration, temperature and semantic entropy of the
fine-tuned model, and OOD exact match per operand length before and after RL.

Reads the data, eval, train (device, threads), seed, mlflow and paths sections.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.pipeline.cli import run_stage, stage_params, stage_parser


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", type=Path, help="checkpoint to evaluate (default: paths.finetuned), with its own "
                                                  "model config where that differs from params")
    parser.add_argument("--samples", type=int, help="problems per split (default: eval.samples, else all)")
    parser.epilog = ("With --samples, --base or --verbose the run is ad hoc: its files go to reports/adhoc/<time>/ "
                     "and its numbers to a separate MLflow run tagged adhoc; metrics/ and the pipeline's run are "
                     "untouched.")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("--verbose", action="store_true", help="print the first generations step by step")
    loudness.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = parser.parse_args()
    params = stage_params(args)
    from language_entropy.pipeline.evaluate import run_evaluation  # after the thread count is fixed

    adhoc = args.samples is not None or args.base is not None or args.verbose  # never the pipeline's outputs
    run_evaluation(params, args.base or Path(params.paths.finetuned), args.samples,
                   verbosity=1 if args.verbose else -1 if args.quiet else 0, adhoc=adhoc, as_is=args.base is not None)


if __name__ == "__main__":
    run_stage(main)

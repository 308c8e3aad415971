"""train stage: train the ArithmeticDecoder (seed, model, loss, train, mlflow and paths sections).

With `train.nproc_per_node` > 1 the script relaunches itself through torchrun (DDP).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.pipeline.cli import run_stage, stage_params, stage_parser


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", type=Path, help="checkpoint to continue training from")
    parser.add_argument("--wait", action="store_true",
                        help="wait for another training in this checkout to end (default: refuse at once)")
    args = parser.parse_args()
    params = stage_params(args)  # before torch and MLflow load: a params mistake is told at once
    from language_entropy.pipeline.guards import check_train_lock  # after the thread count is fixed
    from language_entropy.pipeline.train import preflight, run_training

    if params.train.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        preflight(params, args.base)  # user mistakes as one line here, not as torchrun's worker traceback
        check_train_lock(Path(params.paths.resume), args.wait)
        # exec, not a child: torchrun takes over this process, so signals sent to the stage reach it
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={params.train.nproc_per_node}", __file__, *sys.argv[1:]])
    model_path = run_training(params, base=args.base, wait=args.wait)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model written to {model_path}")


if __name__ == "__main__":
    run_stage(main)

"""generate-data stage: draw the train, val, test and OOD problems, and the RL prompts and RL validation problems
(data.seed, else seed; data; rl.digits, rl.prompt_size, rl.val_size; train.threads)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.errors import UserError
from language_entropy.pipeline.cli import run_stage, stage_params, stage_parser


def main() -> None:
    params = stage_params(stage_parser(__doc__).parse_args())
    from language_entropy.data import RL_SPLITS, SPLITS, DataSpaceError, generate_splits, split_path, write_splits
    from language_entropy.pipeline.outputs import check_outputs, output_set  # after the thread count is fixed

    files = [split_path(params.paths.data, name) for name in (*SPLITS, *RL_SPLITS)]
    check_outputs(files=[("paths.data", path) for path in files], dirs=[("paths.data", Path(params.paths.data))])
    try:
        splits = generate_splits(params.data, params.data_seed, params.rl)
    except DataSpaceError as error:
        raise UserError(f"data: {error}") from None
    with output_set(files) as staged:  # the six splits replace the previous six together
        write_splits(splits, staged(files[0]).parent)
    print(", ".join(f"{name}: {len(frame)}" for name, frame in splits.items()), f"problems in {params.paths.data}/")


if __name__ == "__main__":
    run_stage(main)

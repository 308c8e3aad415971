"""generate-data stage: draw the train, val, test and OOD arithmetic problems (data section)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from language_entropy.cli import run_stage, stage_parser
from language_entropy.data import DataSpaceError, generate_splits, write_splits
from language_entropy.errors import UserError
from language_entropy.params import load_params


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params)
    try:
        splits = generate_splits(params.data, params.seed)
    except DataSpaceError as error:
        raise UserError(f"data: {error}") from None
    write_splits(splits, params.paths.data)
    print(", ".join(f"{name}: {len(frame)}" for name, frame in splits.items()), f"problems in {params.paths.data}/")


if __name__ == "__main__":
    run_stage(main)

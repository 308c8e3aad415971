"""Many seeds of one configuration in one process: the runs trained as one batched model (docs/batched-seeds.md).

    python benchmarks/batched_seeds.py --out DIR --seeds 0 1 2 3 [--entropy-weights 0 -0.1] [--params params.yaml]

One run per seed (and per entropy weight, when given): its folder DIR/seed=S[,loss.entropy_weight=W]/ gets a
params.yaml (the given params with that seed and weight, and paths inside the folder), the run's data (drawn
as the generate-data stage draws it) and, after the batched training, its model, train_curve.csv and MLflow
run, as `dvc repro train` with that params file writes them. Measure a run as any other:

    python stages/compute_theoretical_entropy.py --params DIR/<run>/params.yaml
    python stages/evaluate.py --params DIR/<run>/params.yaml

Worth it on a GPU (many small trainings fill it); on a CPU the step is compute-bound and batching gains nothing.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from language_entropy.errors import UserError  # noqa: E402
from language_entropy.pipeline.cli import run_stage, stage_params, stage_parser  # noqa: E402

if TYPE_CHECKING:
    from language_entropy.params import Params

# a run's files inside its folder, as params.yaml's paths lay them out in the repository
RUN_PATHS = {"data": "data", "model": "models/model.pt", "resume": "checkpoints", "metrics": "metrics",
             "plots": "plots"}


def prepare_run(params_file: Path, out: Path, seed: int, entropy_weight: float | None = None) -> Params:
    """One run's folder: its params.yaml (`params_file` with this seed, and entropy weight, and paths in the folder)
    and its data, drawn and written as the generate-data stage does; returns its params."""
    from language_entropy.data import DataSpaceError, generate_splits, split_path, write_splits
    from language_entropy.params import load_params
    from language_entropy.pipeline.outputs import output_set

    folder = out / (f"seed={seed}" + ("" if entropy_weight is None else f",loss.entropy_weight={entropy_weight}"))
    raw = yaml.safe_load(params_file.read_text())
    raw["seed"] = seed
    if entropy_weight is not None:
        raw["loss"]["entropy_weight"] = entropy_weight
    raw["paths"] = {name: f"{folder}/{path}" for name, path in RUN_PATHS.items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(folder / "params.yaml")
    try:
        splits = generate_splits(params.data, params.seed)
    except DataSpaceError as error:
        raise UserError(f"data: {error}") from None
    files = [split_path(params.paths.data, name) for name in splits]
    with output_set(files) as staged:  # the four splits replace the previous four together
        write_splits(splits, staged(files[0]).parent)
    return params


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder of the run folders")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--entropy-weights", type=float, nargs="+",
                        help="loss.entropy_weight values, each with every seed (default: the params file's)")
    args = parser.parse_args()
    stage_params(args)  # a params mistake in one line, and the thread count fixed, before numpy and torch load
    from language_entropy.pipeline.batched import run_batched_training

    runs = [prepare_run(Path(args.params), args.out, seed, weight)
            for seed, weight in itertools.product(args.seeds, args.entropy_weights or [None])]
    for path in run_batched_training(runs):
        print(f"model written to {path}")


if __name__ == "__main__":
    run_stage(main)

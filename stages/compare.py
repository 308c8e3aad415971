"""Ablation report across the runs of one study (not a DVC stage: it spans experiments).

Reads the finished runs of the MLflow experiment (default: params.yaml's mlflow.experiment) from
the store that training logs to (MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db at the
repository root). A study is the runs tagged `study` = --study (default: the experiment's name)
when any run carries a `study` tag, else every finished run. Writes reports/<study>/summary.csv,
summary.md and one figure per swept param: per training configuration (every data, model, loss
and train param but the seed), each metric's mean, sd and 95% interval over seeds and its
difference from the all-default-loss baseline. See language_entropy/report.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.params import load_params
from language_entropy.pipeline.cli import run_stage, stage_parser
from language_entropy.pipeline.runs import load_runs
from language_entropy.pipeline.tracking import project_root, tracking_uri
from language_entropy.report import write_report


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--experiment", default=None,
                        help="MLflow experiment name (default: params.yaml's mlflow.experiment)")
    parser.add_argument("--study", default=None, help="study name: the runs' `study` tag and the report's folder "
                                                      "(default: the experiment name)")
    parser.add_argument("--out-dir", default="reports", help="the report goes to OUT_DIR/<study>/ (default: reports)")
    args = parser.parse_args()
    params = load_params(args.params)
    experiment = args.experiment or params.mlflow.experiment
    study = args.study or experiment
    runs = load_runs(experiment, tracking_uri(project_root()), study=study)
    paths = write_report(runs, Path(args.out_dir) / study, dpi=params.viz.dpi, title=study)
    print(f"{len(runs)} runs of {experiment!r} (study {study!r}) -> " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    run_stage(main)

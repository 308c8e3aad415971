"""Ablation report across the runs of one MLflow experiment (not a DVC stage: it spans experiments).

Reads the finished runs of the experiment (default: params.yaml's mlflow.experiment) from the
store that training logs to (MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db at the
repository root) and writes ablation.csv, ablation.md and ablation.png: each metric's mean and
standard deviation over seeds against loss.entropy_weight and loss.continuity_weight.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from language_entropy.cli import run_stage, stage_parser
from language_entropy.params import load_params
from language_entropy.report import load_runs, write_report
from language_entropy.tracking import project_root, tracking_uri


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--experiment", default=None,
                        help="MLflow experiment name (default: params.yaml's mlflow.experiment)")
    parser.add_argument("--out-dir", default="reports", help="where the report goes (default: reports/)")
    args = parser.parse_args()
    params = load_params(args.params)
    experiment = args.experiment or params.mlflow.experiment
    runs = load_runs(experiment, tracking_uri(project_root()))
    paths = write_report(runs, args.out_dir, dpi=params.viz.dpi, experiment=experiment)
    print(f"{len(runs)} runs of {experiment!r} -> " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    run_stage(main)

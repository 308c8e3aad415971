"""Ablation report across the runs of one study (not a DVC stage: it spans experiments).

Reads the finished runs of the MLflow experiment (default: params.yaml's mlflow.experiment) from
the store that training logs to (MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db at the
repository root). A study is the runs tagged `study` = --study (default: the experiment's name)
when any run carries a `study` tag, else every finished run. Writes reports/<study>/summary.csv,
summary.md and one figure per swept param: per training configuration (every data, model, loss
and train param but the seed), each metric's mean, sd and 95% interval over seeds and its
difference from the all-default-loss baseline (paired over shared seeds, else Welch), corrected for
multiplicity (Benjamini-Hochberg and Holm), trends for numeric params and the seeds a difference of
--resolve needs. An RL study (its runs are finetune runs) compares RL configurations over (seed, rl.seed)
units against plain RL, with each run's entropy-accuracy fit and its curves (curves.csv, rl_fits.png,
rl_curves.png); --baseline rl.clip_high=0.2 sets what plain means. --rebuild rewrites reports/<study>/ from
its own summary.csv (and seeds.csv, curves.csv) without the MLflow store. See language_entropy/report.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, also in a queued copy

from language_entropy.errors import UserError
from language_entropy.params import load_params
from language_entropy.pipeline.cli import run_stage, stage_parser
from language_entropy.pipeline.runs import load_curves, load_runs
from language_entropy.pipeline.tracking import project_root, tracking_uri
from language_entropy.report import RESOLVE, baseline_overrides, is_rl_study, rebuild_report, write_report


def main() -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--experiment", default=None,
                        help="MLflow experiment name (default: params.yaml's mlflow.experiment)")
    parser.add_argument("--study", default=None, help="study name: the runs' `study` tag and the report's folder "
                                                      "(default: the experiment name)")
    parser.add_argument("--out-dir", default="reports", help="the report goes to OUT_DIR/<study>/ (default: reports)")
    parser.add_argument("--resolve", type=float, default=RESOLVE,
                        help=f"the difference the power section sizes seeds for, in each metric's units "
                             f"(default: {RESOLVE})")
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                        help="a loss or RL entropy-control param's value in the baseline configuration instead of "
                             "its default (repeatable; e.g. rl.clip_high=0.2 for plain RL without clip-higher)")
    parser.add_argument("--rebuild", action="store_true",
                        help="rewrite OUT_DIR/<study>/ from its summary.csv (and seeds.csv), without MLflow")
    args = parser.parse_args()
    if not args.resolve > 0:
        raise UserError(f"--resolve must be > 0 (got {args.resolve})")
    overrides = baseline_overrides(args.baseline)
    params = load_params(args.params)
    experiment = args.experiment or params.mlflow.experiment
    study = args.study or experiment
    if args.rebuild:
        paths = rebuild_report(Path(args.out_dir) / study, dpi=params.viz.dpi, title=study, resolve=args.resolve,
                               baseline_overrides=overrides)
        print(f"rebuilt {Path(args.out_dir) / study} -> " + ", ".join(str(p) for p in paths.values()))
        return
    runs = load_runs(experiment, tracking_uri(project_root()), study=study)
    curves = load_curves(runs) if is_rl_study(runs) else None
    paths = write_report(runs, Path(args.out_dir) / study, dpi=params.viz.dpi, title=study, resolve=args.resolve,
                         baseline_overrides=overrides, curves=curves)
    print(f"{len(runs)} runs of {experiment!r} (study {study!r}) -> " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    run_stage(main)

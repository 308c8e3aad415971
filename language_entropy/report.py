"""The ablation report: finished MLflow runs of one experiment, summarised over seeds.

`load_runs` reads the runs (MLflow's `search_runs`: one row per run, params as strings under
``params.<dotted params.yaml key>``, metrics under ``metrics.<name>``). `summarise` groups them
by one or more params and gives, for each metric, the mean, the sample standard deviation
(ddof=1; NaN for a single run) and the number of runs that logged it. `write_report` writes
the table as CSV and markdown and draws each metric against each swept loss weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote

import mlflow
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from language_entropy.errors import UserError
from language_entropy.params import Params

METRICS = ("test.exact_match", "test_ood.exact_match", "test.mean_entropy_bits", "test.auroc.semantic_entropy")
METRIC_LABELS = {
    "test.exact_match": "test exact match (fraction)",
    "test_ood.exact_match": "OOD exact match (fraction)",
    "test.mean_entropy_bits": "test mean entropy (bits/token)",
    "test.auroc.semantic_entropy": "AUROC, semantic entropy\nflags errors",
}
SWEEP_PARAMS = ("loss.entropy_weight", "loss.continuity_weight")
STATS = ("mean", "std", "count")


def _check_sqlite_store(uri: str) -> None:
    """A sqlite store that does not exist yet would be created empty: say so instead."""
    if uri.startswith("sqlite:///"):
        path = Path(unquote(uri[len("sqlite:///"):].split("?")[0]))
        if not path.is_file():
            raise UserError(f"no MLflow store at {path} (run the pipeline first, or set MLFLOW_TRACKING_URI)")


def load_runs(experiment_name: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """The finished runs of `experiment_name`, as `mlflow.search_runs` returns them.

    tracking_uri: when given, set as MLflow's tracking URI (process-wide, like
    `mlflow.set_tracking_uri`); else MLflow's current one. A missing store, a missing or
    deleted experiment, or one without finished runs raises `UserError`.
    """
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    _check_sqlite_store(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = sorted(e.name for e in mlflow.search_experiments())
        raise UserError(f"MLflow experiment {experiment_name!r} not found in {uri} "
                        f"(experiments there: {', '.join(known) or 'none'})")
    runs = mlflow.search_runs(experiment_names=[experiment_name], filter_string="attributes.status = 'FINISHED'")
    if runs.empty:
        raise UserError(f"MLflow experiment {experiment_name!r} in {uri} has no finished runs")
    return runs


def _param(name: str) -> str:
    """A param's dotted params.yaml name, with or without search_runs' ``params.`` prefix."""
    return name.removeprefix("params.")


def _numeric_params(runs: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The params `names` of every run as floats (MLflow stores params as strings)."""
    columns = {}
    for name in names:
        column = f"params.{name}"
        if column not in runs.columns:
            raise UserError(f"the runs have no param {name!r}")
        try:
            columns[name] = pd.to_numeric(runs[column]).astype(float)
        except (ValueError, TypeError):
            raise UserError(f"param {name!r} is not numeric in every run "
                            f"(values: {sorted(set(map(str, runs[column])))})") from None
    return pd.DataFrame(columns, index=runs.index)


def summarise(runs: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per value of the param(s) `by` (dotted names, e.g. ``loss.entropy_weight``): the number
    of runs, their seeds, and ``<metric>.mean``, ``<metric>.std`` (sample, ddof=1: NaN for one
    run) and ``<metric>.count`` (runs that logged it) of each metric. A metric no run logged is
    NaN with count 0. Params are floats, rows sorted by them; runs lacking a `by` param form a NaN group.
    """
    by = [_param(by)] if isinstance(by, str) else [_param(b) for b in by]
    frame = _numeric_params(runs, by)
    for metric in metrics:
        column = f"metrics.{metric}"
        frame[metric] = runs[column].astype(float) if column in runs.columns else np.nan
    if "params.seed" in runs.columns:
        frame["seed"] = runs["params.seed"].astype(str)
    groups = frame.groupby(by, sort=True, dropna=False)
    stats = groups[list(metrics)].agg(list(STATS))
    stats.columns = [f"{metric}.{stat}" for metric, stat in stats.columns]
    summary = pd.DataFrame({"runs": groups.size()})
    if "seed" in frame.columns:
        summary["seeds"] = groups["seed"].agg(lambda s: ",".join(sorted(set(s), key=_seed_order)))
    return summary.join(stats).reset_index()


def _seed_order(seed: str) -> tuple[float, str]:
    try:
        return float(seed), seed
    except ValueError:
        return math.inf, seed


def baseline_value(runs: pd.DataFrame, param: str) -> float:
    """The value at which `param` is held while another param is swept: its params.yaml default
    when some run used it, else its most common value among the runs (NaN when none logged it)."""
    values = _numeric_params(runs, [param])[param].dropna()
    default = Params().flat().get(param)
    if isinstance(default, int | float) and (values == default).any():
        return float(default)
    return float(values.mode().iloc[0]) if len(values) else math.nan


def _format_stat(mean: float, std: float, count: int) -> str:
    if count == 0 or not np.isfinite(mean):
        return "–"
    text = f"{mean:.4g}"
    if np.isfinite(std):
        text += f" ± {std:.2g}"
    return f"{text} (n={count})"


def markdown_table(summary: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = METRICS) -> str:
    """The summary as a GitHub markdown table: one column per `by` param, the runs, and
    ``mean ± std (n=count)`` per metric."""
    header = [*by, "runs", *(m for m in metrics)]
    rows = []
    for _, row in summary.iterrows():
        cells = [f"{row[b]:g}" if np.isfinite(row[b]) else "–" for b in by] + [str(int(row["runs"]))]
        cells += [_format_stat(row[f"{m}.mean"], row[f"{m}.std"], int(row[f"{m}.count"])) for m in metrics]
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def plot_ablation(runs: pd.DataFrame, path: str | Path, dpi: int = 110, params: Sequence[str] = SWEEP_PARAMS,
                  metrics: Sequence[str] = METRICS) -> Path:
    """A grid of metric (column) against swept param (row): mean over seeds, with the standard
    deviation as error bars where several seeds ran. Each row holds the other params at their
    `baseline_value`, so a one-at-a-time sweep of each weight reads correctly."""
    fig = Figure(figsize=(4.0 * len(metrics), 3.6 * len(params)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(params), len(metrics), squeeze=False)
    for row, param in enumerate(params):
        held = {other: baseline_value(runs, other) for other in params if other != param}
        numeric = _numeric_params(runs, list(params))
        keep = pd.Series(True, index=runs.index)
        for other, value in held.items():
            keep &= numeric[other] == value
        summary = summarise(runs[keep], param, metrics)
        note = ", ".join(f"{o.split('.')[-1]} = {v:g}" for o, v in held.items())
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            mean, std = summary[f"{metric}.mean"], summary[f"{metric}.std"].fillna(0.0)
            ax.errorbar(summary[param], mean, yerr=std, marker="o", capsize=3, linestyle="-")
            ax.set_xlabel(param + (f"\n({note})" if note else ""))
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.grid(alpha=0.3)
            if not mean.notna().any():
                ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="grey")
    fig.suptitle("Ablation: mean over seeds, error bars = standard deviation")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    fig.clear()
    return path


def write_report(runs: pd.DataFrame, out_dir: str | Path, dpi: int = 110, experiment: str | None = None,
                 params: Sequence[str] = SWEEP_PARAMS, metrics: Sequence[str] = METRICS) -> dict[str, Path]:
    """Write ``ablation.csv`` and ``ablation.md`` (the runs summarised by all swept params
    jointly) and ``ablation.png`` (`plot_ablation`) into `out_dir`; returns their paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs, params, metrics)
    csv = out_dir / "ablation.csv"
    summary.to_csv(csv, index=False)
    markdown = out_dir / "ablation.md"
    title = f"# Ablation report{f': {experiment}' if experiment else ''}\n\n"
    intro = (f"{len(runs)} finished runs. Each cell: mean ± sample standard deviation over seeds "
             "(n = runs that logged the metric).\n\n")
    markdown.write_text(title + intro + markdown_table(summary, [_param(p) for p in params], metrics))
    figure = plot_ablation(runs, out_dir / "ablation.png", dpi, params, metrics)
    return {"csv": csv, "markdown": markdown, "figure": figure}

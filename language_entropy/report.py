"""The ablation report: the finished MLflow runs of one study, summarised over seeds per configuration.

Which runs. The input is a table of finished MLflow runs as `pipeline.runs.load_runs` reads them
(MLflow's `search_runs`: ``run_id``, ``start_time``, params as strings under ``params.<dotted
params.yaml key>``, metrics under ``metrics.<name>``) with a column ``derived_from`` (see below);
that loader also selects the study's runs.

Configurations. A configuration is every training param except ``seed``: the params of the
sections ``data`` (the data a model saw), ``model``, ``loss`` and ``train``, except how a run was
executed (`EXECUTION_PARAMS`: device, processes, compile, CUDA graphs, threads, logging intervals). A param a run lacks
(logged before the param existed) takes its current default from `language_entropy.params`, so
older runs join the configuration they trained under. Values are compared as MLflow stores them,
numbers by value ("0" = "0.0"). Each configuration gets a short digest (`config_key`); the
params whose values differ between the configurations present are the *swept* params and become
readable columns.

Derived runs. When only eval or viz params change, evaluate and visualize log into a new run
derived from the training run (``derived_from``: the training run's id) with every param, so it has
the configuration and seed of its training run. It never counts as a seed: one (configuration, seed) is one *seed
unit*, whose values are those of its training run (the newest, if a seed was trained twice);
a metric the training run lacks is taken from its derived runs (newest first). The training
run's evaluation is preferred because it ran under the study's own eval params, the same for
every seed; a derived run measured the same model under other eval params. A derived run whose
training run is not among the runs stands in for it. The ``runs`` column counts every MLflow run
folded into a configuration.

Statistics, per configuration and metric, over the seed units that logged the metric: n, mean,
sample standard deviation (ddof=1) and the 95% Student t interval mean ± t(0.975, n-1) sd/sqrt(n)
(none for a single seed). The baseline of a configuration is the configuration with the same
data, model and train params and every loss param at its default (`Params().flat()`); the
difference from it has Welch's 95% interval (Welch-Satterthwaite df, rounded down). t quantiles
come from a table (`T_975`), exact to 1e-15 for df 1..30 and interpolated in 1/df above (error
< 1e-4). A metric no run logged is NaN with n = 0.

`write_report` writes ``summary.csv``, ``summary.md`` and one figure per swept param
(``<param>.png``: each metric against that param, 95% intervals as error bars, baseline marked).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from language_entropy.params import OPERATIONS, Params
from language_entropy.plots import new_figure, save_figure

OP = "{op}"  # placeholder in METRICS: one metric per operation present in the runs
METRICS = (
    "test.exact_match",
    "test_ood.exact_match",
    f"test_ood.per_operation.{OP}.exact_match",
    "test.mean_entropy_bits",
    "test_ood.mean_entropy_bits",
    "test.sequence_ece.greedy",
    "test_ood.sequence_ece.greedy",
    "test_ood.auroc.semantic_entropy",
    "test_ood.auroc.token_entropy",
    "test_ood.auroc.sequence_nll",
    "test.continuity_l2",
    "test.continuity_cosine",
    "test.hidden_norm",
)
METRIC_LABELS = {
    "test.exact_match": "test exact match",
    "test_ood.exact_match": "OOD exact match",
    "test.mean_entropy_bits": "test mean entropy (bits/token)",
    "test_ood.mean_entropy_bits": "OOD mean entropy (bits/token)",
    "test.sequence_ece.greedy": "test sequence ECE (greedy)",
    "test_ood.sequence_ece.greedy": "OOD sequence ECE (greedy)",
    "test_ood.auroc.semantic_entropy": "OOD AUROC, semantic entropy",
    "test_ood.auroc.token_entropy": "OOD AUROC, token entropy",
    "test_ood.auroc.sequence_nll": "OOD AUROC, sequence NLL",
    "test.continuity_l2": "test continuity (l2)",
    "test.continuity_cosine": "test continuity (cosine)",
    "test.hidden_norm": "test final hidden-state norm",
}
TRAINING_SECTIONS = ("data", "model", "loss", "train")
# How a run was executed or logged, not what was trained: runs that differ only here are seeds of one configuration.
EXECUTION_PARAMS = ("train.device", "train.nproc_per_node", "train.compile", "train.cuda_graphs", "train.threads",
                    "train.threads_resolved", "train.eval_every", "train.log_every", "train.checkpoint_every")
DERIVED_FROM = "derived_from"  # column of the runs table: the training run a derived run measured, else ""

# Two-sided 95% Student t quantiles t(0.975, df), df = 1..30 (from the regularized incomplete beta
# function at 30 digits); above 30, linear in 1/df through 40, 60, 120 and the normal quantile.
T_975 = (12.706204736174705, 4.302652729749464, 3.182446305283710, 2.776445105197794, 2.570581835636316,
         2.446911851144970, 2.364624251592785, 2.306004135204167, 2.262157162798206, 2.228138851986275,
         2.200985160091640, 2.178812829667229, 2.160368656462793, 2.144786687917804, 2.131449545559776,
         2.119905299221255, 2.109815577833317, 2.100922040241039, 2.093024054408310, 2.085963447265865,
         2.079613844727680, 2.073873067904026, 2.068657610419049, 2.063898561628026, 2.059538552753298,
         2.055529438642873, 2.051830516480286, 2.048407141795245, 2.045229642132704, 2.042272456301238)
T_975_LARGE = ((40, 2.021075390306273), (60, 2.000297822014261), (120, 1.979930405082441))
Z_975 = 1.959963984540054


def t_quantile_975(df: float) -> float:
    """t(0.975, df): the half-width multiplier of a two-sided 95% interval; df >= 1 (NaN below)."""
    if not df >= 1:
        return math.nan
    if df <= len(T_975):
        return T_975[int(df) - 1]  # whole df: fractional Welch df are rounded down by the caller
    points = [(1 / len(T_975), T_975[-1])] + [(1 / d, t) for d, t in T_975_LARGE] + [(0.0, Z_975)]
    x = 1 / df
    for (x0, t0), (x1, t1) in zip(points, points[1:], strict=False):
        if x1 <= x <= x0:
            return t1 + (t0 - t1) * (x - x1) / (x0 - x1)
    return Z_975


def seed_interval(values: Sequence[float]) -> dict[str, float]:
    """n, mean, sample sd and the 95% t interval of the finite `values` (interval NaN for n < 2)."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def welch_interval(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """mean(a) - mean(b) with Welch's 95% interval, from two `seed_interval` results. The
    Welch-Satterthwaite df is rounded down for the t table; no interval unless both have 2+ seeds.
    Both standard errors 0 (identical values): the interval is the difference itself."""
    diff = a["mean"] - b["mean"] if a["n"] and b["n"] else math.nan
    if a["n"] < 2 or b["n"] < 2:
        return {"diff": diff, "diff_low": math.nan, "diff_high": math.nan}
    va, vb = a["sd"] ** 2 / a["n"], b["sd"] ** 2 / b["n"]
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "diff_low": diff, "diff_high": diff}
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    half = t_quantile_975(max(1, math.floor(df + 1e-9))) * se  # 1e-9: a df of 2 computed as 1.9999999 stays 2
    return {"diff": diff, "diff_low": diff - half, "diff_high": diff + half}


# ----------------------------------------------------------------------------- configurations


def _normalise(value: object) -> str:
    """A param value as compared across runs: numbers by value ("0" and "0.0" are one), else the text."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(number) if math.isfinite(number) else text


def _display(value: str) -> float | str:
    """A normalised value for a table or an axis: a float when it is a number, else the text."""
    try:
        return float(value)
    except ValueError:
        return value


def training_params(runs: pd.DataFrame) -> pd.DataFrame:
    """Every training param (data, model, loss, train; not seed, not `EXECUTION_PARAMS`) of every run,
    normalised strings, a param a run lacks filled with its current default. Columns sorted by name."""
    defaults = {k: v for k, v in Params().flat().items() if k.split(".")[0] in TRAINING_SECTIONS}
    names = set(defaults) | {c.removeprefix("params.") for c in runs.columns
                             if c.startswith("params.") and c.split(".")[1] in TRAINING_SECTIONS}
    names -= set(EXECUTION_PARAMS)
    columns = {}
    for name in sorted(names):
        column = runs[f"params.{name}"] if f"params.{name}" in runs.columns else pd.Series(None, index=runs.index)
        default = str(defaults[name]) if name in defaults else "<unset>"
        columns[name] = [_normalise(default if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                         for v in column]
    return pd.DataFrame(columns, index=runs.index)


def config_key(values: dict[str, str]) -> str:
    """A short digest of a configuration's (normalised) training params."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def _baseline_values(values: dict[str, str]) -> dict[str, str]:
    """The same configuration with every loss param at its default."""
    defaults = Params().flat()
    return {k: _normalise(str(defaults[k])) if k.startswith("loss.") and k in defaults else v
            for k, v in values.items()}


def metric_names(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> list[str]:
    """`metrics` with the per-operation placeholder expanded to every operation the runs logged
    (known operations first, in params order)."""
    names = []
    for metric in metrics:
        if OP not in metric:
            names.append(metric)
            continue
        head, tail = metric.split(OP)
        pattern = re.compile(re.escape(f"metrics.{head}") + r"([^.]+)" + re.escape(tail) + "$")
        found = {m.group(1) for c in runs.columns if (m := pattern.match(c))}
        ordered = [op for op in OPERATIONS if op in found] + sorted(found - set(OPERATIONS))
        names += [metric.replace(OP, op) for op in ordered]
    return names


def seed_units(runs: pd.DataFrame, metrics: Sequence[str]) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """One row per (configuration, seed): ``config``, ``seed``, ``runs`` (MLflow runs folded in),
    ``run_id`` (the run whose values are used) and each metric (see the module docstring); and
    each configuration's normalised training params by its digest."""
    params = training_params(runs)
    keys = [config_key(row) for row in params.to_dict("records")]
    seeds = [_normalise(s) for s in (runs["params.seed"].fillna(str(Params().seed)) if "params.seed" in runs.columns
                                     else [Params().seed] * len(runs))]
    derived_of = runs[DERIVED_FROM].fillna("").astype(str) if DERIVED_FROM in runs.columns else \
        pd.Series("", index=runs.index)
    start = runs["start_time"] if "start_time" in runs.columns else pd.Series(0, index=runs.index)
    frame = pd.DataFrame({"config": keys, "seed": seeds, "derived_of": derived_of.to_numpy(),
                          "start": start.to_numpy(), "run_id": runs["run_id"].to_numpy()}, index=runs.index)
    for metric in metrics:
        column = f"metrics.{metric}"
        frame[metric] = runs[column].astype(float) if column in runs.columns else np.nan
    rows = []
    for (config, seed), unit in frame.groupby(["config", "seed"], sort=False):
        unit = unit.sort_values("start", ascending=False)
        trained = unit[unit["derived_of"] == ""]
        primary = trained.iloc[0] if len(trained) else unit.iloc[0]
        anchor = primary["run_id"] if primary["derived_of"] == "" else primary["derived_of"]
        fill = unit[(unit["derived_of"] == anchor) & (unit["run_id"] != primary["run_id"])]
        values = {m: next((v for v in [primary[m], *fill[m]] if np.isfinite(v)), math.nan) for m in metrics}
        rows.append({"config": config, "seed": seed, "runs": len(unit), "run_id": primary["run_id"], **values})
    units = pd.DataFrame(rows, columns=["config", "seed", "runs", "run_id", *metrics])
    configs = dict(zip(keys, params.to_dict("records"), strict=True))
    return units, configs


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return 0, float(value), ""
    except ValueError:
        return 1, 0.0, value


def summarise(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """One row per configuration: ``config`` (digest), the swept params (floats where numeric),
    ``seeds`` (seed units), ``seed_list``, ``runs`` (MLflow runs), ``baseline`` (this row is
    all-default loss), ``baseline_config`` (its baseline's digest, "" when none is present), and per
    metric ``<metric>.n``, ``.mean``, ``.sd``, ``.ci_low``, ``.ci_high`` (95% t over seeds),
    ``.diff``, ``.diff_low``, ``.diff_high`` (from the baseline, Welch 95%). Rows sorted by the
    swept params. ``summary.attrs``: ``swept``, ``constant`` (the other training params' values),
    ``metrics``, ``reference`` (each swept param's baseline value, for the figures)."""
    metrics = metric_names(runs, metrics)
    units, configs = seed_units(runs, metrics)
    order = {name: i for i, name in enumerate(Params().flat())}  # params.yaml order: model, loss, train, data
    names = sorted(next(iter(configs.values())), key=lambda n: (order.get(n, len(order)), n))
    swept = [n for n in names if len({c[n] for c in configs.values()}) > 1]
    reference = _reference_values(configs, swept)
    stats = {}
    for config, group in units.groupby("config", sort=False):
        stats[config] = {m: seed_interval(group[m].to_numpy()) for m in metrics}
    rows = []
    for config, group in units.groupby("config", sort=False):
        values = configs[config]
        base = config_key(_baseline_values(values))
        seed_list = ",".join(_value(_display(s)) for s in sorted(group["seed"], key=_sort_key))
        row = {"config": config, **{p: _display(values[p]) for p in swept}, "seeds": len(group),
               "seed_list": seed_list, "runs": int(group["runs"].sum()),
               "baseline": base == config, "baseline_config": base if base in stats else ""}
        for metric in metrics:
            own = stats[config][metric]
            diff = (welch_interval(own, stats[base][metric]) if base in stats and base != config
                    else {"diff": math.nan, "diff_low": math.nan, "diff_high": math.nan})
            row.update({f"{metric}.{k}": v for k, v in {**own, **diff}.items()})
        rows.append(row)
    summary = pd.DataFrame(rows)
    def row_order(i: int) -> list[tuple]:  # by the swept params in turn: numbers ascending, a default text first
        values = configs[rows[i]["config"]]
        return [(_sort_key(values[p])[0], values[p] != reference[p] and _sort_key(values[p])[0] == 1,
                 *_sort_key(values[p])[1:]) for p in swept]

    summary = summary.iloc[sorted(range(len(rows)), key=row_order)].reset_index(drop=True)
    first = next(iter(configs.values()))
    summary.attrs = {"swept": swept, "metrics": metrics,
                     "constant": {n: _display(first[n]) for n in names if n not in swept},
                     "reference": reference}
    return summary


def _reference_values(configs: dict[str, dict[str, str]], swept: Sequence[str]) -> dict[str, str]:
    """Each swept param's value in the baseline: its default when some configuration used it, else
    its most common value (the first in sort order on a tie)."""
    defaults = Params().flat()
    reference = {}
    for name in swept:
        present = [c[name] for c in configs.values()]
        default = _normalise(str(defaults[name])) if name in defaults else None
        if default in present:
            reference[name] = default
        else:
            counts = pd.Series(present).value_counts()
            reference[name] = sorted(counts[counts == counts.max()].index, key=_sort_key)[0]
    return reference


# ----------------------------------------------------------------------------- markdown


def _number(value: float) -> str:
    return f"{value:.4g}" if np.isfinite(value) else "–"


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _mean_cell(row: pd.Series, metric: str) -> tuple[str, str]:
    n = int(row[f"{metric}.n"])
    if n == 0:
        return "–", "not logged"
    if n == 1:
        return _number(row[f"{metric}.mean"]), "1 seed: no interval"
    return _number(row[f"{metric}.mean"]), f"[{_number(row[f'{metric}.ci_low'])}, {_number(row[f'{metric}.ci_high'])}]"


def _diff_cell(row: pd.Series, metric: str) -> str:
    if row["baseline"]:
        return "baseline"
    if not row["baseline_config"]:
        return "no baseline run"
    diff = row[f"{metric}.diff"]
    if not np.isfinite(diff):
        return "–"
    if not np.isfinite(row[f"{metric}.diff_low"]):
        return f"{diff:+.4g} (no interval: a side has 1 seed)"
    return f"{diff:+.4g} [{row[f'{metric}.diff_low']:+.4g}, {row[f'{metric}.diff_high']:+.4g}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def markdown_report(summary: pd.DataFrame, title: str, selection: str) -> str:
    """The summary as markdown: what a row is, the configurations, then one table per metric."""
    swept, metrics = summary.attrs["swept"], summary.attrs["metrics"]
    logged = [m for m in metrics if (summary[f"{m}.n"] > 0).any()]
    lines = [f"# Ablation report: {title}", "",
             f"{selection}: {len(summary)} configurations, {int(summary['seeds'].sum())} seed runs "
             f"from {int(summary['runs'].sum())} MLflow runs.", "",
             "A configuration is every `data`, `model`, `loss` and `train` param except `seed` and those saying how "
             f"a run was executed ({', '.join(f'`{p}`' for p in EXECUTION_PARAMS)}); a run derived from "
             "a training run (tag `train_run_id`: only eval or viz params changed) joins its training run and never "
             "counts as a seed (the training run's metrics are used; a metric it lacks comes from the derived run). "
             "Mean and sample sd over seeds; 95% Student t interval over seeds. Δ: difference from the baseline "
             "(same params, every loss param at its default) with Welch's 95% interval.", ""]
    lines += ["## Configurations", ""]
    header = ["config", *swept, "seeds", "runs", "baseline"]
    lines += _table(header, [[row["config"], *(_value(row[p]) for p in swept), f"{row['seeds']} ({row['seed_list']})",
                              str(row["runs"]), "yes" if row["baseline"] else ""] for _, row in summary.iterrows()])
    constant = summary.attrs["constant"]
    lines += ["", "Held constant: " + ", ".join(f"`{k}` = {_value(v)}" for k, v in constant.items()) + ".", ""]
    for metric in logged:
        lines += [f"## {metric}", ""]
        rows = []
        for _, row in summary.iterrows():
            mean, interval = _mean_cell(row, metric)
            names = [_value(row[p]) for p in swept] if swept else [row["config"]]
            rows.append([*names, str(int(row[f"{metric}.n"])), mean, _number(row[f"{metric}.sd"]), interval,
                         _diff_cell(row, metric)])
        lines += _table([*(swept or ["config"]), "n", "mean", "sd", "95% interval", "Δ vs baseline [95%]"], rows)
        lines.append("")
    missing = [m for m in metrics if m not in logged]
    if missing:
        lines += ["Not logged by any run: " + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def plot_param(summary: pd.DataFrame, param: str, path: str | Path, dpi: int = 110) -> Path:
    """Each logged metric against the swept `param`: means with 95% intervals over seeds as error
    bars. One series holds every other swept param at its baseline value; a series of other fixed
    values is drawn when it has 2+ points. The baseline configuration is a star and a dotted line.
    A numeric param is a numeric axis; any other is categorical."""
    swept, reference = summary.attrs["swept"], summary.attrs["reference"]
    metrics = [m for m in summary.attrs["metrics"] if (summary[f"{m}.n"] > 0).any()]
    others = [p for p in swept if p != param]
    values = summary[param]
    numeric = all(isinstance(v, float) for v in values)
    categories = sorted({_normalise(v) for v in values}, key=_sort_key)
    position = (lambda v: float(v)) if numeric else (lambda v: float(categories.index(_normalise(v))))
    at_reference = summary[others].apply(lambda r: all(_normalise(r[p]) == reference[p] for p in others), axis=1) \
        if others else pd.Series(True, index=summary.index)
    series = [("other swept params at baseline" if others else None, summary[at_reference])]
    for fixed, group in summary[~at_reference].groupby(others, sort=False, dropna=False) if others else []:
        if len(group) >= 2:
            fixed = fixed if isinstance(fixed, tuple) else (fixed,)
            series.append((", ".join(f"{p.split('.')[-1]}={_value(v)}" for p, v in zip(others, fixed, strict=True)
                                     if _normalise(v) != reference[p]), group))
    ncols = max(1, min(4, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig, axes = new_figure(nrows, ncols, (4.0 * ncols, 3.4 * nrows))
    width = 0.3 / max(1, len(series))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for index, (label, group) in enumerate(series):
            group = group.assign(_x=[position(v) for v in group[param]]).sort_values("_x")
            x = group["_x"].to_numpy() + (0.0 if numeric else (index - (len(series) - 1) / 2) * width)
            mean = group[f"{metric}.mean"].to_numpy(dtype=float)
            half = np.nan_to_num((group[f"{metric}.ci_high"] - group[f"{metric}.mean"]).to_numpy(dtype=float))
            ax.errorbar(x, mean, yerr=half, marker="o", capsize=3, linestyle="-" if numeric else "none",
                        label=label)
            base = group["baseline"].to_numpy() & at_reference[group.index].to_numpy()
            if base.any() and np.isfinite(mean[base]).any():
                ax.axhline(mean[base][0], color="grey", linestyle=":", linewidth=1)
                ax.plot(x[base], mean[base], marker="*", markersize=14, color="black", linestyle="none",
                        label="baseline" if index == 0 else None)
        if not numeric:
            ax.set_xticks(range(len(categories)), [_value(_display(c)) for c in categories])
            ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.set_xlabel(param)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("test_ood.per_operation.", "OOD ")
                                        .replace(".exact_match", " exact match")))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    if metrics:
        axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{param}: mean over seeds, error bars = 95% t interval (none for 1 seed)")
    return save_figure(fig, path, dpi)


def write_report(runs: pd.DataFrame, out_dir: str | Path, dpi: int = 110, title: str = "ablation",
                 metrics: Sequence[str] = METRICS) -> dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` and ``<swept param>.png`` per swept param into
    `out_dir`; returns their paths by name (``csv``, ``markdown``, then each param). The markdown
    says which runs these are from ``runs.attrs["selection"]`` (set by `load_runs`)."""
    selection = runs.attrs.get("selection", "Finished runs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs, metrics)
    paths = {"csv": out_dir / "summary.csv", "markdown": out_dir / "summary.md"}
    summary.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(markdown_report(summary, title, selection))
    for param in summary.attrs["swept"]:
        paths[param] = plot_param(summary, param, out_dir / f"{param}.png", dpi)
    return paths

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

Statistics (`language_entropy.statistics`), per configuration and metric, over the seed units that
logged the metric: n, mean, sample sd and a 95% interval over seeds: Student t, and for a metric with
a range (`METRIC_RANGES`: rates, AUROC, ECE, the RL fit's R² in [0, 1]; entropies, norms >= 0) the t interval
on the logit (log) scale of the mean, which never leaves the range (none for a single seed). The baseline of
a configuration is the configuration with the same data, model and train params and every loss param
at its default (`Params().flat()`). The difference from it is *paired* when the two share 2+ seeds
(seed k draws the same data in both, `data.seed` fixed or following `seed`): the t interval of the
per-seed differences over the shared seeds; else Welch's interval (Welch-Satterthwaite df, rounded
down). Each has a two-sided p-value, and every p-value of the report is one family: Benjamini-Hochberg
(false discovery rate) and Holm (family-wise) adjusted p-values sit beside it. Numeric swept params
with 3+ values get a least-squares slope per metric (`dose_responses`, its own BH/Holm family); the
power section pools the between-seed sd over configurations and gives the seeds needed to resolve a
difference (`power_table`). A metric no run logged is NaN with n = 0.

`write_report` writes ``summary.csv`` (every configuration's params and numbers), ``seeds.csv`` (every
seed unit's metrics), ``summary.md`` and one figure per swept param (``<param>.png``: each metric
against that param, 95% intervals as error bars, baseline marked). `rebuild_report` rewrites them from
``summary.csv`` (and ``seeds.csv``) alone.
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

from language_entropy import time_to_learn
from language_entropy.errors import UserError
from language_entropy.params import OPERATIONS, Params
from language_entropy.plots import new_figure, save_figure
from language_entropy.statistics import (
    NO_DIFFERENCE,
    adjust_bh,
    adjust_holm,
    bounded_interval,
    detectable_difference,
    dose_response,
    dose_response_from_stats,
    interval_from_stats,
    paired_interval,
    pooled_sd_from_stats,
    seed_interval,
    seeds_needed,
    welch_interval,
)

OP = "{op}"  # placeholder in METRICS: one metric per operation present in the runs
LENGTH = "{length}"  # placeholder in RL_METRICS: one metric per operand length present in the runs
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
    "test_ood.stratified_auroc.semantic_entropy",
    "test_ood.stratified_auroc.token_entropy",
    "test_ood.stratified_auroc.sequence_nll",
    "test.continuity_l2",
    "test.continuity_cosine",
    "test.hidden_norm",
    "learning.steps_to_50",
    "learning.steps_to_90",
    "learning.steps_to_99",
    "learning.area",
    "digit_geometry.line_rank_correlation",
    "digit_geometry.ring_rank_correlation",
    "digit_geometry.neighbour_cosine_gap",
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
    "test_ood.stratified_auroc.semantic_entropy": "OOD AUROC within buckets, semantic entropy",
    "test_ood.stratified_auroc.token_entropy": "OOD AUROC within buckets, token entropy",
    "test_ood.stratified_auroc.sequence_nll": "OOD AUROC within buckets, sequence NLL",
    "learning.steps_to_50": "steps to 50% validation exact match",
    "learning.steps_to_90": "steps to 90% validation exact match",
    "learning.steps_to_99": "steps to 99% validation exact match",
    "learning.area": "mean validation exact match over training",
    "digit_geometry.line_rank_correlation": "digit embeddings: rank corr. with |i - j|",
    "digit_geometry.ring_rank_correlation": "digit embeddings: rank corr. with ring distance",
    "digit_geometry.neighbour_cosine_gap": "digit embeddings: neighbour cosine gap",
}
# An RL study (its runs are fine-tuning runs): what it compares, all from the finetune stage's run
RL_METRICS = (
    "rl_val_exact_match",  # greedy, the RL validation split: the length RL trained on, held-out problems
    f"test_ood.per_operand_length.{LENGTH}.exact_match",  # the longer operand's length: RL's, and longer ones
    "test.exact_match",
    "rl_entropy_bits",  # the policy's sampled-token entropy at the last step
    "rl_fit.a",
    "rl_fit.b",
    "rl_fit.ceiling",
    "rl_fit.r2",
    "rl_fit.early_ceiling",
    "rl_fit.early_ceiling_error_points",
    "rl_fit.early_at_final_error_points",
)
# Kept per run in seeds.csv and shown, not compared: the fit's inputs and the entropy per answer step
RL_DESCRIPTIVE = re.compile(r"^rl_fit\.(points|final|final_entropy_bits|early_points|early_a|early_b|early_at_final)$"
                            r"|^rl_val\.entropy_by_step\.\d+\.(before_bits|after_bits|digit_blind_running_bits)$")
CURVE_METRICS = ("rl_entropy_bits", "rl_val_exact_match", "rl_reward")  # the curves of an RL study's figures
# The entropy controls of RL: a fine-tuning configuration's baseline has them at their defaults (or --baseline's)
RL_CONTROL_PARAMS = ("rl.entropy_weight", "rl.entropy_target", "rl.entropy_coef_init", "rl.entropy_coef_lr",
                     "rl.token_mask", "rl.token_mask_quantile", "rl.entropy_tokens", "rl.cov_control",
                     "rl.clip_cov_ratio", "rl.clip_cov_low", "rl.clip_cov_high", "rl.kl_cov_ratio", "rl.kl_cov_coef",
                     "rl.clip_high", "rl.kl_coef")
TRAINING_SECTIONS = ("data", "model", "loss", "train")
# How a run was executed or logged, not what was trained: runs that differ only here are seeds of one configuration.
EXECUTION_PARAMS = ("train.device", "train.nproc_per_node", "train.compile", "train.cuda_graphs", "train.threads",
                    "train.threads_resolved", "train.eval_every", "train.log_every", "train.checkpoint_every")
# The values each reading can take (regex on the metric name, first match): intervals stay inside them.
METRIC_RANGES = (
    (r"exact_match$|auroc\.|sequence_ece\.|^learning\.area$|^rl_fit\.r2$", (0.0, 1.0)),  # R^2 with an intercept
    (r"entropy_bits$|continuity_l2$|hidden_norm$|^learning\.steps_to_", (0.0, math.inf)),
    (r"continuity_cosine$", (0.0, 2.0)),  # a cosine distance, 1 - cos
    (r"rank_correlation$|neighbour_cosine$|other_cosine$", (-1.0, 1.0)),
    (r"neighbour_cosine_gap$", (-2.0, 2.0)),
)
# How a fine-tuning run was executed or logged, and its RL seed (a seed unit is (seed, rl.seed) there)
RL_EXECUTION_PARAMS = ("rl.seed", "rl.eval_every", "rl.log_every", "rl.checkpoint_every")
ALPHA = 0.05  # the level at which a difference counts as surviving a correction
RESOLVE = 0.05  # the difference the power section sizes a study for, in each metric's units (--resolve)
DERIVED_FROM = "derived_from"  # column of the runs table: the training run a derived run measured, else ""
FINE_TUNED = "fine_tuned"  # column of the runs table: a finetune stage's run (an RL study's runs)

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


def is_rl_study(runs: pd.DataFrame) -> bool:
    """Whether the runs hold fine-tuning runs: then the study compares RL configurations (`rl_runs`)."""
    return FINE_TUNED in runs.columns and bool(runs[FINE_TUNED].fillna(False).astype(bool).any())


def rl_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """An RL study's runs: the fine-tuning runs and the runs derived from them (the training runs they started
    from measured the model before RL and are left out)."""
    tuned = runs[FINE_TUNED].fillna(False).astype(bool)
    derived = runs[DERIVED_FROM].fillna("").isin(set(runs.loc[tuned, "run_id"])) if DERIVED_FROM in runs else False
    return runs[tuned | derived]


def training_params(runs: pd.DataFrame, sections: Sequence[str] = TRAINING_SECTIONS) -> pd.DataFrame:
    """Every training param (of `sections`: data, model, loss, train, and rl in an RL study; not seed, not
    `EXECUTION_PARAMS` or `RL_EXECUTION_PARAMS`) of every run, normalised strings, a param a run lacks filled
    with its current default. Columns sorted by name."""
    defaults = {k: v for k, v in Params().flat().items() if k.split(".")[0] in sections}
    names = set(defaults) | {c.removeprefix("params.") for c in runs.columns
                             if c.startswith("params.") and c.split(".")[1] in sections}
    names -= set(EXECUTION_PARAMS) | set(RL_EXECUTION_PARAMS)
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


def baseline_overrides(assignments: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` texts (--baseline) as {key: value}: each key a loss param or an RL entropy control
    (`RL_CONTROL_PARAMS`), else a one-line error naming it."""
    known = [k for k in Params().flat() if k.startswith("loss.") or k in RL_CONTROL_PARAMS]
    overrides = {}
    for text in assignments:
        key, equals, value = text.partition("=")
        if not equals or not value:
            raise UserError(f"--baseline {text!r}: expected KEY=VALUE, e.g. rl.clip_high=0.2")
        if key not in known:
            raise UserError(f"--baseline {key}: not a loss param or an RL entropy control "
                            f"(one of: {', '.join(known)})")
        overrides[key] = value
    return overrides


def _baseline_values(values: dict[str, str], overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The same configuration with every loss param and every RL entropy control (`RL_CONTROL_PARAMS`) at its
    default, or at the value `overrides` gives it (e.g. ``rl.clip_high`` = 0.2: plain PPO clipping)."""
    defaults = {k: _normalise(str(v)) for k, v in Params().flat().items()}
    defaults.update({k: _normalise(v) for k, v in (overrides or {}).items()})
    return {k: defaults[k] if (k.startswith("loss.") or k in RL_CONTROL_PARAMS) and k in defaults else v
            for k, v in values.items()}


def metric_names(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> list[str]:
    """`metrics` with the per-operation placeholder expanded to every operation the runs logged (known operations
    first, in params order), and the per-length one to every operand length they logged (ascending)."""
    names = []
    for metric in metrics:
        placeholder = next((p for p in (OP, LENGTH) if p in metric), None)
        if placeholder is None:
            names.append(metric)
            continue
        head, tail = metric.split(placeholder)
        pattern = re.compile(re.escape(f"metrics.{head}") + r"([^.]+)" + re.escape(tail) + "$")
        found = {m.group(1) for c in runs.columns if (m := pattern.match(c))}
        if placeholder == OP:
            ordered = [op for op in OPERATIONS if op in found] + sorted(found - set(OPERATIONS))
        else:
            ordered = sorted(found, key=_sort_key)
        names += [metric.replace(placeholder, value) for value in ordered]
    return names


def _param_column(runs: pd.DataFrame, name: str, default: object) -> list[str]:
    """Param `name` of every run, normalised, `default` where a run lacks it."""
    column = f"params.{name}"
    return [_normalise(v) for v in (runs[column].fillna(str(default)) if column in runs.columns
                                    else [default] * len(runs))]


def seed_units(runs: pd.DataFrame, metrics: Sequence[str]) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """One row per (configuration, seed): ``config``, ``seed``, ``runs`` (MLflow runs folded in),
    ``run_id`` (the run whose values are used) and each metric (see the module docstring); and
    each configuration's normalised training params by its digest. In an RL study (`is_rl_study`) the
    configuration includes the rl params and the seed is ``<seed>/<rl.seed>``: the trained model and the RL
    seed, so that runs of two configurations from one trained model and one RL seed pair."""
    rl = is_rl_study(runs)
    if rl:
        runs = rl_runs(runs)
    params = training_params(runs, (*TRAINING_SECTIONS, "rl") if rl else TRAINING_SECTIONS)
    keys = [config_key(row) for row in params.to_dict("records")]
    seeds = _param_column(runs, "seed", Params().seed)
    if rl:
        rl_seeds = _param_column(runs, "rl.seed", Params().rl.seed)
        seeds = [f"{_value(_display(seed))}/{_value(_display(rl_seed))}"
                 for seed, rl_seed in zip(seeds, rl_seeds, strict=True)]
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


def metric_range(metric: str) -> tuple[float, float]:
    """The values a reading can take (`METRIC_RANGES`, first match); (-inf, inf) for one not listed."""
    return next((span for pattern, span in METRIC_RANGES if re.search(pattern, metric)), (-math.inf, math.inf))


def data_design(configs: dict[str, dict[str, str]]) -> str:
    """Whether the runs' data was held fixed across seeds (`data.seed` set) or drawn per seed (null, the default)."""
    values = {c.get("data.seed", "None") for c in configs.values()}
    if values <= {"None", "<unset>"}:
        return ("Data drawn per seed: `data.seed` follows `seed`, so seed k draws the same splits in every "
                "configuration (configurations that share seeds share data).")
    if len(values) == 1:
        return f"Data held fixed: every run saw the splits of `data.seed` = {_value(_display(next(iter(values))))}."
    return "Data seeds differ between configurations (`data.seed`: " + ", ".join(sorted(values)) + ")."


def summarise(runs: pd.DataFrame, metrics: Sequence[str] = METRICS, resolve: float = RESOLVE) -> pd.DataFrame:
    """The study summary from its runs: `seed_units`, then `analyse`."""
    metrics = metric_names(runs, metrics)
    units, configs = seed_units(runs, metrics)
    return analyse(units, configs, metrics, resolve)


def analyse(units: pd.DataFrame | None, configs: dict[str, dict[str, str]], metrics: Sequence[str],
            resolve: float = RESOLVE, counts: pd.DataFrame | None = None,
            stats: dict[str, dict[str, dict]] | None = None,
            baselines: dict[str, str] | None = None,
            baseline_overrides: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per configuration: ``config`` (digest), every training param (floats where numeric; the swept
    ones are those that differ),
    ``seeds`` (seed units), ``seed_list``, ``runs`` (MLflow runs), ``baseline`` (this row is
    all-default loss), ``baseline_config`` (its baseline's digest, "" when none is present),
    ``comparison`` ("paired" when it shares 2+ seeds with its baseline, else "Welch"), and per metric
    ``<metric>.n``, ``.mean``, ``.sd``, ``.ci_low``, ``.ci_high`` (95% over seeds, inside the metric's
    range), ``.diff``, ``.diff_low``, ``.diff_high``, ``.p`` (from the baseline), ``.p_bh``, ``.p_holm``
    (adjusted over every difference of the report). Rows sorted by the swept params.

    units: one row per (configuration, seed) with ``config``, ``seed``, ``runs`` and the metrics; None
    when only each configuration's (n, mean, sd) is known (`stats`, and `counts`: ``config``, ``seeds``,
    ``seed_list``, ``runs``), as from a summary table: then every difference is Welch's and the trends
    come from the same three numbers. ``summary.attrs``: ``swept``, ``constant`` (the other training
    params' values), ``metrics``, ``reference`` (each swept param's baseline value), ``design`` (data held
    fixed or not), ``trends`` (`dose_responses`), ``power`` (`power_table`), ``resolve``, ``per_seed``.
    baselines: each configuration's baseline digest, when `configs` hold only the swept params (a rebuilt
    report); by default computed from `configs` (`_baseline_values`, with `baseline_overrides`)."""
    order = {name: i for i, name in enumerate(Params().flat())}  # params.yaml order: model, loss, train, data
    names = sorted(next(iter(configs.values())), key=lambda n: (order.get(n, len(order)), n))
    swept = [n for n in names if len({c[n] for c in configs.values()}) > 1]
    reference = _reference_values(configs, swept, baseline_overrides)
    ranges = {m: metric_range(m) for m in metrics}
    if units is not None:
        by_config = dict(tuple(units.groupby("config", sort=False)))
        counts = pd.DataFrame([{"config": c, "seeds": len(g), "runs": int(g["runs"].sum()),
                                "seed_list": ",".join(_value(_display(s)) for s in sorted(g["seed"], key=_sort_key))}
                               for c, g in by_config.items()])
        stats = {c: {m: _interval(g[m].to_numpy(dtype=float), ranges[m]) for m in metrics}
                 for c, g in by_config.items()}
    else:
        stats = {c: {m: interval_from_stats(*(v[m][k] for k in ("n", "mean", "sd")), *ranges[m]) for m in metrics}
                 for c, v in stats.items()}
    rows = []
    for count in counts.itertuples(index=False):
        config, values = count.config, configs[count.config]
        base = baselines[config] if baselines is not None else \
            config_key(_baseline_values(values, baseline_overrides))
        shared = (set(by_config[config]["seed"]) & set(by_config[base]["seed"])
                  if units is not None and base in by_config and base != config else set())
        row = {"config": config, **{p: _display(values[p]) for p in names}, "seeds": int(count.seeds),
               "seed_list": count.seed_list, "runs": int(count.runs), "baseline": base == config,
               "baseline_config": base if base in stats else "",
               "comparison": "" if base == config or base not in stats else "paired" if len(shared) >= 2 else "Welch"}
        for metric in metrics:
            if row["comparison"] == "paired":
                seeds = sorted(shared, key=_sort_key)  # aligned: element k of both is the same seed (and data)
                own, baseline = (by_config[c].set_index("seed").loc[seeds, metric].to_numpy(dtype=float)
                                 for c in (config, base))
                diff = paired_interval(own, baseline)
            elif row["comparison"] == "Welch":
                diff = welch_interval(stats[config][metric], stats[base][metric])
            else:
                diff = dict(NO_DIFFERENCE)
            row.update({f"{metric}.{k}": v for k, v in stats[config][metric].items()})
            row.update({f"{metric}.{k}": diff[k] for k in NO_DIFFERENCE})
            # paired only: the pairs and the sd of their differences (the power section's paired spread)
            row[f"{metric}.pairs"], row[f"{metric}.diff_sd"] = diff.get("n", math.nan), diff.get("sd", math.nan)
            _clip_difference(row, metric, ranges[metric])
        rows.append(row)
    summary = pd.DataFrame(rows)
    _adjust(summary, [f"{m}.p" for m in metrics])

    def row_order(i: int) -> list[tuple]:  # by the swept params in turn: numbers ascending, a default text first
        values = configs[rows[i]["config"]]
        return [(_sort_key(values[p])[0], values[p] != reference[p] and _sort_key(values[p])[0] == 1,
                 *_sort_key(values[p])[1:]) for p in swept]

    summary = summary.iloc[sorted(range(len(rows)), key=row_order)].reset_index(drop=True)
    first = next(iter(configs.values()))
    summary.attrs = {"swept": swept, "metrics": list(metrics), "reference": reference, "resolve": resolve,
                     "constant": {n: _display(first[n]) for n in names if n not in swept},
                     "design": data_design(configs), "per_seed": units is not None,
                     "rl": any(name.startswith("rl.") for name in names),
                     "baseline_overrides": dict(baseline_overrides or {})}
    summary.attrs["trends"] = dose_responses(summary, units, configs)
    summary.attrs["power"] = power_table(summary, units, resolve)
    return summary


def _interval(values: np.ndarray, span: tuple[float, float]) -> dict[str, float]:
    """The 95% interval over seeds, inside `span` where the reading has one."""
    low, high = span
    return bounded_interval(values, low, high) if math.isfinite(low) or math.isfinite(high) else seed_interval(values)


def _clip_difference(row: dict, metric: str, span: tuple[float, float]) -> None:
    """A difference of two readings in [low, high] lies in [-(high - low), high - low]: its interval too."""
    width = span[1] - span[0]
    if math.isfinite(width):
        row[f"{metric}.diff_low"] = max(row[f"{metric}.diff_low"], -width)
        row[f"{metric}.diff_high"] = min(row[f"{metric}.diff_high"], width)


def _adjust(table: pd.DataFrame, columns: Sequence[str]) -> None:
    """``<name>_bh`` and ``<name>_holm`` beside each p-value column: adjusted over all of them together."""
    p = table[list(columns)].to_numpy(dtype=float)  # (rows, columns): one family
    for adjusted, suffix in ((adjust_bh(p.ravel()), "_bh"), (adjust_holm(p.ravel()), "_holm")):
        for j, column in enumerate(columns):
            table[f"{column}{suffix}"] = adjusted.reshape(p.shape)[:, j]


def _on_reference(summary: pd.DataFrame, others: Sequence[str]) -> pd.Series:
    """Rows whose swept params `others` all sit at their baseline values."""
    reference = summary.attrs["reference"]
    if not others:
        return pd.Series(True, index=summary.index)
    return summary[list(others)].apply(lambda r: all(_normalise(r[p]) == reference[p] for p in others), axis=1)


def dose_responses(summary: pd.DataFrame, units: pd.DataFrame | None,
                   configs: dict[str, dict[str, str]]) -> pd.DataFrame:
    """Per numeric swept param with 3+ values (the other swept params at their baseline values) and metric: the
    least-squares slope of the metric on the param over seed units, with its 95% interval and p-value; BH and
    Holm adjusted over all the slopes (their own family, apart from the differences)."""
    swept, metrics = summary.attrs["swept"], summary.attrs["metrics"]
    rows = []
    for param in swept:
        series = summary[_on_reference(summary, [p for p in swept if p != param])]
        if not all(isinstance(v, float) for v in series[param]) or series[param].nunique() < 3:
            continue
        for metric in metrics:
            if units is not None:
                points = units[units["config"].isin(series["config"])]
                x = [float(configs[c][param]) for c in points["config"]]
                trend = dose_response(x, points[metric].to_numpy(dtype=float))
            else:
                trend = dose_response_from_stats(series[param], series[f"{metric}.n"], series[f"{metric}.mean"],
                                                 series[f"{metric}.sd"])
            if np.isfinite(trend["slope"]):
                rows.append({"param": param, "metric": metric, **trend})
    trends = pd.DataFrame(rows, columns=["param", "metric", "n", "levels", "slope", "slope_low", "slope_high", "p"])
    _adjust(trends, ["p"])
    return trends


def power_table(summary: pd.DataFrame, units: pd.DataFrame | None, resolve: float) -> pd.DataFrame:
    """Per metric: the between-seed sd pooled over the configurations the differences rest on (each compared
    configuration and its baseline; with no comparison, all), with its 95% interval and df; the seeds per
    configuration needed to resolve a difference of `resolve` with 80% power at 5% (unpaired, normal
    approximation) for a metric whose range is at most 2 wide (rates, AUROC, ECE, cosines: `resolve` is in
    their units; NaN for unbounded ones such as norms); the smallest difference the study's own seeds
    resolve so; and the same for paired comparisons from the sd of per-seed differences where the study has
    them. A configuration whose seeds all sit at an end of the range (e.g. exact match 0) has no spread to
    learn from and is left out."""
    compared = summary["comparison"] != ""
    used = (compared | summary["config"].isin(summary.loc[compared, "baseline_config"]) if compared.any()
            else pd.Series(True, index=summary.index))
    seeds = int(summary.loc[used, "seeds"].median()) if len(summary) else 0
    rows = []
    for metric in summary.attrs["metrics"]:
        low, high = metric_range(metric)
        at_end = summary[f"{metric}.mean"].isin([low, high]) & (summary[f"{metric}.sd"] == 0)
        pool = summary[used & ~at_end]
        spread = pooled_sd_from_stats(pool[f"{metric}.n"], pool[f"{metric}.sd"])
        paired = summary[summary["comparison"] == "paired"]
        differences = pooled_sd_from_stats(paired[f"{metric}.pairs"], paired[f"{metric}.diff_sd"])
        sized = high - low <= 2  # `resolve` means something in this metric's units
        row = {"metric": metric, "sd": spread["sd"], "sd_low": spread["ci_low"], "sd_high": spread["ci_high"],
               "df": spread["df"], "seeds": seeds, "seeds_needed": math.nan, "detectable": math.nan,
               "paired_sd": differences["sd"], "paired_seeds_needed": math.nan, "paired_detectable": math.nan}
        if np.isfinite(spread["sd"]):
            row["detectable"] = detectable_difference(spread["sd"], seeds)
            row["seeds_needed"] = seeds_needed(spread["sd"], resolve) if sized else math.nan
        if np.isfinite(differences["sd"]):
            row["paired_detectable"] = detectable_difference(differences["sd"], seeds, paired=True)
            row["paired_seeds_needed"] = seeds_needed(differences["sd"], resolve, paired=True) if sized else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _reference_values(configs: dict[str, dict[str, str]], swept: Sequence[str],
                      overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Each swept param's value in the baseline: its default (or its value in `overrides`) when some
    configuration used it, else its most common value (the first in sort order on a tie)."""
    defaults = {**Params().flat(), **(overrides or {})}
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


def _survives(bh: float, holm: float) -> str:
    """Which corrections a difference survives at 5%: "BH, Holm", "BH", "no" ("" when untested)."""
    if not np.isfinite(bh):
        return ""
    return "BH, Holm" if holm < ALPHA else "BH" if bh < ALPHA else "no"


def _p(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def _labels(summary: pd.DataFrame, row: pd.Series) -> list[str]:
    return [_value(row[p]) for p in summary.attrs["swept"]] if summary.attrs["swept"] else [row["config"]]


def _method(summary: pd.DataFrame) -> list[str]:
    """What the numbers are: intervals, the comparison used, the correction and its tally."""
    comparisons = summary["comparison"].value_counts()
    p = summary[[f"{m}.p" for m in summary.attrs["metrics"]]].to_numpy(dtype=float).ravel()
    bh = summary[[f"{m}.p_bh" for m in summary.attrs["metrics"]]].to_numpy(dtype=float).ravel()
    holm = summary[[f"{m}.p_holm" for m in summary.attrs["metrics"]]].to_numpy(dtype=float).ravel()
    tested = int(np.isfinite(p).sum())
    used = []
    if comparisons.get("paired", 0):
        used.append(f"paired over the seeds a configuration shares with its baseline ({comparisons['paired']} "
                    "configurations: the 95% t interval of the per-seed differences)")
    if comparisons.get("Welch", 0):
        used.append(f"Welch's unpaired 95% interval ({comparisons['Welch']} configurations"
                    + (": the per-seed values are not at hand" if summary.attrs.get("per_seed") is False else
                       ": no shared seeds") + ")")
    return [summary.attrs["design"], "",
            "Mean and sample sd over seeds. 95% interval over seeds: Student t, and for a reading with a range "
            "(rates, AUROC, ECE in [0, 1]; entropies and norms >= 0) the t interval on the logit (log) scale of the "
            f"mean, so it never leaves the range. Δ: difference from the baseline ({_baseline_text(summary)}), "
            f"{'; '.join(used) or 'none'}. "
            "p: two-sided, from the same t statistic; q: Benjamini-Hochberg adjusted over every difference in this "
            "report (false discovery rate), Holm beside it (family-wise error rate). *Survives*: BH = q < 0.05, "
            "Holm = Holm-adjusted p < 0.05.", "",
            f"**{tested} differences: {int((p < ALPHA).sum())} with p < 0.05 uncorrected "
            f"(about {ALPHA * tested:.0f} expected by chance if nothing differed), {int((bh < ALPHA).sum())} survive "
            f"BH at 5%, {int((holm < ALPHA).sum())} survive Holm.**", ""]


def _baseline_text(summary: pd.DataFrame) -> str:
    """What a configuration is compared with."""
    if not summary.attrs.get("rl"):
        return "same params, every loss param at its default"
    overrides = summary.attrs.get("baseline_overrides") or {}
    chosen = "".join(f", `{k}` = {_value(_display(_normalise(v)))}" for k, v in overrides.items())
    return ("same params and trained models, every loss param and every RL entropy control (" +
            ", ".join(f"`{p}`" for p in RL_CONTROL_PARAMS) + f") at its default{chosen}: plain RL")


def markdown_report(summary: pd.DataFrame, title: str, selection: str, units: pd.DataFrame | None = None) -> str:
    """The summary as markdown: method and tally, the surviving differences, the configurations, one table per
    metric, the dose-response slopes and the power section; in an RL study with per-seed `units`, also each
    run's fit and the entropy per answer step before and after RL."""
    swept, metrics = summary.attrs["swept"], summary.attrs["metrics"]
    logged = [m for m in metrics if (summary[f"{m}.n"] > 0).any()]
    lines = [f"# Ablation report: {title}", "",
             f"{selection}: {len(summary)} configurations, {int(summary['seeds'].sum())} seed runs "
             f"from {int(summary['runs'].sum())} MLflow runs.", "",
             *(_rl_units_text() if summary.attrs.get("rl") else [
                 "A configuration is every `data`, `model`, `loss` and `train` param except `seed` and those saying "
                 f"how a run was executed ({', '.join(f'`{p}`' for p in EXECUTION_PARAMS)}); a run derived from "
                 "a training run (tag `train_run_id`: only eval or viz params changed) joins its training run and "
                 "never counts as a seed (the training run's metrics are used; a metric it lacks comes from the "
                 "derived run)."]),
             "", *_method(summary)]
    lines += ["## Differences that survive correction", ""]
    survivors = [[*_labels(summary, row), f"`{m}`", _diff_cell(row, m), row["comparison"], _p(row[f"{m}.p"]),
                  _p(row[f"{m}.p_bh"]), _p(row[f"{m}.p_holm"])]
                 for m in logged for _, row in summary.iterrows() if row[f"{m}.p_bh"] < ALPHA]
    lines += (_table([*(swept or ["config"]), "metric", "Δ vs baseline [95%]", "test", "p", "q (BH)", "Holm"],
                     survivors) if survivors else ["None at a false discovery rate of 5%."])
    lines += ["", "## Configurations", ""]
    header = ["config", *swept, "seeds", "runs", "baseline", "Δ by"]
    lines += _table(header, [[row["config"], *(_value(row[p]) for p in swept), f"{row['seeds']} ({row['seed_list']})",
                              str(row["runs"]), "yes" if row["baseline"] else "", row["comparison"]]
                             for _, row in summary.iterrows()])
    constant = summary.attrs["constant"]
    lines += ["", ("Held constant: " + ", ".join(f"`{k}` = {_value(v)}" for k, v in constant.items()) + "."
                   if constant else "Held constant: not recorded in the summary table this report was rebuilt from."),
              ""]
    for metric in logged:
        low, high = metric_range(metric)
        span = f" (range [{_value(low)}, {_value(high)}])" if math.isfinite(low) or math.isfinite(high) else ""
        lines += [f"## {metric}{span}", ""]
        rows = []
        for _, row in summary.iterrows():
            mean, interval = _mean_cell(row, metric)
            rows.append([*_labels(summary, row), str(int(row[f"{metric}.n"])), mean, _number(row[f"{metric}.sd"]),
                         interval, _diff_cell(row, metric), _p(row[f"{metric}.p"]), _p(row[f"{metric}.p_bh"]),
                         _survives(row[f"{metric}.p_bh"], row[f"{metric}.p_holm"])])
        lines += _table([*(swept or ["config"]), "n", "mean", "sd", "95% interval", "Δ vs baseline [95%]", "p",
                         "q (BH)", "survives"], rows)
        lines.append("")
    missing = [m for m in metrics if m not in logged]
    if missing:
        lines += ["Not logged by any run: " + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    rl_sections = _rl_fit_section(summary, units) + _rl_step_section(summary, units) \
        if summary.attrs.get("rl") and units is not None else []
    survival = _time_to_learn(summary, units)
    time_section = time_to_learn.markdown_section(survival) if survival is not None else []
    return "\n".join(lines + time_section + rl_sections + _trend_section(summary) + _power_section(summary))


def _time_to_learn(summary: pd.DataFrame, units: pd.DataFrame | None) -> pd.DataFrame | None:
    """`time_to_learn.time_to_learn_table` of a training study with per-seed units holding steps to 90%, each
    configuration censored at its `train.steps` (a swept or constant param of the summary); None otherwise."""
    if summary.attrs.get("rl") or units is None or time_to_learn.TIME_METRIC not in units:
        return None
    constant = summary.attrs["constant"].get("train.steps")
    if "train.steps" not in summary and constant is None:
        return None
    budgets = {row["config"]: float(row["train.steps"] if "train.steps" in summary else constant)
               for _, row in summary.iterrows()}
    labels = {row["config"]: config_label(summary, row) for _, row in summary.iterrows()}
    baselines = dict(zip(summary["config"], summary["baseline_config"].fillna(""), strict=True))
    return time_to_learn.time_to_learn_table(units, budgets, baselines, labels)


def config_label(summary: pd.DataFrame, row: pd.Series) -> str:
    """A configuration in a few words: its swept params away from the baseline's values (``plain`` for an RL
    baseline, ``baseline`` otherwise), as ``name=value`` with the section dropped."""
    reference = summary.attrs["reference"]
    changed = [f"{p.split('.', 1)[-1]}={_value(row[p])}" for p in summary.attrs["swept"]
               if _normalise(row[p]) != reference[p]]
    return ", ".join(changed) or ("plain" if summary.attrs.get("rl") else "baseline")


def _units_by_config(summary: pd.DataFrame, units: pd.DataFrame):
    """(label, the configuration's seed units in seed order) per configuration, in the summary's order."""
    for _, row in summary.iterrows():
        mine = units[units["config"] == row["config"]]
        yield config_label(summary, row), mine.sort_values("seed", key=lambda seeds: seeds.map(_sort_key))


def _rl_fit_section(summary: pd.DataFrame, units: pd.DataFrame) -> list[str]:
    lines = ["## Each run's entropy-accuracy fit", "",
             "R = -a exp(H) + b fitted by least squares to the run's validations (R: greedy exact match on the RL "
             "validation split; H: the policy's mean sampled-token entropy at that step, in nats); ceiling = b - a "
             "(R at H = 0). Early: the same fit over the validations in the first 15% of the steps; its ceiling "
             "forecasts the last validation (*final*), error = 100 x (forecast - final), in points.", ""]
    rows = [[label, str(unit["seed"]), *(_number(float(unit.get(f"rl_fit.{k}", math.nan))) for k in
                                         ("a", "b", "ceiling", "r2", "final", "early_points", "early_ceiling",
                                          "early_ceiling_error_points", "early_at_final_error_points"))]
            for label, mine in _units_by_config(summary, units) for _, unit in mine.iterrows()]
    return lines + _table(["configuration", "seed/rl.seed", "a", "b", "ceiling", "R²", "final", "early points",
                           "early ceiling", "error (points)", "error at final H (points)"], rows) + [""]


STEP_PATTERN = re.compile(r"^rl_val\.entropy_by_step\.(\d+)\.(before_bits|after_bits|digit_blind_running_bits)$")


def _rl_step_section(summary: pd.DataFrame, units: pd.DataFrame) -> list[str]:
    found = sorted({int(m.group(1)) for c in units.columns if (m := STEP_PATTERN.match(c))})
    if not found:
        return []
    lines = ["## Entropy per answer step before and after RL", "",
             "Mean teacher-forced entropy (bits) of each answer step on the RL validation problems, before RL (the "
             "trained model) and after, mean over the configuration's runs; the digit-blind level is the entropy "
             "of a predictor that knows the operation and the lengths but not the digits (exact, from the theory "
             "table).", ""]
    header = ["configuration", *(f"step {k}" for k in found)]
    column = "rl_val.entropy_by_step.{k}.{kind}"
    rows = []
    first = units.iloc[0]
    rows.append(["digit-blind level", *(_number(float(first.get(column.format(k=k, kind="digit_blind_running_bits"),
                                                                math.nan))) for k in found)])
    before = units[[column.format(k=k, kind="before_bits") for k in found]].mean()
    rows.append(["before RL (every trained model)", *(_number(float(v)) for v in before)])
    for label, mine in _units_by_config(summary, units):
        after = mine[[column.format(k=k, kind="after_bits") for k in found]].mean()
        rows.append([f"after: {label}", *(_number(float(v)) for v in after)])
    return lines + _table(header, rows) + [""]


def _rl_units_text() -> list[str]:
    return ["An RL study: its runs are the finetune stage's runs (the training runs they started from are left "
            "out). A configuration is every `data`, `model`, `loss`, `train` and `rl` param except `seed`, `rl.seed` "
            "and those saying how a run was executed or logged "
            f"({', '.join(f'`{p}`' for p in (*EXECUTION_PARAMS, *RL_EXECUTION_PARAMS[1:]))}); a seed unit is "
            "(`seed`, `rl.seed`), written `seed/rl.seed`: the trained model and the RL seed (prompts, samples), so "
            "two configurations pair on the runs that started from the same trained model with the same RL seed. "
            "Each run's numbers are its last reading: `rl_val_exact_match` (greedy, the RL validation split: "
            "held-out problems of the length RL trained on), the OOD split by the longer operand's length, "
            "`rl_entropy_bits` (the policy's mean sampled-token entropy at the last step), and the fit of "
            "R = -a exp(H) + b (H in nats) over the run's validations (`rl_fit.*`: ceiling = b - a; `early_*`: "
            "the same fit over the first 15% of the steps, its ceiling used as a forecast of the last validation, "
            "error in points)."]


def _trend_section(summary: pd.DataFrame) -> list[str]:
    trends = summary.attrs["trends"]
    if trends.empty:
        return []
    lines = ["## Dose-response", "",
             "Least-squares slope of each metric on a numeric swept param with 3 or more values (the other swept "
             "params at their baseline values), over seed units, per unit of the param, with its 95% t interval. "
             "A slope says whether the metric moves steadily with the param, which a row of pairwise differences "
             "cannot; it is linear in the param's values. The slopes are a family of their own for BH and Holm.", ""]
    rows = [[f"`{t.param}`", f"`{t.metric}`", str(t.levels), str(t.n),
             f"{t.slope:+.4g} [{t.slope_low:+.4g}, {t.slope_high:+.4g}]", _p(t.p), _p(t.p_bh),
             _survives(t.p_bh, t.p_holm)] for t in trends.itertuples()]
    return lines + _table(["param", "metric", "values", "n", "slope [95%]", "p", "q (BH)", "survives"], rows) + [""]


def _power_section(summary: pd.DataFrame) -> list[str]:
    power, resolve = summary.attrs["power"], summary.attrs["resolve"]
    seeds = int(power["seeds"].iloc[0]) if len(power) else 0
    lines = ["## Power: how many seeds a difference needs", "",
             "Between-seed sd: the sample sd within each configuration, pooled over the configurations the "
             "differences rest on (each compared configuration and its baseline; one whose seeds all sit at an end "
             "of the range is left out), with its 95% chi-square interval. Seeds needed: per configuration, to "
             f"detect a true difference of {_value(float(resolve))} (`--resolve`, in the metric's own units: given "
             "for metrics with a range at most 2 wide, – for norms and entropies) with 80% power at a two-sided 5% "
             "level, by the normal approximation: "
             "2 (z₀.₉₇₅ + z₀.₈)² sd² / Δ² unpaired; (z₀.₉₇₅ + z₀.₈)² sd_d² / Δ² paired, sd_d the sd of per-seed "
             f"differences. Smallest Δ: the difference {seeds} seeds per configuration (this study's) detect so. "
             "Uncorrected for multiplicity: a difference that must survive BH over a large family needs more.", ""]
    rows = [[f"`{r.metric}`", f"{_number(r.sd)} [{_number(r.sd_low)}, {_number(r.sd_high)}]", str(int(r.df)),
             _count(r.seeds_needed), _number(r.detectable), _number(r.paired_sd), _count(r.paired_seeds_needed),
             _number(r.paired_detectable)] for r in power.itertuples()]
    delta = _value(float(resolve))
    return lines + _table(["metric", "between-seed sd [95%]", "df", f"seeds for Δ = {delta}",
                           f"smallest Δ, {seeds} seeds", "paired sd_d", f"paired seeds for Δ = {delta}",
                           f"paired smallest Δ, {seeds} seeds"], rows) + [""]


def _count(value: float) -> str:
    return f"{int(value)}" if np.isfinite(value) else "–"


# ----------------------------------------------------------------------------- figures


def plot_param(summary: pd.DataFrame, param: str, path: str | Path, dpi: int = 110) -> Path:
    """Each logged metric against the swept `param`: means with 95% intervals over seeds as error
    bars (inside the metric's range: asymmetric near an end). One series holds every other swept
    param at its baseline value; a series of other fixed values is drawn when it has 2+ points. The
    baseline configuration is a star and a dotted line. A numeric param is a numeric axis; any other is categorical."""
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
            below = np.nan_to_num(mean - group[f"{metric}.ci_low"].to_numpy(dtype=float))  # asymmetric near an end
            above = np.nan_to_num(group[f"{metric}.ci_high"].to_numpy(dtype=float) - mean)
            ax.errorbar(x, mean, yerr=[below, above], marker="o", capsize=3, linestyle="-" if numeric else "none",
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
    fig.suptitle(f"{param}: mean over seeds, error bars = 95% interval over seeds, inside the metric's range "
                 "(none for 1 seed)")
    return save_figure(fig, path, dpi)


def _curves_by_config(summary: pd.DataFrame, units: pd.DataFrame, curves: pd.DataFrame):
    """(label, the configuration's units, their curves) per configuration, in the summary's order."""
    for label, mine in _units_by_config(summary, units):
        yield label, mine, curves[curves["run_id"].isin(mine["run_id"])]


def plot_rl_fits(summary: pd.DataFrame, units: pd.DataFrame, curves: pd.DataFrame, path: str | Path,
                 dpi: int = 110) -> Path:
    """One panel per configuration: every run's validations (exact match on the RL validation split against the
    policy's entropy at that step), a colour per trained model, each with its own fitted R = -a exp(H) + b."""
    groups = list(_curves_by_config(summary, units, curves))
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = new_figure(nrows, ncols, (4.2 * ncols, 3.5 * nrows), sharex=True, sharey=True)
    models = sorted({str(s).split("/")[0] for s in units["seed"]}, key=_sort_key)
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    for ax, (label, mine, runs) in zip(axes.flat, groups, strict=False):
        for _, unit in mine.iterrows():
            points = runs[runs["run_id"] == unit["run_id"]].dropna(subset=["rl_val_exact_match", "rl_entropy_bits"])
            model = str(unit["seed"]).split("/")[0]
            ax.plot(points["rl_entropy_bits"], points["rl_val_exact_match"], "o", markersize=2.5, alpha=0.5,
                    color=colours[model])
            a, b = float(unit.get("rl_fit.a", math.nan)), float(unit.get("rl_fit.b", math.nan))
            if len(points) and math.isfinite(a) and math.isfinite(b):
                bits = np.linspace(points["rl_entropy_bits"].min(), points["rl_entropy_bits"].max(), 50)
                ax.plot(bits, b - a * np.exp(bits * math.log(2)), color=colours[model], linewidth=1)
        ceiling = summary.loc[summary["config"] == mine["config"].iloc[0], "rl_fit.ceiling.mean"] \
            if len(mine) and "rl_fit.ceiling.mean" in summary else pd.Series(dtype=float)
        ax.set_title(label + (f"\nmean ceiling {float(ceiling.iloc[0]):.3f}" if len(ceiling) else ""), fontsize=9)
        ax.set_xlabel("policy entropy (bits/token, sampled)")
        ax.set_ylabel("RL validation exact match")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    for model, colour in colours.items():
        axes.flat[0].plot([], [], "o-", color=colour, label=f"trained model seed {model}")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("Accuracy against entropy during RL: every run's validations and its fit R = -a exp(H) + b")
    return save_figure(fig, path, dpi)


def plot_rl_curves(summary: pd.DataFrame, units: pd.DataFrame, curves: pd.DataFrame, path: str | Path,
                   dpi: int = 110) -> Path:
    """The policy's entropy and the RL validation exact match over the RL steps, per configuration: the mean over
    its runs, the band from the lowest to the highest run. Each step's entropy is read from that step's samples
    alone (128 answers by default), so its panel also draws the mean over 5 logged steps (thick)."""
    fig, axes = new_figure(1, 2, (12.0, 4.2))
    for index, (label, _, runs) in enumerate(_curves_by_config(summary, units, curves)):
        for ax, metric in zip(axes.flat, ("rl_entropy_bits", "rl_val_exact_match"), strict=True):
            points = runs.dropna(subset=[metric]).groupby("step")[metric]
            if not len(points):
                continue
            mean, low, high = points.mean(), points.min(), points.max()
            ax.plot(mean.index, mean.to_numpy(), color=f"C{index}", label=label,
                    linewidth=0.6 if metric == "rl_entropy_bits" else 1.2)
            ax.fill_between(mean.index, low.to_numpy(), high.to_numpy(), color=f"C{index}", alpha=0.1)
            if metric == "rl_entropy_bits":
                smooth = mean.rolling(5, center=True, min_periods=3).mean()
                ax.plot(smooth.index, smooth.to_numpy(), color=f"C{index}", linewidth=2.2)
    axes[0, 0].set_ylabel("policy entropy (bits/token; thick: 5-reading mean)")
    axes[0, 1].set_ylabel("RL validation exact match (greedy)")
    for ax in axes.flat:
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("Entropy and accuracy over RL steps per configuration: mean over runs, band = lowest to highest run")
    return save_figure(fig, path, dpi)


SUMMARY_FILE, SEEDS_FILE, MARKDOWN_FILE = "summary.csv", "seeds.csv", "summary.md"
CURVES_FILE = "curves.csv"  # an RL study's curves (run_id, step, `CURVE_METRICS`): its figures' input


def write_report(runs: pd.DataFrame, out_dir: str | Path, dpi: int = 110, title: str = "ablation",
                 metrics: Sequence[str] | None = None, resolve: float = RESOLVE,
                 baseline_overrides: dict[str, str] | None = None, curves: pd.DataFrame | None = None
                 ) -> dict[str, Path]:
    """Write ``summary.csv``, ``seeds.csv`` (every seed unit's metrics: what `rebuild_report` needs for the
    paired analysis), ``summary.md`` and ``<swept param>.png`` per swept param into `out_dir`; returns their
    paths by name (``csv``, ``seeds``, ``markdown``, then each param). The markdown says which runs these are
    from ``runs.attrs["selection"]`` (set by `load_runs`). `metrics`: by default `METRICS`, or `RL_METRICS` in
    an RL study, whose seeds.csv also keeps the `RL_DESCRIPTIVE` readings; with its `curves` (``run_id``,
    ``step``, `CURVE_METRICS`: `pipeline.runs.load_curves`) it also writes ``curves.csv``, ``rl_fits.png`` and
    ``rl_curves.png``."""
    rl = is_rl_study(runs)
    metrics = metric_names(runs, metrics if metrics is not None else RL_METRICS if rl else METRICS)
    descriptive = sorted({c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")
                          and RL_DESCRIPTIVE.match(c.removeprefix("metrics."))}) if rl else []
    units, configs = seed_units(runs, [*metrics, *descriptive])
    summary = analyse(units, configs, metrics, resolve, baseline_overrides=baseline_overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = out_dir / SEEDS_FILE
    units.to_csv(seeds, index=False)
    paths = {"seeds": seeds}
    if rl and curves is not None:
        paths["curves"] = out_dir / CURVES_FILE
        curves.to_csv(paths["curves"], index=False)
    selection = runs.attrs.get("selection", "Finished runs")
    return {**_write(summary, out_dir, title, selection, dpi, units, curves if rl else None), **paths}


def rebuild_report(out_dir: str | Path, dpi: int = 110, title: str = "ablation", resolve: float = RESOLVE,
                   baseline_overrides: dict[str, str] | None = None) -> dict[str, Path]:
    """Rewrite a report from its own files, without the MLflow store: the configurations (their params as far
    as the table holds them, seeds, runs, baselines) from ``summary.csv``; the per-seed values from
    ``seeds.csv`` when it is there (the full analysis, paired where seeds are shared), else each
    configuration's n, mean and sd from ``summary.csv`` (every difference then Welch's: the per-seed values a
    paired analysis needs are not in that table)."""
    out_dir = Path(out_dir)
    path = out_dir / SUMMARY_FILE
    if not path.is_file():
        raise UserError(f"no {SUMMARY_FILE} in {out_dir} to rebuild the report from")
    table = pd.read_csv(path, dtype={"config": str, "baseline_config": str, "seed_list": str},
                        keep_default_na=False, na_values=[""])
    params = list(table.columns[1:list(table.columns).index("seeds")])  # older tables: the swept params only
    metrics = [c.removesuffix(".n") for c in table.columns if c.endswith(".n")]
    configs = {row["config"]: {p: _normalise(row[p]) for p in params} for _, row in table.iterrows()}
    baselines = {row["config"]: row["baseline_config"] if isinstance(row["baseline_config"], str) else ""
                 for _, row in table.iterrows()}
    counts = table[["config", "seeds", "seed_list", "runs"]]
    seeds_path = out_dir / SEEDS_FILE
    units = curves = None
    if seeds_path.is_file():
        units = pd.read_csv(seeds_path, dtype={"config": str, "seed": str, "run_id": str})
        summary = analyse(units, configs, metrics, resolve, baselines=baselines, baseline_overrides=baseline_overrides)
        selection = f"Rebuilt from `{SUMMARY_FILE}` and `{SEEDS_FILE}` (per-seed values)"
        if (out_dir / CURVES_FILE).is_file():
            curves = pd.read_csv(out_dir / CURVES_FILE, dtype={"run_id": str})
    else:
        stats = {row["config"]: {m: {k: row[f"{m}.{k}"] for k in ("n", "mean", "sd")} for m in metrics}
                 for _, row in table.iterrows()}
        summary = analyse(None, configs, metrics, resolve, counts=counts, stats=stats, baselines=baselines,
                          baseline_overrides=baseline_overrides)
        selection = (f"Rebuilt from `{SUMMARY_FILE}` alone (each configuration's n, mean and sd; the per-seed values "
                     "and the MLflow runs are not at hand)")
    return _write(summary, out_dir, title, selection, dpi, units, curves)


def _write(summary: pd.DataFrame, out_dir: Path, title: str, selection: str, dpi: int,
           units: pd.DataFrame | None = None, curves: pd.DataFrame | None = None) -> dict[str, Path]:
    paths = {"csv": out_dir / SUMMARY_FILE, "markdown": out_dir / MARKDOWN_FILE}
    summary.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(markdown_report(summary, title, selection, units))
    for param in summary.attrs["swept"]:
        paths[param] = plot_param(summary, param, out_dir / f"{param}.png", dpi)
    survival = _time_to_learn(summary, units)
    if survival is not None:
        paths["time_to_90"] = time_to_learn.plot_time_to_learn(units, survival, out_dir / "time_to_90.png", dpi)
    if summary.attrs.get("rl") and units is not None and curves is not None:
        paths["rl_fits"] = plot_rl_fits(summary, units, curves, out_dir / "rl_fits.png", dpi)
        paths["rl_curves"] = plot_rl_curves(summary, units, curves, out_dir / "rl_curves.png", dpi)
    return paths

"""The defaults study's report (reports/defaults): recipes compared over paired seeds, from their seed tables.

Two tables in, one summary out, no MLflow: ``supervised.csv`` (one row per (recipe, seed) of
`pipeline.seed_table.score_trained_seed`) and ``rl.csv`` (one row per (RL configuration, trained model, rl.seed)
of `score_finetuned_seed`). Seed k of every recipe draws the same data, so recipes are compared per seed
(`statistics.paired_interval`); a stall (the last validation exact match below `learning_speed.LEARNED_LEVEL`)
is a count with its exact interval, and steps to 90% are censored at the budget (`time_to_learn`). RL
configurations are compared by the change each (trained model, rl.seed) unit makes to its own trained model.

`summary.csv` holds every number the markdown shows, one per row (section, config, reading, statistic, value,
low, high, n): the findings README quotes from it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from language_entropy.statistics import (
    bounded_interval,
    detectable_difference,
    exact_proportion_interval,
    paired_interval,
)
from language_entropy.time_to_learn import markdown_section, plot_time_to_learn, time_to_learn_table

SUMMARY_COLUMNS = ("section", "config", "reading", "statistic", "value", "low", "high", "n")
SUPERVISED_RATES = ("test_exact_match", "test_add_exact_match", "test_sub_exact_match", "ood_exact_match",
                    "ood_add_exact_match", "ood_sub_exact_match")
RL_SPLITS = ("test", "rl_val", "ood")  # 1-3 digits (the trained lengths), the RL validation problems, OOD
OPERATIONS = ("", "add_", "sub_")
POWER_SEEDS = 12  # the study size the power row speaks of: the difference 12 seeds per configuration resolve


def _row(section: str, config: str, reading: str, statistic: str, value: float, low: float = math.nan,
         high: float = math.nan, n: int = 0) -> dict:
    return dict(zip(SUMMARY_COLUMNS, (section, config, reading, statistic, float(value), float(low), float(high),
                                      int(n)), strict=True))


def supervised_rows(table: pd.DataFrame, baseline: str, budget: float) -> tuple[list[dict], pd.DataFrame]:
    """Per recipe: the stall count and rate (exact 95%), min and median test exact match, each rate's mean (bounded
    95%) and its paired difference from `baseline` (also over the seeds where the baseline learned); and the
    time-to-learn table (steps to 90% censored at `budget`, log-rank and Fisher p against the baseline)."""
    rows: list[dict] = []
    recipes = [baseline, *(r for r in dict.fromkeys(table["config"]) if r != baseline)]  # the baseline first
    base = table[table["config"] == baseline].set_index("seed")
    for recipe in recipes:
        own = table[table["config"] == recipe].set_index("seed").sort_index()
        n, stalls = len(own), int((own["learned"].astype(float) == 0).sum())
        low, high = exact_proportion_interval(stalls, n)
        rows.append(_row("supervised", recipe, "stalls", "count", stalls, low, high, n))
        rows.append(_row("supervised", recipe, "stalls", "rate", stalls / n, low, high, n))
        rows.append(_row("supervised", recipe, "test_exact_match", "min", own["test_exact_match"].min(), n=n))
        rows.append(_row("supervised", recipe, "test_exact_match", "median", own["test_exact_match"].median(), n=n))
        for rate in SUPERVISED_RATES:
            interval = bounded_interval(own[rate].to_numpy(dtype=float))
            rows.append(_row("supervised", recipe, rate, "mean", interval["mean"], interval["ci_low"],
                             interval["ci_high"], n))
            if recipe != baseline:
                seeds = own.index.intersection(base.index)
                diff = paired_interval(own.loc[seeds, rate].to_numpy(dtype=float),
                                       base.loc[seeds, rate].to_numpy(dtype=float))
                rows.append(_row("supervised", recipe, rate, f"diff vs {baseline}", diff["diff"], diff["diff_low"],
                                 diff["diff_high"], diff["n"]))
                rows.append(_row("supervised", recipe, rate, f"p vs {baseline}", diff["p"], n=diff["n"]))
                learned = base.loc[seeds, "learned"].astype(float).to_numpy() == 1  # the baseline's stalls left out
                diff = paired_interval(own.loc[seeds, rate].to_numpy(dtype=float)[learned],
                                       base.loc[seeds, rate].to_numpy(dtype=float)[learned])
                rows.append(_row("supervised", recipe, rate, f"diff vs {baseline} where it learned", diff["diff"],
                                 diff["diff_low"], diff["diff_high"], diff["n"]))
        sd = float(own["ood_exact_match"].std(ddof=1))
        rows.append(_row("supervised", recipe, "ood_exact_match", "sd", sd, n=n))
        rows.append(_row("supervised", recipe, "ood_exact_match", f"resolved by {POWER_SEEDS} seeds",
                         detectable_difference(sd, POWER_SEEDS), n=n))
        rows.append(_row("supervised", recipe, "tokens_per_s", "median", own["tokens_per_s"].median(), n=n))
    units = table.rename(columns={"steps_to_90": "learning.steps_to_90"})
    survival = time_to_learn_table(units, dict.fromkeys(recipes, budget), dict.fromkeys(recipes, baseline),
                                   {recipe: recipe for recipe in recipes})
    for item in survival.itertuples():
        rows.append(_row("supervised", item.config, "steps_to_90", "KM median", item.median_steps, n=item.n))
        if item.config != baseline:
            rows.append(_row("supervised", item.config, "steps_to_90", f"log-rank p vs {baseline}", item.logrank_p,
                             n=item.n))
            rows.append(_row("supervised", item.config, "stalls", f"Fisher p vs {baseline}", item.fisher_p, n=item.n))
    return rows, survival


def rl_rows(table: pd.DataFrame, section: str = "rl") -> list[dict]:
    """Per RL configuration and split (overall and per operation): the mean change of greedy exact match from
    the trained model (after - before, paired over (trained model, rl.seed) units, 95%), the worst unit's change,
    and the mean before and after."""
    rows: list[dict] = []
    for config, own in table.groupby("config", sort=False):
        for split in RL_SPLITS:
            for op in OPERATIONS:
                reading = f"{split}_{op}exact_match"
                if f"after_{reading}" not in own:
                    continue
                after, before = (own[f"{when}_{reading}"].to_numpy(dtype=float) for when in ("after", "before"))
                change = paired_interval(after, before)
                rows.append(_row(section, config, reading, "change", change["diff"], change["diff_low"],
                                 change["diff_high"], change["n"]))
                rows.append(_row(section, config, reading, "worst change", float(np.min(after - before)),
                                 n=len(own)))
                for when, values in (("before", before), ("after", after)):
                    interval = bounded_interval(values)
                    rows.append(_row(section, config, reading, when, interval["mean"], interval["ci_low"],
                                     interval["ci_high"], len(values)))
    return rows


def _pct(value: float) -> str:
    return f"{100 * value:.1f}" if math.isfinite(value) else "–"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}" if math.isfinite(value) else "–"


def _lookup(summary: pd.DataFrame, section: str, config: str, reading: str, statistic: str) -> pd.Series:
    hit = summary[(summary["section"] == section) & (summary["config"] == config) & (summary["reading"] == reading)
                  & (summary["statistic"] == statistic)]
    return hit.iloc[0] if len(hit) else pd.Series({"value": math.nan, "low": math.nan, "high": math.nan, "n": 0})


def markdown(summary: pd.DataFrame, survival: pd.DataFrame, baseline: str, rl_baseline: str | None) -> str:
    """The report: the supervised recipes' table, their time to learn, and the RL configurations' table."""
    recipes = list(dict.fromkeys(summary.loc[summary["section"] == "supervised", "config"]))
    get = lambda *key: _lookup(summary, *key)  # noqa: E731
    lines = ["# The defaults study", "",
             "Every number below is a row of `summary.csv` (section, config, reading, statistic). Rates are in "
             "percent; intervals are 95%: exact (Clopper-Pearson) for stall counts, bounded t intervals for means, "
             f"paired t intervals over shared seeds for differences from `{baseline}`.", "",
             "## Supervised recipes", "",
             "| recipe | seeds | stalls [95%] | test min | test median | test mean [95%] | OOD mean [95%] | "
             f"OOD Δ vs {baseline} [95%] (p) | tokens/s |", "|" + " --- |" * 9]
    for recipe in recipes:
        stalls, ood = get("supervised", recipe, "stalls", "count"), get("supervised", recipe, "ood_exact_match", "mean")
        test = get("supervised", recipe, "test_exact_match", "mean")
        diff = get("supervised", recipe, "ood_exact_match", f"diff vs {baseline}")
        p = get("supervised", recipe, "ood_exact_match", f"p vs {baseline}")
        delta = "–" if recipe == baseline else f"{_points(diff['value'])} [{_points(diff['low'])}, " \
                                               f"{_points(diff['high'])}] ({p['value']:.2f})"
        lines.append(f"| {recipe} | {int(stalls['n'])} | {int(stalls['value'])} [{_pct(stalls['low'])}%, "
                     f"{_pct(stalls['high'])}%] | {_pct(get('supervised', recipe, 'test_exact_match', 'min')['value'])}"
                     f" | {_pct(get('supervised', recipe, 'test_exact_match', 'median')['value'])} | "
                     f"{_pct(test['value'])} [{_pct(test['low'])}, {_pct(test['high'])}] | {_pct(ood['value'])} "
                     f"[{_pct(ood['low'])}, {_pct(ood['high'])}] | {delta} | "
                     f"{get('supervised', recipe, 'tokens_per_s', 'median')['value']:.0f} |")
    resolved = f"resolved by {POWER_SEEDS} seeds"
    power = "; ".join(f"{recipe}: sd {get('supervised', recipe, 'ood_exact_match', 'sd')['value']:.3f}, "
                      f"{100 * get('supervised', recipe, 'ood_exact_match', resolved)['value']:.1f} points"
                      for recipe in recipes)
    lines += ["", f"Power: the between-seed sd of OOD exact match, and the difference {POWER_SEEDS} seeds per "
              "configuration resolve with 80% power at a two-sided 5% level (unpaired, normal approximation; a "
              f"paired study whose seeds correlate resolves a smaller one): {power}.", "",
              *markdown_section(survival)]
    rl_configs = list(dict.fromkeys(summary.loc[summary["section"] == "rl", "config"]))
    if rl_configs:
        lines += ["## RL fine-tuning: before and after", "",
                  "Greedy exact match of each (trained model, rl.seed) unit before and after RL, in percent; Δ: the "
                  "mean change in points [paired 95% over units], worst: the largest loss of any unit. test: 1-3 "
                  "digit operands (the trained lengths); rl_val: the RL validation problems (4x4); OOD: 4 and 5 "
                  "digits.", "",
                  "| RL configuration | split | before | after | Δ points [95%] | worst Δ |", "|" + " --- |" * 6]
        for config in rl_configs:
            for split in RL_SPLITS:
                for op in OPERATIONS:
                    reading = f"{split}_{op}exact_match"
                    change = get("rl", config, reading, "change")
                    if not change["n"]:
                        continue
                    label = f"{split} {op.rstrip('_') or 'all'}"
                    lines.append(f"| {config} | {label} | {_pct(get('rl', config, reading, 'before')['value'])} | "
                                 f"{_pct(get('rl', config, reading, 'after')['value'])} | {_points(change['value'])} "
                                 f"[{_points(change['low'])}, {_points(change['high'])}] | "
                                 f"{_points(get('rl', config, reading, 'worst change')['value'])} |")
        lines.append("")
    levers = list(dict.fromkeys(summary.loc[summary["section"] == "levers", "config"]))
    if levers:
        lines += ["## What made RL forget: one setting at a time", "",
                  "One trained model and one rl.seed per row; greedy exact match after RL and its change from the "
                  "trained model, in points.", "",
                  "| lever | test add | test sub | rl_val (4x4) | OOD |", "|" + " --- |" * 5]
        for lever in levers:
            cells = []
            for reading in ("test_add_exact_match", "test_sub_exact_match", "rl_val_exact_match", "ood_exact_match"):
                after, change = get("levers", lever, reading, "after"), get("levers", lever, reading, "change")
                cells.append(f"{_pct(after['value'])} ({_points(change['value'])})")
            lines.append(f"| {lever} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_defaults_report(study_dir: str | Path, baseline: str, budget: float, rl_baseline: str | None = None,
                          dpi: int = 110) -> dict[str, Path]:
    """summary.csv, summary.md and time_to_90.png in `study_dir` from its supervised.csv (and rl.csv when there);
    returns their paths."""
    study_dir = Path(study_dir)
    supervised = pd.read_csv(study_dir / "supervised.csv")
    rows, survival = supervised_rows(supervised, baseline, budget)
    for name, section in (("rl.csv", "rl"), ("levers.csv", "levers")):
        if (study_dir / name).is_file():
            rows += rl_rows(pd.read_csv(study_dir / name), section)
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    paths = {"csv": study_dir / "summary.csv", "markdown": study_dir / "summary.md"}
    summary.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(markdown(summary, survival, baseline, rl_baseline))
    units = supervised.rename(columns={"steps_to_90": "learning.steps_to_90"})
    paths["time_to_90"] = plot_time_to_learn(units, survival, study_dir / "time_to_90.png", dpi)
    return paths

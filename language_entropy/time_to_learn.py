"""Time to learn as time-to-event data: a study report's stall counts, Kaplan-Meier curves and log-rank tests.

A run's steps to 90% validation exact match (`learning_speed.steps_to_reach`) is undefined when it never got
there within its budget: it stalled. Dropping those runs (or averaging the rest) hides exactly the runs that
differ, so the reading is treated as right-censored at the run's budget (`train.steps`): per configuration the
stall count with its exact (Clopper-Pearson) interval, the Kaplan-Meier curve of the fraction not yet at 90%
and its median, the log-rank test against the configuration's baseline (unpaired: it ignores that seeds share
data) and Fisher's exact test of the two stall counts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from language_entropy.plots import new_figure, save_figure
from language_entropy.statistics import exact_proportion_interval, kaplan_meier, logrank_test, time_to_event

TIME_METRIC = "learning.steps_to_90"  # the seed table's column of steps to 90% validation exact match
TABLE_COLUMNS = ("config", "label", "budget", "n", "stalls", "stall_low", "stall_high", "median_steps",
                 "logrank_p", "fisher_p")


def km_median(curve: dict[str, np.ndarray]) -> float:
    """The first step at which the Kaplan-Meier curve is at or below one half; NaN when it never gets there."""
    below = np.flatnonzero(np.asarray(curve["surviving"]) <= 0.5)
    return float(np.asarray(curve["step"])[below[0]]) if below.size else math.nan


def time_to_learn_table(units: pd.DataFrame, budgets: dict[str, float], baselines: dict[str, str],
                        labels: dict[str, str], metric: str = TIME_METRIC) -> pd.DataFrame:
    """One row per configuration of `units` (``config`` and `metric` per seed unit), in `labels`' order:
    ``budget`` (its train.steps), ``n``, ``stalls`` (units that never reached the level) with
    ``stall_low``/``stall_high`` (exact 95%), ``median_steps`` (Kaplan-Meier), and against the configuration's
    baseline (`baselines`; none for a baseline itself) ``logrank_p`` and ``fisher_p`` (NaN where undefined)."""
    data = {config: time_to_event(group[metric].to_numpy(dtype=float), budgets[config])
            for config, group in units.groupby("config", sort=False)}
    rows = []
    for config, label in labels.items():
        events = data[config]
        n, stalls = len(events), events.num_censored()
        low, high = exact_proportion_interval(stalls, n)
        row = {"config": config, "label": label, "budget": budgets[config], "n": n, "stalls": stalls,
               "stall_low": low, "stall_high": high, "median_steps": km_median(kaplan_meier(events)),
               "logrank_p": math.nan, "fisher_p": math.nan}
        base = baselines.get(config, "")
        if base and base != config and base in data:
            row["logrank_p"] = logrank_test(events, data[base])["p"]
            other = data[base]
            table = [[stalls, n - stalls], [other.num_censored(), len(other) - other.num_censored()]]
            row["fisher_p"] = float(stats.fisher_exact(table).pvalue)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _cell(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def markdown_section(table: pd.DataFrame) -> list[str]:
    """The report's section on time to learn (`time_to_learn_table`)."""
    lines = ["## Time to learn: stalls and steps to 90%", "",
             "A run stalls when its validation exact match never reaches 90% within its budget (`train.steps`); "
             "its steps to 90% are then censored at the budget rather than dropped. Stalls: count of n with the "
             "exact (Clopper-Pearson) 95% interval of the rate. Median: the Kaplan-Meier median of steps to 90% "
             "(– where at most half the runs got there). Against the baseline: the log-rank test of steps to 90% "
             "(unpaired) and Fisher's exact test of the stall counts, uncorrected. Figure: `time_to_90.png`.", ""]
    rows = [[row.label, _cell(row.budget), f"{row.stalls} of {row.n}",
             f"{row.stalls / row.n:.2f} [{row.stall_low:.2f}, {row.stall_high:.2f}]", _cell(row.median_steps),
             _cell(row.logrank_p, 3), _cell(row.fisher_p, 3)] for row in table.itertuples()]
    header = ["configuration", "budget", "stalls", "stall rate [95%]", "median steps to 90%", "log-rank p",
              "Fisher p"]
    return [*lines, "| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def plot_time_to_learn(units: pd.DataFrame, table: pd.DataFrame, path: str | Path, dpi: int = 110,
                       metric: str = TIME_METRIC) -> Path:
    """Kaplan-Meier curves of the fraction of runs not yet at 90% validation exact match, one per configuration,
    each to its budget (a curve that ends above 0 holds the stalled runs)."""
    fig, axes = new_figure(1, 1, (6.4, 4.0))
    ax = axes[0, 0]
    for row in table.itertuples():
        values = units.loc[units["config"] == row.config, metric].to_numpy(dtype=float)
        curve = kaplan_meier(time_to_event(values, row.budget))
        steps = np.append(curve["step"], row.budget)
        surviving = np.append(curve["surviving"], curve["surviving"][-1])
        ax.step(steps, surviving, where="post", label=f"{row.label} ({row.stalls}/{row.n} stalled)")
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of runs not yet at 90%")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")
    return save_figure(fig, path, dpi)

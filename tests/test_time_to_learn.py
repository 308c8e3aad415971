"""A study's time to learn as censored data (language_entropy/time_to_learn.py) on a small made-up study."""

import math

import pandas as pd
import pytest
from scipy import stats

from language_entropy.time_to_learn import km_median, markdown_section, plot_time_to_learn, time_to_learn_table


def _study() -> pd.DataFrame:
    # baseline: 90% at 100 and 200, two stalls; other: 90% at 150, 250, 300 (one stall) over budget 400
    return pd.DataFrame({"config": ["base"] * 4 + ["other"] * 4,
                         "learning.steps_to_90": [100, 200, math.nan, math.nan, 150, 250, 300, math.nan]})


def test_the_table_by_hand_and_against_scipy():
    table = time_to_learn_table(_study(), {"base": 400, "other": 400}, {"base": "base", "other": "base"},
                                {"base": "baseline", "other": "lr=0.002"}).set_index("config")
    assert table.loc["base", "stalls"] == 2 and table.loc["other", "stalls"] == 1
    assert table.loc["base", "stall_low"] == pytest.approx(stats.beta.ppf(0.025, 2, 3))
    assert table.loc["base", "stall_high"] == pytest.approx(stats.beta.ppf(0.975, 3, 2))
    # Kaplan-Meier medians: base 3/4 at 100, 1/2 at 200; other 3/4, 1/2 at 250
    assert table.loc["base", "median_steps"] == 200 and table.loc["other", "median_steps"] == 250
    assert math.isnan(table.loc["base", "logrank_p"])  # the baseline is not compared with itself
    censored = [stats.CensoredData(uncensored=[150, 250, 300], right=[400]),
                stats.CensoredData(uncensored=[100, 200], right=[400, 400])]
    assert table.loc["other", "logrank_p"] == pytest.approx(stats.logrank(*censored).pvalue)
    assert table.loc["other", "fisher_p"] == pytest.approx(stats.fisher_exact([[1, 3], [2, 2]]).pvalue)
    lines = markdown_section(table.reset_index())
    assert "| lr=0.002 | 400 | 1 of 4 | 0.25 [0.01, 0.81] | 250 |" in "\n".join(lines)


def test_km_median_is_undefined_while_half_the_runs_remain():
    assert math.isnan(km_median({"step": [0.0, 100.0], "surviving": [1.0, 0.75]}))
    assert km_median({"step": [0.0, 100.0, 200.0], "surviving": [1.0, 0.75, 0.5]}) == 200


def test_the_figure_is_written(tmp_path):
    study = _study()
    table = time_to_learn_table(study, {"base": 400, "other": 400}, {"other": "base"},
                                {"base": "baseline", "other": "lr=0.002"})
    path = plot_time_to_learn(study, table, tmp_path / "time_to_90.png", dpi=30)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

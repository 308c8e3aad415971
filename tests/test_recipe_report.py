"""The defaults study's report (language_entropy/recipe_report.py) and its seed tables
(language_entropy/pipeline/seed_table.py) on small made-up tables, against hand values and scipy."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from language_entropy.params import Params
from language_entropy.pipeline.deps import ROOT
from language_entropy.pipeline.seed_table import params_with
from language_entropy.recipe_report import rl_rows, supervised_rows, write_defaults_report


def _supervised() -> pd.DataFrame:
    rows = []
    for seed, (old_test, old_ood, new_ood) in enumerate([(0.99, 0.20, 0.25), (0.15, 0.01, 0.30), (0.98, 0.30, 0.28),
                                                         (0.20, 0.02, 0.22)]):
        for config, test, ood, learned, steps in (("old", old_test, old_ood, old_test > 0.9, 900 if old_test > 0.9
                                                   else math.nan), ("new", 0.995, new_ood, True, 800)):
            rows.append({"config": config, "seed": seed, "learned": learned, "steps_to_90": steps,
                         "test_exact_match": test, "test_add_exact_match": test, "test_sub_exact_match": test,
                         "ood_exact_match": ood, "ood_add_exact_match": ood, "ood_sub_exact_match": ood,
                         "tokens_per_s": 1000.0})
    return pd.DataFrame(rows)


def _get(rows, config, reading, statistic):
    return next(r for r in rows if (r["config"], r["reading"], r["statistic"]) == (config, reading, statistic))


def test_supervised_rows_by_hand():
    rows, survival = supervised_rows(_supervised(), "old", 1500)
    stalls = _get(rows, "old", "stalls", "count")
    assert stalls["value"] == 2 and stalls["n"] == 4
    assert stalls["low"] == pytest.approx(stats.beta.ppf(0.025, 2, 3))
    assert _get(rows, "new", "stalls", "count")["value"] == 0
    assert _get(rows, "old", "test_exact_match", "min")["value"] == 0.15
    assert _get(rows, "old", "test_exact_match", "median")["value"] == pytest.approx((0.20 + 0.98) / 2)
    # paired OOD differences per seed: +0.05, +0.29, -0.02, +0.20
    diff = _get(rows, "new", "ood_exact_match", "diff vs old")
    differences = np.array([0.05, 0.29, -0.02, 0.20])
    half = stats.t.ppf(0.975, 3) * differences.std(ddof=1) / 2
    assert diff["value"] == pytest.approx(differences.mean())
    assert (diff["low"], diff["high"]) == pytest.approx((differences.mean() - half, differences.mean() + half))
    assert _get(rows, "new", "ood_exact_match", "p vs old")["value"] == pytest.approx(
        stats.ttest_1samp(differences, 0).pvalue)
    # where the baseline learned (seeds 0 and 2): +0.05 and -0.02
    assert _get(rows, "new", "ood_exact_match", "diff vs old where it learned")["value"] == pytest.approx(0.015)
    assert _get(rows, "new", "stalls", "Fisher p vs old")["value"] == pytest.approx(
        stats.fisher_exact([[0, 4], [2, 2]]).pvalue)
    assert survival.set_index("config").loc["old", "stalls"] == 2
    assert _get(rows, "new", "steps_to_90", "KM median")["value"] == 800


def test_rl_rows_are_changes_from_each_units_own_model():
    table = pd.DataFrame({"config": ["a"] * 3, "seed": [0, 0, 1], "rl_seed": [0, 1, 0],
                          "before_test_exact_match": [0.99, 0.99, 0.98], "after_test_exact_match": [0.98, 0.995, 0.97],
                          "before_rl_val_exact_match": [0.5, 0.5, 0.6], "after_rl_val_exact_match": [0.9, 0.8, 0.85]})
    rows = rl_rows(table)
    change = _get(rows, "a", "test_exact_match", "change")
    assert change["value"] == pytest.approx(np.mean([-0.01, 0.005, -0.01])) and change["n"] == 3
    assert _get(rows, "a", "test_exact_match", "worst change")["value"] == pytest.approx(-0.01)
    assert _get(rows, "a", "rl_val_exact_match", "after")["value"] == pytest.approx(0.85)
    assert not any(r["reading"] == "ood_exact_match" for r in rows)  # a split the table lacks is left out


def test_the_report_files(tmp_path):
    _supervised().to_csv(tmp_path / "supervised.csv", index=False)
    paths = write_defaults_report(tmp_path, "old", 1500)
    summary = pd.read_csv(paths["csv"])
    assert list(summary.columns) == ["section", "config", "reading", "statistic", "value", "low", "high", "n"]
    markdown = paths["markdown"].read_text()
    assert "| old | 4 | 2 [" in markdown and "| new | 4 | 0 [" in markdown
    assert paths["time_to_90"].read_bytes()[:4] == b"\x89PNG"


def test_params_with_applies_dotted_overrides_as_yaml():
    params = params_with(ROOT / "params.yaml", 7, ["train.lr=0.003", "rl.digits.min=1", "loss.entropy_target=null"])
    assert isinstance(params, Params) and params.seed == 7 and params.train.lr == 0.003
    assert (params.rl.digits.min, params.rl.digits.max) == (1, 4) and params.loss.entropy_target is None


def test_exact_match_by_operation_counts_each_operation_apart():
    import torch

    from language_entropy.data import generate_splits
    from language_entropy.measure import greedy_right
    from language_entropy.model import ArithmeticDecoder
    from language_entropy.params import DataConfig, ModelConfig
    from language_entropy.pipeline.seed_table import exact_match_by_operation

    torch.manual_seed(0)
    model = ArithmeticDecoder(ModelConfig(n_layer=1, n_head=2, n_embd=16, max_seq_len=32)).eval()
    frame = generate_splits(DataConfig(train_size=50, val_size=10, test_size=40, ood_size=10), 0)["test"]
    right = greedy_right(model, frame["text"].tolist())
    right[:7] = True  # as if those were answered right: the grouping, not the model, is under test
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("language_entropy.pipeline.seed_table.greedy_right", lambda model, texts: right)
        row = exact_match_by_operation(model, frame, "test")
    ops = frame["op"].to_numpy()
    assert row["test_exact_match"] == pytest.approx(right.sum() / 40)
    for op in ("add", "sub"):
        assert row[f"test_{op}_exact_match"] == pytest.approx(right[ops == op].sum() / (ops == op).sum())

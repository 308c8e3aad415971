"""The ablation report on a real temporary MLflow store (runs logged through MLflow's API): seed
units, derived runs, configurations, t intervals and baseline differences against hand values."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import matplotlib.image
import mlflow
import numpy as np
import pandas as pd
import pytest

from language_entropy.errors import UserError
from language_entropy.pipeline.cli import run_stage
from language_entropy.pipeline.runs import load_runs
from language_entropy.report import (
    analyse,
    metric_names,
    rebuild_report,
    summarise,
    write_report,
)
from language_entropy.statistics import (
    adjust_bh,
    adjust_holm,
    dose_response,
    paired_interval,
    pooled_sd,
    seeds_needed,
)

EXPERIMENT = "ablation-test"
EM, OOD, AUROC = "test.exact_match", "test_ood.exact_match", "test_ood.auroc.semantic_entropy"
ADD, SUB = "test_ood.per_operation.add.exact_match", "test_ood.per_operation.sub.exact_match"
DEFAULT_LOSS = {"loss.entropy_weight": 0.0, "loss.continuity_weight": 0.0, "loss.continuity_metric": "l2",
                "loss.entropy_temperature": 1.0}
COMMON = {"model.pos_encoding": "abacus", "train.steps": 4000, "data.train_size": 100000}
# name -> (params other than the defaults above, {seed: test exact match})
CONFIGS = {
    "A": ({}, {0: 0.9, 1: 0.8, 2: 0.7}),  # the baseline: mean 0.8, sd 0.1
    "B": ({"loss.entropy_weight": 0.2}, {0: 0.6, 1: 0.4, 2: 0.8}),  # mean 0.6, sd 0.2
    "E": ({"loss.entropy_weight": 0.2, "loss.entropy_temperature": 2.0}, {0: 0.5}),  # B but for one loss param
    "C": ({"loss.continuity_weight": 0.1}, {0: 0.3, 1: 0.5}),
    "D": ({"loss.continuity_weight": 0.1, "loss.continuity_metric": "cosine"}, {0: 0.2, 1: 0.4}),
    "F": ({"model.pos_encoding": "rope"}, {0: 0.6, 1: 0.7}),  # baseline of G: same model, default loss
    "G": ({"model.pos_encoding": "rope", "loss.entropy_weight": 0.2}, {0: 0.1}),
}


def _log_run(experiment_id: str, params: dict, metrics: dict, tags: dict | None = None) -> str:
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store: experiment EXPERIMENT holds CONFIGS (one run per seed), two derived runs, a failed
    run; experiment "tagged" holds two studies; experiment "empty" holds no run."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)  # mlflow.set_tracking_uri also sets it: restored afterwards
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
        mlflow.create_experiment("empty", artifact_location=(root / "empty").as_uri())
        ids = {}
        for name, (params, seeds) in CONFIGS.items():
            for seed, exact in seeds.items():
                run_params = {**COMMON, **DEFAULT_LOSS, **params, "seed": seed, "eval.samples": "None"}
                if name == "A" and seed == 2:
                    run_params["loss.entropy_weight"] = 0  # logged as "0", not "0.0": the same value
                    del run_params["data.train_size"]  # absent: its default, the same configuration
                if name == "A" and seed == 1:
                    run_params["train.cuda_graphs"] = False  # how it ran, not what it trained: a seed of A
                metrics = {EM: exact, OOD: exact / 2, ADD: exact / 2}
                if name == "A":
                    metrics[SUB] = 0.1
                ids[name, seed] = _log_run(experiment_id, run_params, metrics)
        # Derived runs (only eval params changed): same params and seed, tag train_run_id. They must not be
        # seeds; their exact match (0.0) must not replace the training run's; their AUROC fills the gap.
        for name, seed in (("A", 0), ("B", 1)):
            params = {**COMMON, **DEFAULT_LOSS, **CONFIGS[name][0], "seed": seed, "eval.samples": 100}
            _log_run(experiment_id, params, {EM: 0.0, AUROC: 0.75}, tags={"train_run_id": ids[name, seed]})
        mlflow.start_run(experiment_id=experiment_id)
        mlflow.log_params({**COMMON, **DEFAULT_LOSS, "loss.entropy_weight": 5.0, "seed": 9})
        mlflow.log_metrics({EM: 0.0})
        mlflow.end_run(status="FAILED")

        tagged = mlflow.create_experiment("tagged", artifact_location=(root / "tagged").as_uri())
        first = _log_run(tagged, {"seed": 0}, {EM: 0.5}, tags={"study": "s1"})
        _log_run(tagged, {"seed": 1}, {EM: 0.7}, tags={"study": "s1"})
        _log_run(tagged, {"seed": 0, "loss.entropy_weight": 0.2}, {EM: 0.1}, tags={"study": "s2"})
        _log_run(tagged, {"seed": 0, "eval.samples": 10}, {AUROC: 0.6}, tags={"train_run_id": first})
        yield uri
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def summary(store):
    table = summarise(load_runs(EXPERIMENT, store))
    return table.set_index(table.apply(_name_of, axis=1))


def _name_of(row: pd.Series) -> str:
    """Which CONFIGS entry a summary row is."""
    for name, (params, _) in CONFIGS.items():
        values = {**DEFAULT_LOSS, **COMMON, **params}
        if all(str(row[p]) == str(values[p]) or row[p] == values[p] for p in row.index if p in values):
            return name
    raise AssertionError(f"no configuration matches {row.to_dict()}")


def expit(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def logit_interval(mean: float, sd: float, n: int, t: float) -> tuple[float, float]:
    """The bounded interval of a rate written out: the t interval on the logit scale of the mean."""
    spread = t * sd / math.sqrt(n) / (mean * (1 - mean))
    centre = math.log(mean / (1 - mean))
    return expit(centre - spread), expit(centre + spread)


def test_load_runs_keeps_finished_runs(store):
    runs = load_runs(EXPERIMENT, store)
    assert len(runs) == sum(len(seeds) for _, seeds in CONFIGS.values()) + 2  # + 2 derived, no failed run
    assert "5.0" not in set(runs["params.loss.entropy_weight"])


def test_study_tag_selects_runs_and_their_derived_runs(store):
    s1 = load_runs("tagged", store, study="s1")
    assert len(s1) == 3  # two tagged runs and the untagged run derived from one of them
    assert "`study` = `s1`" in s1.attrs["selection"]
    table = summarise(s1)
    assert table["seeds"].tolist() == [2] and table["runs"].tolist() == [3]
    assert table[f"{AUROC}.n"].tolist() == [1]  # the derived run's metric, on its training run's seed
    assert len(load_runs("tagged", store, study="s2")) == 1
    with pytest.raises(UserError, match="no finished run is tagged study = 'nope' .*s1, s2"):
        load_runs("tagged", store, study="nope")
    untagged = load_runs(EXPERIMENT, store, study="whatever")  # no study tags there: every finished run
    assert len(untagged) == len(load_runs(EXPERIMENT, store))
    assert "no run is tagged" in untagged.attrs["selection"]


def test_derived_runs_are_not_seeds(summary):
    assert summary.loc["A", "seeds"] == 3 and summary.loc["A", "runs"] == 4  # 3 training runs + 1 derived
    assert summary.loc["A", "seed_list"] == "0,1,2"
    assert summary.loc["B", "seeds"] == 3 and summary.loc["B", "runs"] == 4
    assert summary.loc["A", f"{EM}.n"] == 3 and summary.loc["A", f"{EM}.mean"] == pytest.approx(0.8)  # not 0.0
    assert summary.loc["A", f"{AUROC}.n"] == 1 and summary.loc["A", f"{AUROC}.mean"] == 0.75  # filled from it
    assert summary.loc["C", f"{AUROC}.n"] == 0 and math.isnan(summary.loc["C", f"{AUROC}.mean"])


def test_configurations_differing_in_one_loss_param_are_separate_rows(summary):
    assert sorted(summary.index) == sorted(CONFIGS)  # one row each; "0" and "0.0", absent and default agree
    assert summary.loc["B", "loss.entropy_temperature"] == 1.0 and summary.loc["E", "loss.entropy_temperature"] == 2.0
    assert summary.loc["B", "seeds"] == 3 and summary.loc["E", "seeds"] == 1  # not pooled into 4
    assert summary.loc["C", "loss.continuity_metric"] == "l2" and summary.loc["D", "loss.continuity_metric"] == "cosine"
    assert set(summary.attrs["swept"]) == {"loss.entropy_weight", "loss.entropy_temperature",
                                           "loss.continuity_weight", "loss.continuity_metric", "model.pos_encoding"}
    assert summary.attrs["constant"]["train.steps"] == 4000.0 and "seed" not in summary.columns
    assert summary["config"].is_unique


def test_means_intervals_and_baseline_differences(summary):
    a = summary.loc["A"]
    assert (a[f"{EM}.mean"], a[f"{EM}.sd"]) == pytest.approx((0.8, 0.1))
    # exact match is a rate: its interval is the t interval on the logit scale of the mean, inside [0, 1]
    low, high = logit_interval(0.8, 0.1, 3, 4.302652729749464)
    assert (a[f"{EM}.ci_low"], a[f"{EM}.ci_high"]) == pytest.approx((low, high))
    assert a["baseline"] and math.isnan(a[f"{EM}.diff"]) and a["comparison"] == ""
    # B shares seeds 0, 1, 2 (and so data) with A: paired. Per-seed differences -0.3, -0.4, +0.1:
    # mean -0.2, sd sqrt((0.01 + 0.04 + 0.09) / 2), interval t(0.975, 2) sd / sqrt(3) either side
    b = summary.loc["B"]
    assert not b["baseline"] and b["baseline_config"] == a["config"] and b["comparison"] == "paired"
    half_b = 4.302652729749464 * math.sqrt(0.07) / math.sqrt(3)
    assert (b[f"{EM}.diff"], b[f"{EM}.diff_low"], b[f"{EM}.diff_high"]) == pytest.approx(
        (-0.2, -0.2 - half_b, -0.2 + half_b))
    assert b[f"{EM}.pairs"] == 3 and b[f"{EM}.diff_sd"] == pytest.approx(math.sqrt(0.07))
    assert summary.loc["D", "baseline_config"] == a["config"]  # continuity_metric is a loss param too
    assert summary.loc["G", "baseline_config"] == summary.loc["F", "config"]  # the same model, default loss
    assert summary.loc["F", "baseline"] and summary.loc["G", f"{EM}.diff"] == pytest.approx(0.1 - 0.65)
    assert summary.loc["G", "comparison"] == "Welch"  # one shared seed: no pairs to take an interval over
    e = summary.loc["E"]  # one seed: no interval, and no interval for its difference
    assert e[f"{EM}.n"] == 1 and math.isnan(e[f"{EM}.sd"]) and math.isnan(e[f"{EM}.ci_low"])
    assert e[f"{EM}.diff"] == pytest.approx(-0.3) and math.isnan(e[f"{EM}.diff_low"])
    assert summary.loc["A", f"{SUB}.mean"] == pytest.approx(0.1) and summary.loc["B", f"{SUB}.n"] == 0


def test_metric_names_expand_operations(store):
    names = metric_names(load_runs(EXPERIMENT, store))
    assert names[:4] == [EM, OOD, ADD, SUB]
    assert "test.hidden_norm" in names and not any("{op}" in n for n in names)


def test_report_files(store, tmp_path):
    paths = write_report(load_runs(EXPERIMENT, store), tmp_path / "reports", dpi=30, title="unit")
    swept = ["loss.continuity_metric", "loss.continuity_weight", "loss.entropy_temperature", "loss.entropy_weight",
             "model.pos_encoding"]
    assert sorted(paths) == sorted(["csv", "seeds", "markdown", "time_to_90", *swept])  # time to learn: censored
    assert {p.name for p in (tmp_path / "reports").iterdir()} == {"summary.csv", "seeds.csv", "summary.md",
                                                                   "time_to_90.png", *(f"{p}.png" for p in swept)}
    table = pd.read_csv(paths["csv"])
    assert len(table) == len(CONFIGS) and table["seeds"].sum() == 14 and table["runs"].sum() == 16
    assert len(pd.read_csv(paths["seeds"])) == 14  # one row per seed unit
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# Ablation report: unit")
    assert "7 configurations, 14 seed runs from 16 MLflow runs" in markdown
    assert "1 seed: no interval" in markdown
    assert "(no interval: a side has 1 seed)" in markdown
    assert f"## {EM} (range [0, 1])" in markdown and "## test.hidden_norm" not in markdown
    assert "`test.hidden_norm`" in markdown.split("Not logged by any run:")[1]
    low, high = logit_interval(0.8, 0.1, 3, 4.302652729749464)
    assert f"| 0.8 | 0.1 | [{low:.4g}, {high:.4g}] | baseline | – | – |  |" in markdown
    assert "## Power: how many seeds a difference needs" in markdown
    for param in swept:  # 5 logged metrics: 4 columns x 2 rows of 4.0 x 3.4 inches
        image = matplotlib.image.imread(paths[param])
        assert image.shape[:2] == (round(2 * 3.4 * 30), 4 * 4 * 30), param


def test_every_difference_is_one_family_for_bh_and_holm(summary):
    metrics = summary.attrs["metrics"]
    p = summary[[f"{m}.p" for m in metrics]].to_numpy(dtype=float).ravel()
    assert np.isfinite(p).sum() >= 6  # paired and Welch differences with an interval
    for column, adjust in (("p_bh", adjust_bh), ("p_holm", adjust_holm)):
        got = summary[[f"{m}.{column}" for m in metrics]].to_numpy(dtype=float).ravel()
        assert np.array_equal(np.isnan(got), np.isnan(p)) and got[np.isfinite(p)] == pytest.approx(
            adjust(p)[np.isfinite(p)], abs=1e-15)


def test_the_report_rebuilds_from_its_own_tables(store, tmp_path):
    folder = tmp_path / "unit"
    write_report(load_runs(EXPERIMENT, store), folder, dpi=30, title="unit")
    written = pd.read_csv(folder / "summary.csv")
    rebuild_report(folder, dpi=30, title="unit")  # with seeds.csv: the same analysis, paired included
    assert pd.read_csv(folder / "summary.csv").equals(written)
    assert "Rebuilt from `summary.csv` and `seeds.csv`" in (folder / "summary.md").read_text()
    (folder / "seeds.csv").unlink()  # a table of means and sds only: every difference Welch's
    rebuild_report(folder, dpi=30, title="unit")
    welch = pd.read_csv(folder / "summary.csv").set_index("config")
    kept = written.set_index("config")
    assert set(welch["comparison"].dropna()) == {"Welch"}
    for column in (f"{EM}.mean", f"{EM}.sd", f"{EM}.ci_low", f"{EM}.ci_high", "seeds", "runs"):
        assert welch[column].equals(kept[column]), column
    b = welch[(welch["loss.entropy_weight"] == 0.2) & (welch["loss.entropy_temperature"] == 1.0)
              & (welch["model.pos_encoding"] == "abacus")].iloc[0]
    half = 4.302652729749464 * math.sqrt(0.04 / 3 + 0.01 / 3)  # today's Welch interval of B - A (df 2.94 -> 2)
    assert (b[f"{EM}.diff"], b[f"{EM}.diff_low"], b[f"{EM}.diff_high"]) == pytest.approx(
        (-0.2, -0.2 - half, -0.2 + half))
    assert "the per-seed values are not at hand" in (folder / "summary.md").read_text()
    with pytest.raises(UserError, match="no summary.csv in"):
        rebuild_report(tmp_path / "nothing")


def test_trends_power_and_data_design_on_hand_made_seed_units():
    # three entropy weights x three seeds; the metric rises 0.5 per unit weight plus seed noise
    weights, noise = [0.0, 0.1, 0.2], {"0": 0.01, "1": -0.02, "2": 0.01}
    configs = {f"c{w}": {"loss.entropy_weight": repr(w), "data.seed": "0"} for w in weights}
    units = pd.DataFrame([{"config": f"c{w}", "seed": seed, "runs": 1, "run_id": f"{w}{seed}",
                           EM: 0.5 + 0.5 * w + e + (0.01 * w if seed == "2" else 0.0)}
                          for w in weights for seed, e in noise.items()])
    summary = analyse(units, configs, [EM], resolve=0.05, baselines={c: "c0.0" for c in configs})
    assert summary.attrs["design"] == "Data held fixed: every run saw the splits of `data.seed` = 0."
    trend = summary.attrs["trends"].iloc[0]
    reference = dose_response([float(configs[c]["loss.entropy_weight"]) for c in units["config"]], units[EM])
    assert trend["param"] == "loss.entropy_weight" and trend["slope"] == pytest.approx(reference["slope"])
    assert (trend["slope_low"], trend["slope_high"]) == pytest.approx((reference["slope_low"], reference["slope_high"]))
    power = summary.attrs["power"].set_index("metric").loc[EM]
    spread = pooled_sd([units.loc[units["config"] == c, EM] for c in configs])
    assert power["sd"] == pytest.approx(spread["sd"]) and power["df"] == 6
    assert power["seeds_needed"] == seeds_needed(spread["sd"], 0.05)
    # paired: the baseline (weight 0) shares the seeds; c0.2's per-seed differences are 0.1, 0.1 and 0.102
    differences = paired_interval(units.loc[units["config"] == "c0.2", EM].to_numpy(),
                                  units.loc[units["config"] == "c0.0", EM].to_numpy())
    row = summary.set_index("config").loc["c0.2"]
    assert row["comparison"] == "paired" and row[f"{EM}.diff"] == pytest.approx(differences["diff"])
    assert row[f"{EM}.diff_sd"] == pytest.approx(differences["sd"])


def test_single_configuration_has_no_swept_params_or_figures(store, tmp_path):
    runs = load_runs("tagged", store, study="s1")
    paths = write_report(runs, tmp_path, dpi=30)
    assert sorted(paths) == ["csv", "markdown", "seeds", "time_to_90"]  # no swept param; the Kaplan-Meier figure
    assert "| config | seeds | runs | baseline |" in paths["markdown"].read_text()
    assert "## Time to learn: stalls and steps to 90%" in paths["markdown"].read_text()


def test_missing_experiment_and_no_finished_runs(store, tmp_path):
    with pytest.raises(UserError, match="'nope' not found .*ablation-test, empty, tagged"):
        load_runs("nope", store)
    with pytest.raises(UserError, match="'empty' .* has no finished runs"):
        load_runs("empty", store)
    missing = tmp_path / "absent.db"
    with pytest.raises(UserError, match="no MLflow store"):
        load_runs(EXPERIMENT, f"sqlite:///{missing}")
    assert not missing.exists()  # never created empty


def _compare_stage():
    path = Path(__file__).resolve().parents[1] / "stages" / "compare.py"
    spec = importlib.util.spec_from_file_location("compare_stage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_stage(store, tmp_path, monkeypatch, capsys):
    compare = _compare_stage()
    (tmp_path / "params.yaml").write_text(f"mlflow: {{experiment: {EXPERIMENT}}}\nviz: {{dpi: 30}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setattr(sys, "argv", ["compare.py", "--out-dir", "out"])
    compare.main()
    written = {p.name for p in (tmp_path / "out" / EXPERIMENT).iterdir()}  # study defaults to the experiment
    assert {"summary.csv", "summary.md", "loss.entropy_weight.png"} <= written
    assert f"16 runs of {EXPERIMENT!r} (study {EXPERIMENT!r})" in capsys.readouterr().out

    monkeypatch.setattr(sys, "argv", ["compare.py", "--experiment", "tagged", "--study", "s2"])
    compare.main()
    assert (tmp_path / "reports" / "s2" / "summary.md").is_file()
    assert np.array_equal(pd.read_csv(tmp_path / "reports" / "s2" / "summary.csv")["seeds"], [1])

    monkeypatch.setattr(sys, "argv", ["compare.py", "--experiment", "nope"])
    with pytest.raises(SystemExit) as exit_info:
        run_stage(compare.main)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: MLflow experiment 'nope' not found") and error.count("\n") == 1

"""The ablation report on a real temporary MLflow store: 2 entropy weights x 2 seeds with known metrics."""

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

from language_entropy.cli import run_stage
from language_entropy.errors import UserError
from language_entropy.report import load_runs, markdown_table, summarise, write_report

EXPERIMENT = "ablation-test"
# (entropy_weight, seed) -> metrics; the AUROC is logged by one run only (undefined elsewhere)
RUNS = {
    (0.0, 0): {"test.exact_match": 0.9, "test_ood.exact_match": 0.2, "test.mean_entropy_bits": 1.0},
    (0.0, 1): {"test.exact_match": 0.8, "test_ood.exact_match": 0.4, "test.mean_entropy_bits": 2.0},
    (0.1, 0): {"test.exact_match": 0.7, "test_ood.exact_match": 0.1, "test.mean_entropy_bits": 0.5,
               "test.auroc.semantic_entropy": 0.75},
    (0.1, 1): {"test.exact_match": 0.6, "test_ood.exact_match": 0.1, "test.mean_entropy_bits": 1.5},
}
SQRT_HALF = math.sqrt(0.5)  # sample std of two values 1 apart; of two values d apart it is d * sqrt(0.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store holding the 4 finished runs, one failed run, and an experiment without runs."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)  # mlflow.set_tracking_uri also sets it: restored afterwards
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
        mlflow.create_experiment("empty", artifact_location=(root / "empty").as_uri())
        for (weight, seed), metrics in RUNS.items():
            with mlflow.start_run(experiment_id=experiment_id):
                mlflow.log_params({"loss.entropy_weight": weight, "loss.continuity_weight": 0.0, "seed": seed})
                mlflow.log_metrics(metrics)
        mlflow.start_run(experiment_id=experiment_id)
        mlflow.log_params({"loss.entropy_weight": 5.0, "loss.continuity_weight": 0.0, "seed": 9})
        mlflow.log_metrics({"test.exact_match": 0.0})
        mlflow.end_run(status="FAILED")
        yield uri
        mlflow.set_tracking_uri(None)


def test_load_runs_keeps_finished_runs(store):
    runs = load_runs(EXPERIMENT, store)
    assert len(runs) == 4
    assert set(runs["params.loss.entropy_weight"]) == {"0.0", "0.1"}


def test_summary_means_and_sample_std(store):
    summary = summarise(load_runs(EXPERIMENT, store), "loss.entropy_weight")
    assert summary["loss.entropy_weight"].tolist() == [0.0, 0.1]
    assert summary["runs"].tolist() == [2, 2]
    assert summary["seeds"].tolist() == ["0,1", "0,1"]
    expected = {
        "test.exact_match.mean": [0.85, 0.65], "test.exact_match.std": [0.1 * SQRT_HALF, 0.1 * SQRT_HALF],
        "test_ood.exact_match.mean": [0.3, 0.1], "test_ood.exact_match.std": [0.2 * SQRT_HALF, 0.0],
        "test.mean_entropy_bits.mean": [1.5, 1.0], "test.mean_entropy_bits.std": [SQRT_HALF, SQRT_HALF],
        "test.exact_match.count": [2, 2],
        "test.auroc.semantic_entropy.mean": [np.nan, 0.75], "test.auroc.semantic_entropy.std": [np.nan, np.nan],
        "test.auroc.semantic_entropy.count": [0, 1],
    }
    for column, values in expected.items():
        np.testing.assert_allclose(summary[column].to_numpy(dtype=float), values, atol=1e-12, err_msg=column)


def test_report_files(store, tmp_path):
    paths = write_report(load_runs(EXPERIMENT, store), tmp_path / "reports", dpi=30, experiment=EXPERIMENT)
    table = pd.read_csv(paths["csv"])
    assert table[["loss.entropy_weight", "loss.continuity_weight", "runs"]].values.tolist() == [[0.0, 0.0, 2],
                                                                                               [0.1, 0.0, 2]]
    np.testing.assert_allclose(table["test.exact_match.mean"], [0.85, 0.65])
    markdown = paths["markdown"].read_text()
    assert "| loss.entropy_weight | loss.continuity_weight | runs |" in markdown
    assert "| 0.1 | 0 | 2 | 0.65 ± 0.071 (n=2) |" in markdown
    assert "0.75 (n=1)" in markdown and "–" in markdown  # one AUROC; none for weight 0
    image = matplotlib.image.imread(paths["figure"])
    assert image.shape[:2] == (round(2 * 3.6 * 30), 4 * 4 * 30)


def test_summary_by_two_params_and_baseline_rows(tmp_path):
    """A one-at-a-time sweep: the figure's entropy row holds continuity at its default (0) and vice versa."""
    runs = pd.DataFrame({
        "params.loss.entropy_weight": ["0.0", "0.2", "0.0", "0.0"],
        "params.loss.continuity_weight": ["0.0", "0.0", "0.5", "1"],
        "params.seed": ["0", "0", "0", "0"],
        "metrics.test.exact_match": [1.0, 0.5, 0.25, 0.125],
    })
    summary = summarise(runs, ["loss.entropy_weight", "loss.continuity_weight"], ["test.exact_match"])
    assert summary[["loss.entropy_weight", "loss.continuity_weight"]].values.tolist() == [
        [0.0, 0.0], [0.0, 0.5], [0.0, 1.0], [0.2, 0.0]]
    assert summary["test.exact_match.std"].isna().all()  # one seed each
    assert markdown_table(summary, ["loss.entropy_weight", "loss.continuity_weight"], ["test.exact_match"]
                          ).splitlines()[2] == "| 0 | 0 | 1 | 1 (n=1) |"
    paths = write_report(runs, tmp_path, dpi=30, metrics=["test.exact_match"])
    assert paths["figure"].stat().st_size > 0


def test_non_numeric_param_is_a_user_error():
    runs = pd.DataFrame({"params.loss.entropy_weight": ["a"], "metrics.test.exact_match": [1.0]})
    with pytest.raises(UserError, match="not numeric"):
        summarise(runs, "loss.entropy_weight")


def test_missing_experiment_and_no_finished_runs(store, tmp_path):
    with pytest.raises(UserError, match="'nope' not found .*ablation-test, empty"):
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
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"ablation.csv", "ablation.md", "ablation.png"}
    assert "4 runs of 'ablation-test'" in capsys.readouterr().out

    monkeypatch.setattr(sys, "argv", ["compare.py", "--experiment", "nope"])
    with pytest.raises(SystemExit) as exit_info:
        run_stage(compare.main)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: MLflow experiment 'nope' not found") and error.count("\n") == 1

"""End to end: the real `dvc repro`, `dvc exp run` and `dvc queue` on a tiny project in a temporary git repo."""

import json
import time

import mlflow
import pandas as pd
import pytest
import torch
from conftest import run
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

STAGES = ["generate-data", "compute-theoretical-entropy", "train", "evaluate", "visualize"]


def runs_of(project, experiment="tiny") -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment])


def test_repro_then_experiment_skips_unchanged_stages(tiny_project):
    repro = run(["dvc", "repro"], tiny_project)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in repro.stdout
    report = json.loads((tiny_project / "metrics" / "eval.json").read_text())
    for split in ("test", "test_ood"):
        for key in ("exact_match", "exact_match.ci_low", "exact_match.ci_high", "perplexity", "token_ece",
                    "hidden_norm", "continuity_l2", "continuity_cosine"):
            assert 0 <= report[split][key] < float("inf")
        assert set(report[split]["sequence_ece"]) == {"greedy", "sampled_t1"}
        assert set(report[split]["auroc"]) >= {"semantic_entropy", "semantic_entropy.ci_low", "token_entropy"}
        assert set(report[split]["token_error_auroc"]) >= {"all", "add", "sub"}
        assert set(report[split]["per_operation"]) == {"add", "sub"}
    assert set(report["test_ood"]["stratified_auroc"]) >= {"semantic_entropy", "token_entropy", "sequence_nll"}
    assert -1 <= report["digit_geometry"]["ring_rank_correlation"] <= 1 and 0 <= report["learning"]["area"] <= 1
    problems = pd.read_parquet(tiny_project / "metrics" / "problems.parquet")
    assert set(problems["split"]) == {"test", "test_ood"} and problems["correct"].dtype == bool
    curve = pd.read_csv(tiny_project / "metrics" / "train_curve.csv")
    assert curve["step"].tolist() == [0, 10, 20]  # step 0 and the early schedule's steps <= train.steps
    by_step = pd.read_csv(tiny_project / "metrics" / "entropy_by_step.csv")
    assert {"digit_blind_running_bits", "digit_blind_all_bits"} <= set(by_step.columns)
    assert (tiny_project / "metrics" / "sequence_reliability.csv").exists()

    experiment = run(["dvc", "exp", "run", "-S", "loss.entropy_weight=0.2"], tiny_project)
    for stage in ("generate-data", "compute-theoretical-entropy"):
        assert f"Stage '{stage}' didn't change, skipping" in experiment.stdout
    for stage in ("train", "evaluate", "visualize"):
        assert f"Running stage '{stage}'" in experiment.stdout

    runs = runs_of(tiny_project)
    assert sorted(runs["params.loss.entropy_weight"].astype(float)) == [0.0, 0.2]
    assert (runs["status"] == "FINISHED").all()
    assert runs["metrics.test.exact_match"].notna().all()
    show = run(["dvc", "exp", "show", "--json"], tiny_project)
    assert '"entropy_weight": 0.2' in show.stdout and '"exact_match"' in show.stdout

    # Only an eval param changes: DVC reuses the trained model, and evaluation goes to a run of its own
    # (MLflow params are immutable), linked to the training run it measured.
    evaluation_only = run(["dvc", "exp", "run", "-S", "eval.semantic_samples=3"], tiny_project)
    assert "Stage 'train' didn't change, skipping" in evaluation_only.stdout
    runs = runs_of(tiny_project).set_index("run_id")
    derived = runs[runs["params.eval.semantic_samples"] == "3"]
    assert len(derived) == 1 and derived["metrics.test.exact_match"].notna().all()
    trained_with_02 = runs.index[(runs["params.loss.entropy_weight"] == "0.2")
                                 & (runs["params.eval.semantic_samples"] == "4")]
    assert derived["tags.train_run_id"].tolist() == trained_with_02.tolist()


def test_three_queued_experiments_share_the_root_store(tiny_project):
    weights = ["0.05", "0.1", "0.3"]
    for weight in weights:
        run(["dvc", "exp", "run", "--queue", "-S", f"loss.entropy_weight={weight}"], tiny_project)
    assert not (tiny_project / "mlflow.db").exists()  # a fresh store: the three workers race to create it
    run(["dvc", "queue", "start", "-j", "3"], tiny_project)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], tiny_project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    failed = [line.split()[1] for line in status.splitlines() if line.endswith("Failed")]
    logs = "".join(run(["dvc", "queue", "logs", name], tiny_project, check=False).stdout[-3000:] for name in failed)
    assert status.count("Success") == 3, status + logs

    runs = runs_of(tiny_project)
    assert sorted(runs["params.loss.entropy_weight"]) == sorted(weights)
    assert (runs["status"] == "FINISHED").all()
    client = MlflowClient()
    for run_id in runs["run_id"]:
        local = client.download_artifacts(run_id, "checkpoint/model.pt", str(tiny_project / "download" / run_id))
        payload = torch.load(local, map_location="cpu", weights_only=True)
        assert payload["mlflow_run_id"] == run_id
        assert (tiny_project / "mlartifacts").as_uri() in client.get_run(run_id).info.artifact_uri

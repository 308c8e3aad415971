"""The researcher's daily loop, end to end on a tiny project: recovery from a failed experiment, MLflow run names."""

import json

import mlflow
import pytest
from conftest import run
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_the_readme_recipe_restores_the_workspace_after_a_failed_experiment(tiny_project):
    run(["dvc", "repro", "--quiet"], tiny_project)
    run(["git", "add", "-A"], tiny_project)
    run(["git", "commit", "-q", "-m", "results"], tiny_project)
    failed = run(["dvc", "exp", "run", "-S", "loss.entropy_weight=abc"], tiny_project, check=False)
    assert failed.returncode != 0 and "loss.entropy_weight must be a number" in failed.stderr
    # what DVC leaves behind: the bad value in params.yaml, the failed stage's outs deleted
    assert "abc" in (tiny_project / "params.yaml").read_text()
    assert not (tiny_project / "models" / "model.pt").exists()
    assert "train" in run(["dvc", "status"], tiny_project).stdout

    run(["git", "restore", "params.yaml", "metrics/"], tiny_project)  # the README's two commands
    run(["dvc", "checkout", "--quiet"], tiny_project)
    assert "up to date" in run(["dvc", "status"], tiny_project).stdout
    assert (tiny_project / "models" / "model.pt").exists()
    assert run(["git", "status", "--porcelain"], tiny_project).stdout == ""


def test_mlflow_runs_are_named_after_the_dvc_experiment_and_the_swept_values(tiny_project):
    run(["dvc", "repro", "--quiet"], tiny_project)
    run(["git", "add", "-A"], tiny_project)
    run(["git", "commit", "-q", "-m", "results"], tiny_project)
    run(["dvc", "exp", "run", "--quiet", "-S", "loss.entropy_weight=0.2"], tiny_project)
    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"]).set_index("tags.dvc_exp_name")
    assert runs.loc["workspace", "tags.mlflow.runName"] == "workspace"
    history = MlflowClient().get_metric_history(runs.loc["workspace", "run_id"], "train_loss")
    assert [point.step for point in history] == [5, 10, 15, 20]  # train.log_every: 5 in the tiny params
    assert [point.step for point in MlflowClient().get_metric_history(runs.loc["workspace", "run_id"], "lr")] == \
        [5, 10, 15, 20]
    assert runs.loc["workspace", "tags.swept"] == "none"
    experiment = next(name for name in runs.index if name != "workspace")
    assert runs.loc[experiment, "tags.mlflow.runName"] == f"{experiment} loss.entropy_weight=0.2"
    head, before = run(["git", "rev-parse", "HEAD", "HEAD~1"], tiny_project).stdout.split()
    assert runs.loc[experiment, "tags.dvc_exp_baseline_rev"] == head  # the commit the experiment was based on
    assert runs.loc["workspace", "tags.dvc_exp_baseline_rev"] == before  # HEAD when `dvc repro` ran


def test_dvc_plots_render_one_series_per_split_and_operation_and_nothing_unasked(tiny_project):
    run(["dvc", "repro", "--quiet"], tiny_project)
    shown = json.loads(run(["dvc", "plots", "show", "--json"], tiny_project).stdout)
    assert "errors" not in shown, shown.get("errors")
    names = list(shown)
    csv_plots = [name for name in names if not name.endswith(".png")]
    assert csv_plots == ["validation exact match", "training and validation loss",
                         "entropy by answer step, model against the digit-blind level (bits, symlog)",
                         "sequence reliability (probability of the answer against exact match)",
                         "exact match against sampling temperature"]  # no automatic per-CSV plots
    entropy = shown[csv_plots[2]][0]["content"]
    rows = entropy["data"]["values"]
    assert {(row["split"], row["operation"]) for row in rows} == {
        (split, op) for split in ("test", "test_ood") for op in ("add", "sub")}
    assert entropy["encoding"]["color"]["field"] == "series"  # one line per split and operation

"""The researcher's daily loop, end to end on a tiny project: recovery from a failed experiment, MLflow run names."""

import json
import sys

import mlflow
import pandas as pd
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
    shown = shown["data"]
    names = list(shown)
    csv_plots = [name for name in names if not name.endswith(".png")]
    assert csv_plots == ["validation exact match", "training and validation loss",
                         "entropy by answer step, model against the digit-blind level (bits, symlog)",
                         "sequence reliability (probability of the answer against exact match)",
                         "exact match against sampling temperature", "RL fine-tuning, reward and exact match",
                         "RL fine-tuning, policy entropy of the sampled tokens (bits)",
                         "RL validation exact match against policy entropy (bits)"]  # no automatic per-CSV plots
    entropy = shown[csv_plots[2]][0]["content"]
    rows = entropy["data"]["values"]
    assert {(row["split"], row["operation"]) for row in rows} == {
        (split, op) for split in ("test", "test_ood") for op in ("add", "sub")}
    assert entropy["encoding"]["color"]["field"] == "series"  # one line per split and operation


def test_a_queued_two_by_two_sweep_gives_a_report_of_two_configurations_with_two_seeds(tiny_project):
    run(["dvc", "exp", "run", "--queue", "--quiet", "-S", "mlflow.study=tiny-study", "-S", "train.threads=1",
         "-S", "loss.entropy_weight=0,0.1", "-S", "seed=0,1"], tiny_project)
    run(["dvc", "exp", "run", "--run-all", "-j", "2"], tiny_project, timeout=900)
    run([sys.executable, "stages/compare.py", "--study", "tiny-study", "--out-dir", "reports"], tiny_project)
    summary = pd.read_csv(tiny_project / "reports" / "tiny-study" / "summary.csv")
    assert len(summary) == 2
    assert sorted(summary["loss.entropy_weight"].astype(float)) == [0.0, 0.1]
    assert (summary["test.exact_match.n"] == 2).all()  # two seeds each, every one a queued experiment
    assert (tiny_project / "reports" / "tiny-study" / "summary.md").is_file()


HEADLINE_KEYS = {"exact_match", "exact_match_ci_low", "exact_match_ci_high", "exact_match_add", "exact_match_sub",
                 "mean_entropy_bits", "sequence_ece", "perplexity"}
OOD_DETECTORS = {"auroc_semantic_entropy", "auroc_token_entropy", "auroc_sequence_nll"}
OOD_BY_LENGTH = {"exact_match_3_digits", "exact_match_3_digits_before_rl"}  # the tiny OOD split: 3x3 digits
BEFORE_RL = {"exact_match_before_rl", "exact_match_add_before_rl", "exact_match_sub_before_rl"}  # the trained model
TRAINING = {"learned", "final", "steps_to_50", "steps_to_90"}  # whether the training learned, and when


def test_headline_adhoc_runs_and_a_narrow_exp_show(tiny_project):
    run(["dvc", "repro", "--quiet"], tiny_project)
    summary = json.loads((tiny_project / "metrics" / "summary.json").read_text())
    assert set(summary) == {"test", "test_ood", "training"}
    assert set(summary["test"]) == HEADLINE_KEYS | BEFORE_RL
    assert set(summary["test_ood"]) == HEADLINE_KEYS | OOD_DETECTORS | OOD_BY_LENGTH
    assert set(summary["training"]) == TRAINING
    # narrow enough for `dvc exp show`: at the defaults (OOD 4 and 5 digits, before and after RL) 11 + 15 + 4 = 30
    assert sum(len(numbers) for numbers in summary.values()) <= 30
    run(["git", "add", "-A"], tiny_project)
    run(["git", "commit", "-q", "-m", "results"], tiny_project)

    # an ad-hoc evaluation writes under reports/adhoc/ and into a run of its own, nothing of the pipeline's
    metrics_before = {p.name: p.read_bytes() for p in (tiny_project / "metrics").iterdir()}
    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    (pipeline_run,) = mlflow.search_runs(experiment_names=["tiny"])["run_id"]
    before = MlflowClient().get_run(pipeline_run).data.metrics
    done = run([sys.executable, "stages/evaluate.py", "--samples", "5", "--verbose"], tiny_project)
    assert "ad-hoc evaluation written to reports/adhoc/" in done.stderr
    assert {p.name: p.read_bytes() for p in (tiny_project / "metrics").iterdir()} == metrics_before
    assert MlflowClient().get_run(pipeline_run).data.metrics == before
    runs = mlflow.search_runs(experiment_names=["tiny"])
    adhoc = runs[runs["run_id"] != pipeline_run]
    assert adhoc["tags.adhoc"].tolist() == ["true"] and adhoc["metrics.test.n_problems"].tolist() == [5.0]
    (folder,) = (tiny_project / "reports" / "adhoc").iterdir()
    assert json.loads((folder / "eval.json").read_text())["test"]["n_problems"] == 5
    assert run(["git", "status", "--porcelain"], tiny_project).stdout == ""  # nothing DVC or git tracks changed

    run(["dvc", "exp", "run", "--quiet", "-S", "loss.entropy_weight=0.2"], tiny_project)
    table = run(["dvc", "exp", "show", "--only-changed", "--csv"], tiny_project).stdout
    header = table.splitlines()[0].split(",")
    assert "loss.entropy_weight" in header and len(header) < 40, header

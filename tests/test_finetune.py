"""The finetune stage end to end on one tiny scratch project: `dvc repro`, the rl.steps 0 pass-through, kill -9
then resume, refusals, and `dvc exp run -S rl.*` re-running only finetune, evaluate and visualize."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_PARAMS, git_env, make_project, merged, run

from language_entropy.checkpoint import model_payload, save_checkpoint
from language_entropy.evaluation import flatten_numbers
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
RL = {"steps": 8, "prompts_per_step": 4, "samples_per_prompt": 4, "prompt_size": 200, "val_size": 40,
      "eval_every": 4, "log_every": 2, "checkpoint_every": 4, "digits": {"min": 3, "max": 3}}
RL_PARAMS = merged(TINY_PARAMS, {"rl": RL})


def stage(cwd: Path, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(cwd / "stages" / f"{name}.py"), *args], cwd=cwd, capture_output=True,
                          text=True, env=git_env(), timeout=300)
    if check and done.returncode:
        raise AssertionError(f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def params_file(project: Path, name: str, **sections) -> str:
    (project / name).write_text(yaml.safe_dump(merged(RL_PARAMS, sections)))
    return name


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def finetune_runs(project: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    return runs[runs.get("tags.stage", pd.Series(index=runs.index)) == "finetune"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    path = make_project(tmp_path_factory.mktemp("rl") / "project", RL_PARAMS)
    repro = run(["dvc", "repro"], path)
    assert "Running stage 'finetune'" in repro.stdout
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "results"], path)
    return path


@pytest.mark.slow
def test_repro_writes_the_curve_the_fit_and_a_headline_before_and_after_rl(project):
    curve = pd.read_csv(project / "metrics" / "rl_curve.csv")
    assert curve["step"].tolist() == [0, 2, 4, 6, 8]  # step 0 (the trained model) and every rl.log_every
    assert curve["val_exact_match"].notna().tolist() == [True, False, True, False, True]  # rl.eval_every
    assert ((curve["reward"] >= 0) & (curve["reward"] <= 1)).all() and (curve["entropy_bits"] > 0).all()
    fit = json.loads((project / "metrics" / "rl_fit.json").read_text())
    assert fit["steps"] == 8 and fit["points"] == 3 and set(fit) >= {"a", "b", "ceiling", "r2"}
    assert fit["early_points"] == 1 and fit["early_ceiling"] is None  # steps <= 15% of 8: step 0 alone, no forecast
    assert fit["final"] == curve["val_exact_match"].iloc[-1]
    by_step = json.loads((project / "metrics" / "eval.json").read_text())["rl_val"]["entropy_by_step"]
    assert list(by_step) == [str(k) for k in range(len(by_step))] and len(by_step) >= 2
    assert all(row["before_bits"] > 0 and row["after_bits"] > 0 and set(row) == {
        "before_bits", "after_bits", "digit_blind_running_bits"} for row in by_step.values())
    headline = json.loads((project / "metrics" / "summary.json").read_text())
    ood, test = headline["test_ood"], headline["test"]
    assert {"exact_match_3_digits", "exact_match_3_digits_before_rl"} <= set(ood)  # OOD is 3x3 in the tiny data
    # the trained lengths before and after RL, overall and per operation, beside eval.json's full numbers
    report = json.loads((project / "metrics" / "eval.json").read_text())["test"]
    assert test["exact_match_before_rl"] == report["before_rl"]["exact_match"]
    assert {f"exact_match_{op}_before_rl" for op in ("add", "sub")} <= set(test)
    assert all(0 <= test[key] <= 1 for key in test if key.startswith("exact_match"))
    # 20 tiny steps learn nothing: the training section says it stalled, as the train stage's learning.json does
    learning = json.loads((project / "metrics" / "learning.json").read_text())
    assert headline["training"]["learned"] == learning["learned"] == 0.0
    assert headline["training"]["final"] == learning["final"] < 0.9 and headline["training"]["steps_to_90"] is None
    for figure in ("rl_entropy_accuracy.png", "rl_entropy_by_step.png", "rl_curves.png"):
        assert (project / "plots" / figure).stat().st_size > 0

    runs = finetune_runs(project)
    assert len(runs) == 1 and runs["status"].tolist() == ["FINISHED"]
    trained = torch.load(project / "models" / "model.pt", map_location="cpu", weights_only=True)["mlflow_run_id"]
    assert runs["tags.train_run_id"].tolist() == [trained]  # a run of its own, tagged with its training run
    history = mlflow.MlflowClient().get_metric_history(runs["run_id"].iloc[0], "rl_reward")
    assert [point.step for point in history] == [0, 2, 4, 6, 8]
    assert runs["metrics.test_ood.exact_match"].notna().all()  # evaluate logged into the finetune run
    assert runs["metrics.rl_val.entropy_by_step.0.after_bits"].notna().all()
    assert runs["metrics.rl_fit.final"].tolist() == [fit["final"]]


@pytest.mark.slow
def test_rl_steps_0_passes_the_trained_model_through_with_identical_evaluation_numbers(project):
    metrics = project / "metrics_steps0"
    metrics.mkdir()
    for name in ("theoretical_entropy.csv", "theoretical_entropy.json"):
        shutil.copy(project / "metrics" / name, metrics / name)
    params = params_file(project, "steps0.yaml", rl={"steps": 0},
                         paths={"finetuned": "models/passthrough.pt", "metrics": "metrics_steps0"})
    stage(project, "finetune", "--params", params)
    assert (project / "models" / "passthrough.pt").read_bytes() == (project / "models" / "model.pt").read_bytes()
    assert pd.read_csv(metrics / "rl_curve.csv")["step"].tolist() == [0]
    stage(project, "evaluate", "--params", params, "--quiet")
    passed = flatten_numbers(json.loads((metrics / "eval.json").read_text()))

    stage(project, "evaluate", "--params", params, "--base", "models/model.pt")  # the trained model, ad hoc
    (adhoc,) = (project / "reports" / "adhoc").iterdir()
    trained = flatten_numbers(json.loads((adhoc / "eval.json").read_text()))
    assert len(trained) > 100 and {key: passed[key] for key in trained} == trained
    before = {key: value for key, value in passed.items() if ".before_rl." in key}
    assert before and all(passed[key.replace(".before_rl", "")] == value for key, value in before.items()
                          if key.endswith("exact_match"))


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(project):
    params = params_file(project, "long.yaml", rl={"steps": 120, "checkpoint_every": 10, "eval_every": 60},
                         paths={"finetuned": "models/long.pt", "metrics": "metrics_long"})
    stage(project, "finetune", "--params", params)
    uninterrupted = weights(project / "models" / "long.pt")
    curve = pd.read_csv(project / "metrics_long" / "rl_curve.csv")
    (project / "models" / "long.pt").unlink()

    process = subprocess.Popen([sys.executable, "stages/finetune.py", "--params", params], cwd=project,
                               env=git_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((project / "checkpoints").glob("resume-*.pt")) and time.time() < deadline \
            and process.poll() is None:
        time.sleep(0.02)
    (checkpoint,) = (project / "checkpoints").glob("resume-*.pt")
    first = checkpoint.stat().st_mtime_ns  # written at step 0
    while checkpoint.stat().st_mtime_ns == first and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)  # until a later checkpoint replaces it: kill mid-run
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (project / "models" / "long.pt").exists(), "killed too late to test resume"

    resumed = stage(project, "finetune", "--params", params)
    assert f"resuming from {checkpoint.relative_to(project)} at step" in resumed.stderr
    got = weights(project / "models" / "long.pt")
    assert all(torch.equal(uninterrupted[name], got[name]) for name in uninterrupted)
    again = pd.read_csv(project / "metrics_long" / "rl_curve.csv")
    columns = [c for c in curve.columns if c not in ("wall_time_s", "step_ms")]
    pd.testing.assert_frame_equal(again[columns], curve[columns])
    assert not list((project / "checkpoints").glob("resume-*.pt"))  # finished: the resume state is gone


@pytest.mark.slow
def test_an_rl_experiment_reruns_only_finetune_evaluate_and_visualize(project):
    experiment = run(["dvc", "exp", "run", "-S", "rl.entropy_weight=-0.05"], project)
    for name in ("generate-data", "compute-theoretical-entropy", "train"):
        assert f"Stage '{name}' didn't change, skipping" in experiment.stdout
    for name in ("finetune", "evaluate", "visualize"):
        assert f"Running stage '{name}'" in experiment.stdout
    runs = finetune_runs(project)
    runs = runs[runs["params.rl.steps"] == "8"]  # not the other tests' runs of their own params files
    assert sorted(runs["params.rl.entropy_weight"].astype(float)) == [-0.05, 0.0]
    assert runs["tags.train_run_id"].nunique() == 1  # both from the one trained model

    # the prompt distribution is generate-data's: new RL splits, the same training splits, so train stays
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["rl"]["val_size"] = 30
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "generate-data"], project)
    changed = set(yaml.safe_load(run(["dvc", "status", "--json"], project).stdout))
    assert "finetune" in changed and "train" not in changed


def test_bad_rl_params_and_a_model_of_other_params_are_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(merged(RL_PARAMS, {"rl": {"samples_per_prompt": 1}})))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "finetune.py"), "--params", str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, env=git_env(), timeout=120)
    assert done.returncode == 2 and done.stderr == (
        f"error: {bad}: rl.samples_per_prompt must be >= 2 (a group needs two answers for a baseline) (got 1)\n")

    trained = ArithmeticDecoder(ModelConfig(n_layer=1, n_head=2, n_embd=64, max_seq_len=32))
    save_checkpoint(tmp_path / "models" / "model.pt", model_payload(trained))
    other = tmp_path / "params.yaml"
    other.write_text(yaml.safe_dump(RL_PARAMS))  # n_embd 32
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "finetune.py")], cwd=tmp_path, capture_output=True,
                          text=True, env=git_env(), timeout=120)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "was trained with another model config than params (model.n_embd: 64 -> 32)" in done.stderr
    assert not (tmp_path / "models" / "finetuned.pt").exists() and not (tmp_path / "mlflow.db").exists()

"""The train stage: bit-exact resume after kill -9, DDP equals one process, and refusals of bad input."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import TINY_PARAMS, git_env, merged

from language_entropy.params import TrainConfig
from language_entropy.training import BatchSampler, lr_factor

ROOT = Path(__file__).resolve().parents[1]


def setup(tmp_path: Path, **sections) -> Path:
    """A working directory with tiny data and a params.yaml whose sections are overridden by `sections`."""
    params = merged(TINY_PARAMS, sections)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage(tmp_path, "generate_data")
    return tmp_path


def stage(cwd: Path, name: str, *args: str, check: bool = True, env: dict | None = None, timeout: int = 300):
    done = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=cwd, capture_output=True,
                          text=True, env=env or git_env(), timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def run_status(cwd: Path) -> list[str]:
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["tiny"])["status"].tolist()


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0)
    assert lr_factor(60, config) == pytest.approx(0.55)
    assert lr_factor(110, config) == pytest.approx(0.1)


def test_batch_sampler_is_a_function_of_the_step_and_covers_each_epoch():
    sampler = BatchSampler(n_rows=10, batch_size=4, seed=3)
    first_epoch = torch.cat([sampler.indices(0), sampler.indices(1), sampler.indices(2)[:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    again = BatchSampler(n_rows=10, batch_size=4, seed=3)
    assert torch.equal(again.indices(7), sampler.indices(7))
    assert not torch.equal(BatchSampler(10, 4, seed=4).indices(0), sampler.indices(0))


@pytest.mark.slow
def test_kill_9_then_resume_gives_bit_identical_weights(tmp_path):
    train = {"steps": 400, "checkpoint_every": 25, "eval_every": 100}
    reference = setup(tmp_path / "reference", train=train)
    stage(reference, "train")

    crashed = setup(tmp_path / "crashed", train=train)
    process = subprocess.Popen([sys.executable, str(ROOT / "stages" / "train.py")], cwd=crashed, env=git_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((crashed / "checkpoints").glob("resume-*.pt")) and time.time() < deadline \
            and process.poll() is None:
        time.sleep(0.02)
    (checkpoint,) = (crashed / "checkpoints").glob("resume-*.pt")  # named by the run's fingerprint
    first = checkpoint.stat().st_mtime_ns  # written at step 0, with the MLflow run id
    while checkpoint.stat().st_mtime_ns == first and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)  # until a later checkpoint replaces it: kill mid-run
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not (crashed / "models" / "model.pt").exists(), "killed too late to test resume"

    resumed = stage(crashed, "train")
    assert f"resuming from {checkpoint.relative_to(crashed)} at step" in resumed.stderr
    assert "at step 0" not in resumed.stderr
    expected, got = weights(reference / "models" / "model.pt"), weights(crashed / "models" / "model.pt")
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    curve = (crashed / "metrics" / "train_curve.csv").read_text()
    assert curve.count("\n") == 1 + 7  # header + steps 0, 25, 50, 100..400: the resumed run continued the curve
    assert run_status(crashed) == ["FINISHED"]  # one MLflow run, continued


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    # random abacus offsets on (the default): each row must get the same offset on 1 or 2 ranks
    common = {"model": {"abacus_max_offset": 4}, "train": {"steps": 6, "eval_every": 6, "batch_size": 32}}
    single = setup(tmp_path / "single", **common)
    stage(single, "train")
    double = setup(tmp_path / "double", model=common["model"], train={**common["train"], "nproc_per_node": 2})
    stage(double, "train", timeout=600)
    one, two = weights(single / "models" / "model.pt"), weights(double / "models" / "model.pt")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5)


class WritesAFile:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    cwd = setup(tmp_path)
    evil, marker = cwd / "evil.pt", cwd / "pwned"
    payload = WritesAFile()
    payload.target = marker
    torch.save({"model_state": payload}, evil)  # a real torch checkpoint whose pickle calls os.system
    done = stage(cwd, "train", "--base", str(evil), check=False)
    assert done.returncode == 2
    assert done.stderr == f"error: {evil}: refused to load: it holds code or objects other than plain data " \
                          "(weights_only); nothing in it was run\n"
    assert not marker.exists()
    assert not (cwd / "mlflow.db").exists()  # refused before anything was tracked


def test_truncated_and_mismatched_base_checkpoints(tmp_path):
    cwd = setup(tmp_path)
    stage(cwd, "train")
    model = cwd / "models" / "model.pt"
    truncated = cwd / "truncated.pt"
    truncated.write_bytes(model.read_bytes()[:1000])
    done = stage(cwd, "train", "--base", str(truncated), check=False)
    assert done.returncode == 2 and "truncated.pt" in done.stderr and len(done.stderr.splitlines()) == 1

    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["model"].update(n_embd=64, n_layer=2)
    (cwd / "other.yaml").write_text(yaml.safe_dump(params))
    done = stage(cwd, "train", "--params", "other.yaml", "--base", str(model), check=False)
    assert done.returncode == 2
    assert "model.n_layer: 1 -> 2" in done.stderr and "model.n_embd: 32 -> 64" in done.stderr

    continued = stage(cwd, "train", "--base", str(model))
    assert "weights and optimizer state loaded" in continued.stderr

    resume_state = cwd / "state.pt"
    torch.save({"step": 3, "curve": []}, resume_state)
    done = stage(cwd, "train", "--base", str(resume_state), check=False)
    assert done.returncode == 2 and "not a model checkpoint" in done.stderr


def test_non_finite_loss_stops_with_the_step_and_term(tmp_path):
    cwd = setup(tmp_path, train={"lr": 1e12, "warmup_steps": 0, "grad_clip": 1e30, "steps": 50})
    done = stage(cwd, "train", check=False)
    assert done.returncode == 2
    diverged = r"error: (ce_loss|loss) became (nan|inf) at step \d+; the last good checkpoint is kept"
    assert re.search(diverged, done.stderr)
    assert run_status(cwd) == ["FAILED"]
    assert not (cwd / "models" / "model.pt").exists()


def test_unreachable_tracking_server_fails_fast_before_training(tmp_path):
    cwd = setup(tmp_path)
    env = {**git_env(), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    start = time.time()
    done = stage(cwd, "train", check=False, env=env)
    assert time.time() - start < 10 + 5  # + interpreter and torch start-up
    assert done.returncode == 2
    assert "MLflow tracking server http://127.0.0.1:9 (MLFLOW_TRACKING_URI) is not reachable" in done.stderr
    assert not (cwd / "checkpoints").exists()


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_marks_the_run_killed(tmp_path):
    cwd = setup(tmp_path, train={"steps": 100000, "checkpoint_every": 100000, "eval_every": 100000})
    process = subprocess.Popen([sys.executable, str(ROOT / "stages" / "train.py")], cwd=cwd, env=git_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    # the step-0 resume checkpoint is written just before the loop starts (mlflow.db + 3 s was too early
    # on a loaded machine: the signal came before the handlers and killed the process outright)
    while not list((cwd / "checkpoints").glob("resume-*.pt")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM: checkpoint written" in stderr
    assert len(list((cwd / "checkpoints").glob("resume-*.pt"))) == 1
    assert run_status(cwd) == ["KILLED"]


def test_ddp_launch_reports_user_mistakes_in_one_line_before_starting_workers(tmp_path):
    cwd = setup(tmp_path, train={"nproc_per_node": 2})
    (cwd / "data" / "val.parquet").unlink()
    done = stage(cwd, "train", check=False)
    assert done.returncode == 2
    assert done.stderr == "error: data/val.parquet not found: run `dvc repro generate-data` first\n"

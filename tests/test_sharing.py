"""Beyond one machine: a real `mlflow server` as the team tracking store, and a DVC remote as the shared cache."""

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from conftest import git_env, run
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1: sqlite backend store, proxied artifact folder."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.5)
    yield uri
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


def test_pipeline_logs_to_a_real_mlflow_server(tiny_project, mlflow_server, tmp_path):
    env = {**git_env(), "MLFLOW_TRACKING_URI": mlflow_server}
    run(["dvc", "repro"], tiny_project, env=env)
    assert not (tiny_project / "mlflow.db").exists()  # nothing went to the embedded store

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tiny")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["loss.entropy_weight"] == "0.0"
    assert logged.data.params["data.digits.max"] == "2"
    assert 0.0 <= logged.data.metrics["test.exact_match"] <= 1.0
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val_loss")] == [0, 10, 20]
    local = client.download_artifacts(logged.info.run_id, "checkpoint/model.pt", str(tmp_path))
    payload = torch.load(local, map_location="cpu", weights_only=True)
    assert payload["mlflow_run_id"] == logged.info.run_id
    assert {"trajectories.png", "digit_geometry.png"} <= {a.path.split("/")[-1]
                                                          for a in client.list_artifacts(logged.info.run_id, "plots")}
    assert (tmp_path / "server-artifacts").is_dir()  # the server stored the artifacts it was sent


def test_dvc_remote_push_then_pull_into_a_fresh_clone(tiny_project, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], tiny_project)
    run(["dvc", "repro"], tiny_project)
    run(["dvc", "push"], tiny_project)
    run(["git", "add", "-A"], tiny_project)
    run(["git", "commit", "-q", "-m", "results"], tiny_project)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(tiny_project), str(clone)], tmp_path)
    assert not (clone / "models" / "model.pt").exists()
    run(["dvc", "pull"], clone)
    assert (clone / "models" / "model.pt").read_bytes() == (tiny_project / "models" / "model.pt").read_bytes()
    status = run(["dvc", "status"], clone)
    assert "Data and pipelines are up to date." in status.stdout

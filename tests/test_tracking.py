"""MLflow tracking helpers on a real sqlite store."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from language_entropy.pipeline import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    previous = mlflow.get_tracking_uri()
    yield tracking.connect("tracking-test", root=tmp_path)
    mlflow.set_tracking_uri(previous)


def test_a_logged_split_has_the_schema_digest_and_size_of_the_whole_frame(store):
    """The schema is inferred from the first rows (fast); it must equal MLflow's inference over every row."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.integers(0, 1000, 3000).astype(str), "op": rng.choice(["add", "sub"], 3000),
                          "a_digits": rng.integers(1, 4, 3000).astype(np.int8)})
    frame["text"] = frame["a"] + "+" + frame["op"]
    run_id = tracking.start_run(store)
    tracking.log_dataset(frame, source="data/train.csv", split="train")
    tracking.end_run()
    logged = MlflowClient().get_run(run_id).inputs.dataset_inputs[0].dataset
    whole = mlflow.data.from_pandas(frame, source="data/train.csv", name="train")  # MLflow's own, every row
    assert json.loads(logged.schema) == {"mlflow_colspec": whole.schema.to_dict()}
    assert logged.digest == whole.digest and logged.name == "train"
    assert json.loads(logged.profile)["num_rows"] == 3000

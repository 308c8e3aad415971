"""Batched seeds: K runs trained as one vmapped model equal K separate `Trainer`s (weights, AdamW state and curves,
to float tolerance), are written as the train stage writes separate runs, and what cannot be batched is refused
naming the param."""

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_PARAMS
from mlflow.tracking import MlflowClient

from benchmarks.batched_seeds import prepare_run
from language_entropy.batched import BatchedTrainer
from language_entropy.data import generate_splits
from language_entropy.errors import UserError
from language_entropy.params import DataConfig, DigitRange, LossConfig, ModelConfig, TrainConfig
from language_entropy.pipeline.batched import run_batched_training
from language_entropy.pipeline.train import run_training
from language_entropy.training import Trainer

MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=32, max_seq_len=32)
TRAIN = TrainConfig(steps=8, batch_size=16, lr=3e-3, warmup_steps=2, eval_every=4, log_every=2, threads=1,
                    grad_clip=0.05)  # a clip this tight clips every step: the per-run norms are exercised
DATA = DataConfig(digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3), train_size=200, val_size=24, test_size=10,
                  ood_size=10)
CPU = torch.device("cpu")
TIMINGS = ["tokens_per_s", "wall_time_s"]  # wall clock: not a result
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def trainer(seed: int, loss: LossConfig, model: ModelConfig = MODEL, train: TrainConfig = TRAIN,
            device: torch.device = CPU) -> Trainer:
    """Run `seed` as a separate training would build it: its own data split (the seed draws it) and Trainer."""
    splits = generate_splits(DATA, seed)
    return Trainer(model, loss, train, seed, splits["train"]["text"].tolist(), splits["val"]["text"].tolist(), device)


def fit_alone(run: Trainer) -> tuple[pd.DataFrame, list]:
    logs = []
    result = run.fit(on_eval=lambda row: None, on_checkpoint=lambda state: None, stop_requested=lambda: None,
                     on_log=lambda step, values: logs.append((step, values)))
    return result.curve, logs


@pytest.mark.parametrize("losses", [
    # the entropy weight differs between the runs: 0 (the term off, as the default) and a bonus
    (LossConfig(), LossConfig(entropy_weight=-0.1)),
    # every other loss feature on, shared: continuity, the quantile mask on the CE, label smoothing, a penalty
    (LossConfig(entropy_weight=0.05, continuity_weight=0.1, entropy_mask="drop_high", label_smoothing=0.1),) * 2,
], ids=["entropy-weight-differs", "every-loss-term"])
def test_two_batched_runs_equal_two_separate_trainings(losses):
    seeds = (3, 4)
    alone = [trainer(seed, loss) for seed, loss in zip(seeds, losses, strict=True)]
    expected = [fit_alone(run) for run in alone]

    runs = [trainer(seed, loss) for seed, loss in zip(seeds, losses, strict=True)]
    rows, logs = [[], []], [[], []]
    results = BatchedTrainer(runs).fit(on_eval=lambda k, row: rows[k].append(row),
                                       on_log=lambda k, step, values: logs[k].append((step, values)))

    for k in range(2):
        curve, expected_curve = results[k].curve, expected[k][0]
        assert curve["step"].tolist() == expected_curve["step"].tolist() == [0, 4, 8]
        assert list(curve.columns) == list(expected_curve.columns)
        pd.testing.assert_frame_equal(curve.drop(columns=TIMINGS), expected_curve.drop(columns=TIMINGS),
                                      rtol=1e-4, atol=1e-6)
        assert pd.DataFrame(rows[k]).drop(columns=TIMINGS).equals(curve.drop(columns=TIMINGS))  # on_eval got them
        assert [step for step, _ in logs[k]] == [step for step, _ in expected[k][1]] == [2, 4, 6, 8]
        for (_, values), (_, expected_values) in zip(logs[k], expected[k][1], strict=True):
            assert values == pytest.approx(expected_values, rel=1e-4, abs=1e-6)
        weights, expected_weights = runs[k].model.state_dict(), alone[k].model.state_dict()
        assert weights.keys() == expected_weights.keys()
        for name in weights:
            torch.testing.assert_close(weights[name], expected_weights[name], rtol=1e-4, atol=1e-6)
        optimizer, expected_optimizer = runs[k].optimizer.state_dict(), alone[k].optimizer.state_dict()
        assert optimizer["param_groups"] == expected_optimizer["param_groups"]  # groups, decay, lr: the same
        for index, state in expected_optimizer["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(optimizer["state"][index][key], value, rtol=1e-4, atol=1e-7)
        assert runs[k].step == 8
    # the runs learned different things: each its own seed's data and weights, not one shared model
    assert not torch.allclose(runs[0].model.tok_emb.weight, runs[1].model.tok_emb.weight)
    if losses[0] != losses[1]:  # the entropy term: off (logged 0, as alone) in run 0, on in run 1
        assert all(values["train_entropy_loss"] == 0.0 for _, values in logs[0])
        assert all(values["train_entropy_loss"] > 0.0 for _, values in logs[1])


@pytest.mark.parametrize("change, param", [
    (dict(model=dataclasses.replace(MODEL, dropout=0.1)), "model.dropout"),
    (dict(loss=LossConfig(entropy_target=0.5)), "loss.entropy_target"),
    (dict(train=dataclasses.replace(TRAIN, compile=True)), "train.compile"),
])
def test_what_cannot_be_batched_is_refused_naming_the_param(change, param):
    runs = [trainer(seed, change.get("loss", LossConfig()), change.get("model", MODEL), change.get("train", TRAIN))
            for seed in (0, 1)]
    with pytest.raises(UserError, match=rf"^{param} must be"):
        BatchedTrainer(runs)


@pytest.mark.parametrize("other, param", [
    (dict(loss=LossConfig(continuity_weight=0.1)), "loss.continuity_weight"),
    (dict(train=dataclasses.replace(TRAIN, steps=9)), "train.steps"),
    (dict(model=dataclasses.replace(MODEL, abacus_offset_equals=True)), "model.abacus_offset_equals"),
])
def test_runs_that_differ_in_more_than_seed_and_entropy_weight_are_refused(other, param):
    runs = [trainer(0, LossConfig()), trainer(1, other.get("loss", LossConfig()), other.get("model", MODEL),
                                              other.get("train", TRAIN))]
    with pytest.raises(UserError, match=rf"^{param} differs between batched runs .* in run 1\)"):
        BatchedTrainer(runs)


# --- CUDA (skipped without a GPU) ---------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False], ids=["captured", "eager"])
def test_batched_runs_on_cuda_equal_separate_runs(graphs):
    """bf16 autocast, captured in one CUDA graph or eager: the tolerance of captured against eager steps
    (test_cuda_graphs.py), as batched kernels round bf16 differently."""
    cuda, train = torch.device("cuda"), dataclasses.replace(TRAIN, cuda_graphs=graphs)
    losses = (LossConfig(continuity_weight=0.1), LossConfig(continuity_weight=0.1, entropy_weight=-0.1))
    alone = [trainer(seed, loss, train=train, device=cuda) for seed, loss in zip((3, 4), losses, strict=True)]
    expected_logs = [fit_alone(run)[1] for run in alone]
    runs = [trainer(seed, loss, train=train, device=cuda) for seed, loss in zip((3, 4), losses, strict=True)]
    logs = [[], []]
    batched = BatchedTrainer(runs)
    batched.fit(on_eval=lambda k, row: None, on_log=lambda k, step, values: logs[k].append((step, values)))
    assert (batched._graph is not None) == graphs
    for k in range(2):
        for (step, values), (expected_step, expected) in zip(logs[k], expected_logs[k], strict=True):
            assert step == expected_step
            assert values == pytest.approx(expected, rel=2e-3, abs=1e-5), step
        for name, weight in alone[k].model.state_dict().items():
            torch.testing.assert_close(runs[k].model.state_dict()[name], weight, rtol=0, atol=2e-3)


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False], ids=["captured", "eager"])
def test_batched_steps_never_wait_for_the_gpu(graphs):
    runs = [trainer(seed, LossConfig(entropy_weight=0.1 * seed, entropy_mask="drop_high"),
                    train=dataclasses.replace(TRAIN, cuda_graphs=graphs), device=torch.device("cuda"))
            for seed in (0, 1)]
    batched = BatchedTrainer(runs)
    batched.train_step()  # the capture (and the first allocations) may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            batched.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [len(rows) for rows in batched.flush_log()] == [6, 6]


# --- written as the train stage writes runs --------------------------------------------------------------------


def without_paths(flat: dict) -> dict:
    return {key: value for key, value in flat.items() if not key.startswith("paths.")}


def test_batched_runs_are_written_as_the_train_stage_writes_separate_runs(tmp_path, monkeypatch):
    """Model files, curves and MLflow runs (params, tags, splits, metric histories, artifacts) of two batched runs
    against the same two runs trained by the train stage's run_training, one after the other."""
    monkeypatch.chdir(tmp_path)  # the MLflow store: ./mlflow.db
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    seeds = (0, 1)
    alone = [prepare_run(tmp_path / "params.yaml", tmp_path / "alone", seed) for seed in seeds]
    for params in alone:
        run_training(params)
    batched = [prepare_run(tmp_path / "params.yaml", tmp_path / "batched", seed) for seed in seeds]
    assert run_batched_training(batched) == [Path(params.paths.model) for params in batched]

    client = MlflowClient()
    for expected_params, params in zip(alone, batched, strict=True):
        expected, payload = (torch.load(p.paths.model, weights_only=True) for p in (expected_params, params))
        assert payload.keys() == expected.keys()
        assert (payload["steps"], payload["threads"], payload["vocab"]) == (expected["steps"], expected["threads"],
                                                                            expected["vocab"])
        assert without_paths(payload["params"]) == without_paths(expected["params"])
        for name, tensor in expected["model_state"].items():
            torch.testing.assert_close(payload["model_state"][name], tensor, rtol=1e-4, atol=1e-6)
        assert payload["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]
        curves = [pd.read_csv(Path(p.paths.metrics) / "train_curve.csv") for p in (params, expected_params)]
        pd.testing.assert_frame_equal(curves[0].drop(columns=TIMINGS), curves[1].drop(columns=TIMINGS), rtol=1e-4)

        run, expected_run = client.get_run(payload["mlflow_run_id"]), client.get_run(expected["mlflow_run_id"])
        assert run.info.status == expected_run.info.status == "FINISHED"
        assert without_paths(run.data.params) == without_paths(expected_run.data.params)
        assert run.data.tags.keys() == expected_run.data.tags.keys()
        assert ({(i.dataset.name, i.dataset.digest) for i in run.inputs.dataset_inputs}
                == {(i.dataset.name, i.dataset.digest) for i in expected_run.inputs.dataset_inputs})
        assert run.data.metrics.keys() == expected_run.data.metrics.keys()
        for key in expected_run.data.metrics:
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            expected_history = sorted((m.step, m.value) for m in client.get_metric_history(expected_run.info.run_id,
                                                                                          key))
            assert [step for step, _ in history] == [step for step, _ in expected_history], key
            if key not in TIMINGS:
                assert [value for _, value in history] == pytest.approx([value for _, value in expected_history],
                                                                        rel=1e-4, abs=1e-6), key

        def artifacts(run_id: str) -> set[str]:
            return {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id,
                                                                                                          "checkpoint")}

        assert artifacts(run.info.run_id) == artifacts(expected_run.info.run_id) == {
            "train_curve.csv", "learning.json", "checkpoint", "checkpoint/model.pt"}

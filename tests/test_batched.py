"""Batched seeds: K runs trained as one vmapped model equal K separate `Trainer`s (weights, AdamW state and curves,
to float tolerance), and what cannot be batched is refused naming the param."""

import dataclasses

import pandas as pd
import pytest
import torch

from language_entropy.batched import BatchedTrainer
from language_entropy.data import generate_splits
from language_entropy.errors import UserError
from language_entropy.params import DataConfig, DigitRange, LossConfig, ModelConfig, TrainConfig
from language_entropy.training import Trainer

MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=32, max_seq_len=32)
TRAIN = TrainConfig(steps=8, batch_size=16, lr=3e-3, warmup_steps=2, eval_every=4, log_every=2, threads=1,
                    grad_clip=0.05)  # a clip this tight clips every step: the per-run norms are exercised
DATA = DataConfig(digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3), train_size=200, val_size=24, test_size=10,
                  ood_size=10)
CPU = torch.device("cpu")
TIMINGS = ["tokens_per_s", "wall_time_s"]  # wall clock: not a result


def trainer(seed: int, loss: LossConfig, model: ModelConfig = MODEL, train: TrainConfig = TRAIN) -> Trainer:
    """Run `seed` as a separate training would build it: its own data split (the seed draws it) and Trainer."""
    splits = generate_splits(DATA, seed)
    return Trainer(model, loss, train, seed, splits["train"]["text"].tolist(), splits["val"]["text"].tolist(), CPU)


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

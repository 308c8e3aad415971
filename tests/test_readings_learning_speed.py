"""Learning speed from a training curve (language_entropy/learning_speed.py) against hand values and np.interp."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from language_entropy.data import generate_splits
from language_entropy.learning_speed import (
    LEARNED_LEVEL,
    curve_area,
    describe_outcome,
    learned,
    learning_outcome,
    learning_speed,
    steps_to_reach,
)
from language_entropy.params import DataConfig, DigitRange, LossConfig, ModelConfig, TrainConfig
from language_entropy.training import Trainer


def test_steps_to_reach_and_area_by_hand():
    steps, values = [0, 100, 200, 400], [0.0, 0.4, 0.8, 1.0]
    # 50%: between (100, 0.4) and (200, 0.8): 100 + 0.1 / 0.4 * 100 = 125; 90%: 200 + 0.1 / 0.2 * 200 = 300
    assert steps_to_reach(steps, values, 0.5) == pytest.approx(125.0)
    assert steps_to_reach(steps, values, 0.9) == pytest.approx(300.0)
    assert steps_to_reach(steps, values, 0.99) == pytest.approx(390.0)
    assert steps_to_reach(steps, values, 0.0) == 0.0  # reached at the first validation
    # trapezoids 20 + 60 + 180 = 260 over 400 steps
    assert curve_area(steps, values) == pytest.approx(0.65)
    assert curve_area([0, 10], [1.0, 1.0]) == 1.0 and curve_area([0, 10], [0.0, 0.0]) == 0.0


def test_a_monotone_curve_agrees_with_numpy_interpolation():
    rng = np.random.default_rng(0)
    steps = np.concatenate([[0, 25, 50, 100, 200], np.arange(300, 2001, 100)])
    values = np.sort(rng.random(steps.size))  # increasing: the crossing is np.interp of the inverse
    for level in (0.5, 0.9, 0.99):
        if level > values.max():
            assert math.isnan(steps_to_reach(steps, values, level))
        else:
            assert steps_to_reach(steps, values, level) == pytest.approx(np.interp(level, values, steps), abs=1e-9)
    assert curve_area(steps, values) == pytest.approx(np.trapezoid(values, steps) / 2000)


def test_first_crossing_counts_and_unreached_levels_are_nan():
    steps, values = [0, 100, 200, 300], [0.0, 0.6, 0.3, 0.7]  # crosses 0.5, falls back, crosses again
    assert steps_to_reach(steps, values, 0.5) == pytest.approx(100 * 0.5 / 0.6)
    assert math.isnan(steps_to_reach(steps, values, 0.9))  # censored: not reached within the run


def test_learning_speed_reads_the_train_curve_frame():
    # the train curve as the train stage writes it: training-loss rows without a validation are NaN
    curve = pd.DataFrame({"step": [0, 25, 50, 75, 100, 200, 500, 1000],
                          "val_exact_match": [0.0, 0.0, 0.0, np.nan, 0.003, 0.017, 0.503, 0.964]})
    got = learning_speed(curve)
    assert set(got) == {"steps_to_50", "steps_to_90", "steps_to_99", "area"}
    assert got["steps_to_50"] == pytest.approx(200 + (0.5 - 0.017) / (0.503 - 0.017) * 300)
    assert got["steps_to_90"] == pytest.approx(500 + (0.9 - 0.503) / (0.964 - 0.503) * 500)
    assert math.isnan(got["steps_to_99"])
    validated = curve.dropna()
    assert got["area"] == pytest.approx(np.trapezoid(validated["val_exact_match"], validated["step"]) / 1000)
    with pytest.raises(ValueError, match="lacks columns"):
        learning_speed(curve.drop(columns="val_exact_match"))
    with pytest.raises(ValueError, match="increasing"):
        steps_to_reach([0, 100, 50], [0.1, 0.2, 0.3], 0.5)


def test_learned_and_its_line_by_hand():
    learned_curve = pd.DataFrame({"step": [0, 100, 200], "val_exact_match": [0.0, 0.6, 0.95]})
    outcome = learning_outcome(learned_curve)
    # 50%: 0 + 0.5 / 0.6 * 100 = 83.3; 90%: 100 + 0.3 / 0.35 * 100 = 185.7
    assert outcome["learned"] == 1.0 and outcome["final"] == 0.95
    assert outcome["steps_to_50"] == pytest.approx(250 / 3) and outcome["steps_to_90"] == pytest.approx(1300 / 7)
    assert describe_outcome(outcome, 200) == ("learned: validation exact match 0.950 at step 200 "
                                              "(50% at step 83, 90% at step 186)")
    stalled = learning_outcome(pd.DataFrame({"step": [0, 100, 200], "val_exact_match": [0.0, 0.95, 0.15]}))
    assert stalled["learned"] == 0.0  # reached 90% once, but ended below it: the last validation decides
    assert describe_outcome(stalled, 200).startswith(f"STALLED (below {LEARNED_LEVEL:g} at the end): "
                                                     "validation exact match 0.150 at step 200 (50% at step 53")
    assert learned(pd.DataFrame({"step": [0, 10], "val_exact_match": [0.0, LEARNED_LEVEL]}))  # the level itself
    with pytest.raises(ValueError, match="no validation"):
        learned(pd.DataFrame({"step": [0], "val_exact_match": [math.nan]}))


def _tiny_run(lr: float) -> pd.DataFrame:
    """A one-layer model trained for 300 steps on 60 one-digit additions and validated on the same 60: with a
    learning rate it memorises them (a run that learns), with lr 1e-9 (params require lr > 0) it cannot."""
    splits = generate_splits(DataConfig(operations=("add",), digits=DigitRange(1, 1), ood_digits=DigitRange(2, 2),
                                        train_size=60, val_size=20, test_size=20, ood_size=20), 0)
    texts = splits["train"]["text"].tolist()
    config = TrainConfig(steps=300, batch_size=60, lr=lr, warmup_steps=20, eval_every=50, checkpoint_every=1000)
    trainer = Trainer(ModelConfig(n_layer=1, n_head=2, n_embd=48, max_seq_len=32), LossConfig(), config, 0, texts,
                      texts, torch.device("cpu"))
    return trainer.fit(lambda row: None, lambda state: None, lambda: None).curve


def test_the_stall_reading_on_a_run_that_learns_and_one_that_cannot():
    learns, cannot = learning_outcome(_tiny_run(1e-2)), learning_outcome(_tiny_run(1e-9))
    assert learns["learned"] == 1.0 and learns["final"] >= LEARNED_LEVEL
    assert 0 < learns["steps_to_50"] < learns["steps_to_90"] <= 300
    assert cannot["learned"] == 0.0 and cannot["final"] < 0.2
    assert math.isnan(cannot["steps_to_50"]) and math.isnan(cannot["steps_to_90"])

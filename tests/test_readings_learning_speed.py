"""Learning speed from a training curve (language_entropy/learning_speed.py) against hand values and np.interp."""

import math

import numpy as np
import pandas as pd
import pytest

from language_entropy.learning_speed import curve_area, learning_speed, steps_to_reach


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

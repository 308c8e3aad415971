"""How fast a run learned the task, read from its training curve (metrics/train_curve.csv).

In distribution the final exact match sits at its ceiling (0.985-0.998 in the first study), so a
loss term that helps or hurts learning shows in *when* the model gets there, not in where it ends:

- `steps_to_reach`: the first step at which validation exact match reaches a level (50%, 90%, 99%),
  linearly interpolated between the two validations around the crossing; NaN when it never does
  within the run (a censored reading: the run's budget is a lower bound, not a value).
- `curve_area`: the area under the validation exact-match curve over the steps run, divided by their
  span: the mean exact match over training, in [0, 1] (1 = right from the first step).

Validation runs at a few early steps and every `train.eval_every` steps: the readings are only as fine
as that grid (interpolation assumes a straight line between validations).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

LEVELS = (0.5, 0.9, 0.99)  # validation exact match whose first crossing `learning_speed` reads
LEARNED_LEVEL = 0.9  # a run whose last validation exact match is below this stalled: it did not learn the task
CURVE_COLUMN = "val_exact_match"


def _curve(steps: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The validated points only (rows without a validation are NaN), steps strictly increasing."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"steps and values must be aligned 1-D arrays (got {steps.shape}, {values.shape})")
    keep = np.isfinite(steps) & np.isfinite(values)
    steps, values = steps[keep], values[keep]
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    return steps, values


def steps_to_reach(steps: ArrayLike, values: ArrayLike, level: float) -> float:
    """The step at which `values` first reach `level`, interpolated linearly from the point before; NaN if
    they never do. With i the first point at or above the level:

        step = s[i-1] + (level - v[i-1]) / (v[i] - v[i-1]) * (s[i] - s[i-1])   (s[0] when i = 0)
    """
    steps, values = _curve(steps, values)
    reached = np.flatnonzero(values >= level)
    if reached.size == 0:
        return math.nan
    i = int(reached[0])
    if i == 0:
        return float(steps[0])
    fraction = (level - values[i - 1]) / (values[i] - values[i - 1])  # v[i-1] < level <= v[i]: denominator > 0
    return float(steps[i - 1] + fraction * (steps[i] - steps[i - 1]))


def curve_area(steps: ArrayLike, values: ArrayLike) -> float:
    """Trapezoidal area under `values` over `steps`, divided by the span of the steps: the curve's mean
    height (in [0, 1] for exact match). NaN with fewer than two validated points."""
    steps, values = _curve(steps, values)
    if len(steps) < 2:
        return math.nan
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def learning_speed(curve: pd.DataFrame, column: str = CURVE_COLUMN, levels: tuple[float, ...] = LEVELS) -> dict:
    """The learning-speed readings of one training curve (a frame with ``step`` and `column`):
    ``steps_to_<level %>`` for each level (e.g. ``steps_to_90``) and ``area`` (see the module docstring)."""
    missing = [name for name in ("step", column) if name not in curve.columns]
    if missing:
        raise ValueError(f"the training curve lacks columns {missing}")
    steps, values = curve["step"].to_numpy(dtype=float), curve[column].to_numpy(dtype=float)
    readings = {f"steps_to_{100 * level:g}": steps_to_reach(steps, values, level) for level in levels}
    readings["area"] = curve_area(steps, values)
    return readings


def learned(curve: pd.DataFrame, column: str = CURVE_COLUMN, level: float = LEARNED_LEVEL) -> bool:
    """Whether the run learned the task: its last validation exact match is at least `level` (a run below it
    at the end of its budget stalled on a plateau)."""
    values = curve[column].dropna()
    if values.empty:
        raise ValueError(f"the training curve holds no validation ({column})")
    return bool(values.iloc[-1] >= level)


def learning_outcome(curve: pd.DataFrame) -> dict[str, float]:
    """What the train stage reports at its end: `learning_speed`'s readings, ``final`` (the last validation
    exact match) and ``learned`` (1.0 when `learned`, 0.0 for a stalled run: a number, so that MLflow and a
    study's table count stalls like any other reading)."""
    final = float(curve[CURVE_COLUMN].dropna().iloc[-1]) if curve[CURVE_COLUMN].notna().any() else math.nan
    return {**learning_speed(curve), "final": final, "learned": float(learned(curve))}


def describe_outcome(outcome: dict[str, float], steps: int) -> str:
    """One line for the train stage's output, e.g. ``learned: validation exact match 0.998 at step 1500 (50% at
    step 412, 90% at step 590)`` or ``STALLED: ...`` naming the level a run must reach."""
    reached = ", ".join(f"{level:g}% at step {outcome[f'steps_to_{level:g}']:.0f}" if math.isfinite(
        outcome[f"steps_to_{level:g}"]) else f"{level:g}% never" for level in (50, 90))
    verdict = "learned" if outcome["learned"] else f"STALLED (below {LEARNED_LEVEL:g} at the end)"
    return f"{verdict}: validation exact match {outcome['final']:.3f} at step {steps} ({reached})"

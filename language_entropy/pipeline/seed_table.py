"""Rows of a recipe's seed table: train (or fine-tune) one seed as the pipeline would, in this process, and score it.

A recipe study (reports/defaults) needs, per seed, whether and how fast the model learned and its greedy exact
match on the test and OOD splits (per operation); running the whole pipeline per seed would add the evaluate
stage's minutes for readings the study does not use. This runs the same `data.generate_splits`, `Trainer` and
`FineTuner` on the same params (so the same weights as `dvc repro` with that seed and thread count), without
MLflow or the stage's files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from language_entropy.checkpoint import load_model, model_payload, save_checkpoint
from language_entropy.data import generate_splits
from language_entropy.evaluation import operation_rates
from language_entropy.learning_speed import learned, learning_speed
from language_entropy.measure import greedy_right
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import Params, load_params
from language_entropy.rl import FineTuner
from language_entropy.training import Trainer


def params_with(path: Path, seed: int, overrides: list[str]) -> Params:
    """params.yaml at `path` with `seed` and `KEY=VALUE` overrides (values read as YAML, as `dvc exp run -S`)."""
    raw = yaml.safe_load(Path(path).read_text())
    raw["seed"] = seed
    for override in overrides:
        key, _, value = override.partition("=")
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[leaf] = yaml.safe_load(value)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(raw, file)
        file.flush()
        return load_params(file.name)


def exact_match_by_operation(model: ArithmeticDecoder, frame: pd.DataFrame, name: str) -> dict[str, float]:
    """Greedy exact match on the problems of `frame`, overall and per operation (`evaluation.operation_rates`), as
    flat columns: {name_exact_match, name_add_exact_match, ...}."""
    rates = operation_rates(frame, greedy_right(model, frame["text"].tolist()))
    return {f"{name}_exact_match": rates["exact_match"],
            **{f"{name}_{op}_exact_match": values["exact_match"] for op, values in rates["per_operation"].items()}}


def score_trained_seed(path: Path, seed: int, overrides: list[str], device: torch.device,
                       save_to: Path | None = None) -> dict[str, float]:
    """Train seed `seed` of the params at `path` (with `overrides`) and score it: the learning readings of its
    validation curve, and greedy exact match on test and OOD, overall and per operation. With `save_to` the
    trained model is written there (a model checkpoint, as `load_model` reads)."""
    params = params_with(path, seed, overrides)
    splits = generate_splits(params.data, params.data_seed)
    trainer = Trainer(params.model, params.loss, params.train, params.seed, splits["train"]["text"].tolist(),
                      splits["val"]["text"].tolist(), device)
    result = trainer.fit(lambda row: None, lambda state: None, lambda: None)
    if save_to is not None:
        save_checkpoint(save_to, model_payload(result.model))
    curve = result.curve
    row = {"val_exact_match": float(curve["val_exact_match"].iloc[-1]), **learning_speed(curve),
           "learned": learned(curve)}
    for name in ("test", "ood"):
        row.update(exact_match_by_operation(result.model, splits[name], name))
    row["tokens_per_s"] = float(np.nanmedian(curve["tokens_per_s"]))
    return row


def score_finetuned_seed(path: Path, model_path: Path, seed: int, overrides: list[str],
                         device: torch.device) -> dict[str, float]:
    """Fine-tune the trained model at `model_path` (trained with `seed`) with the params at `path` (and
    `overrides`, e.g. rl.seed) and score the model before and after: greedy exact match on test, on the RL
    validation problems and on OOD, overall and per operation (`before_` and `after_` columns)."""
    params = params_with(path, seed, overrides)
    splits = generate_splits(params.data, params.data_seed, params.rl)
    trained = load_model(model_path, device)
    tuner = FineTuner(trained, params.rl, splits["rl_prompts"]["text"].tolist(), splits["rl_val"]["text"].tolist(),
                      device, splits["train"]["text"].tolist())
    result = tuner.fit(lambda row: None, lambda state: None, lambda: None)
    row: dict[str, float] = {}
    for when, model in (("before", trained), ("after", result.model)):
        for name in ("test", "rl_val", "ood"):
            row.update({f"{when}_{key}": value for key, value in
                        exact_match_by_operation(model, splits[name], name).items()})
    curve = result.curve
    row["entropy_bits_start"] = float(curve["entropy_bits"].iloc[0])
    row["entropy_bits_end"] = float(curve["entropy_bits"].iloc[-1])
    row["kl_end"] = float(curve["kl"].dropna().iloc[-1]) if curve["kl"].notna().any() else float("nan")
    return row

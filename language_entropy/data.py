"""The data splits: drawn problems deduplicated into disjoint splits, saved, loaded, and batched for the model.

Problems come from `language_entropy.problems` (the distribution and the answer format). The
splits are disjoint; a small bucket (1x1 digits holds 100 problems per operation) simply runs out
while drawing goes on, and only a request larger than the whole space is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from language_entropy import tokenizer
from language_entropy.errors import UserError
from language_entropy.params import DataConfig
from language_entropy.problems import draw_problems, reorder_answer, space_size

SPLITS = ("train", "val", "test", "ood")
COLUMNS = ["a", "op", "b", "answer", "a_digits", "b_digits", "text"]


class DataSpaceError(ValueError):
    """The operand space cannot supply the requested number of distinct problems."""


def _draw_distinct(rng, operations, digits, n, exclude: pd.DataFrame | None, split: str) -> pd.DataFrame:
    """Draw until `n` distinct problems not in `exclude` are found, in draw order."""
    capacity = space_size(operations, digits)
    if exclude is not None:
        in_range = [exclude[column].between(digits.min, digits.max) for column in ("a_digits", "b_digits")]
        capacity -= int((in_range[0] & in_range[1]).sum())
    if n > capacity:
        raise DataSpaceError(
            f"{split} needs {n} distinct problems but only {capacity} exist for operations "
            f"{list(operations)} with {digits.min}-{digits.max} digit operands: lower the sizes or widen the digits")
    keys = ["op", "a", "b"]
    found = pd.DataFrame()
    while len(found) < n:
        batch = draw_problems(rng, operations, digits, max(2 * (n - len(found)), n // 4, 4096))
        found = pd.concat([found, batch], ignore_index=True).drop_duplicates(keys, ignore_index=True)
        if exclude is not None:
            found = found.merge(exclude[keys], on=keys, how="left", indicator=True)
            found = found[found.pop("_merge") == "left_only"].reset_index(drop=True)
    return found.iloc[:n].reset_index(drop=True)


def with_text(problems: pd.DataFrame, reverse: bool) -> pd.DataFrame:
    """The split columns of drawn problems: numbers as decimal strings and the full `text` the model reads."""
    symbols = problems["op"].map(tokenizer.OPERATOR_SYMBOLS)
    a, b = problems["a"].astype(str), problems["b"].astype(str)
    answers = problems["answer"].astype(str).map(lambda answer: reorder_answer(answer, reverse))
    text = a + symbols + b + tokenizer.EQUALS + answers + tokenizer.EOS
    # Stored as decimal strings: exact at any length (int64 overflows past 18 digits).
    return pd.DataFrame({"a": a, "op": problems["op"].astype(str), "b": b,
                         "answer": problems["answer"].astype(str), "a_digits": problems["a_digits"],
                         "b_digits": problems["b_digits"], "text": text})[COLUMNS]


def generate_splits(config: DataConfig, seed: int) -> dict[str, pd.DataFrame]:
    """train, val, test (in-distribution lengths) and ood (`ood_digits` lengths), pairwise disjoint."""
    in_rng, ood_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    sizes = {"val": config.val_size, "test": config.test_size, "train": config.train_size}
    in_dist = _draw_distinct(in_rng, config.operations, config.digits, sum(sizes.values()), None,
                             "train + val + test")
    # Split the pool at random, not in draw order: small buckets run out early in the draw, and
    # splitting in draw order would hand them all to whichever split comes first.
    in_dist = in_dist.iloc[in_rng.permutation(len(in_dist))]
    ood = _draw_distinct(ood_rng, config.operations, config.ood_digits, config.ood_size, in_dist, "ood")
    bounds = np.cumsum([0, *sizes.values()])
    splits = {name: in_dist.iloc[lo:hi] for name, lo, hi in zip(sizes, bounds[:-1], bounds[1:], strict=True)}
    splits["ood"] = ood
    return {name: with_text(splits[name].reset_index(drop=True), config.reverse_answer) for name in SPLITS}


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.parquet"


def write_splits(splits: dict[str, pd.DataFrame], data_dir: str | Path) -> None:
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(split_path(data_dir, name), index=False, compression="zstd")


def read_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    path = split_path(data_dir, split)
    if not path.exists():
        raise UserError(f"{path} not found: run `dvc repro generate-data` first")
    return pd.read_parquet(path)


def prompt_of(text: str) -> str:
    """The prompt part of a problem's text, up to and including '='."""
    return text[: text.index(tokenizer.EQUALS) + 1]


def encode_batch(texts: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tokens (BOS + text, right-padded) and the masks the losses need.

    tokens: (B, T); answer_mask: (B, T-1) targets after '=' (answer digits, sign and EOS);
    valid_mask: (B, T-1) input positions that are not padding.
    """
    encoded = [[tokenizer.BOS_ID, *tokenizer.encode(text)] for text in texts]
    width = max(len(ids) for ids in encoded)
    tokens = torch.full((len(encoded), width), tokenizer.PAD_ID, dtype=torch.long)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids)
    return batch_from_tokens(tokens.to(device))


def batch_from_tokens(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The masks the losses need, for right-padded tokens (B, T)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    after_equals = torch.cumsum(inputs == tokenizer.EQUALS_ID, dim=1) > 0
    return {"tokens": tokens, "answer_mask": after_equals & (targets != tokenizer.PAD_ID),
            "valid_mask": inputs != tokenizer.PAD_ID}

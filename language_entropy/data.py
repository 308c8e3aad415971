"""Arithmetic problems: drawing, exact answers, disjoint splits, and batches for the model.

A problem is drawn in three steps: an operation uniformly from `operations`, the two operand
lengths independently and uniformly from the digit range, and each operand uniformly over the
numbers with that many digits (1 digit means 0-9; a 1-digit divisor is 1-9). Answers use exact
integer arithmetic (Python ints beyond int64), never `eval`. Problems are deduplicated and the
splits are disjoint; a small bucket (1x1 digits holds 100 problems per operation) simply runs
out while drawing goes on, and only a request larger than the whole space is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from language_entropy import tokenizer
from language_entropy.cli import UserError
from language_entropy.params import DataConfig, DigitRange

SPLITS = ("train", "val", "test", "ood")
COLUMNS = ["a", "op", "b", "answer", "a_digits", "b_digits", "text"]
INT64_SAFE_DIGITS = 18  # |x| < 10**18 fits in int64 with room for a sum


class DataSpaceError(ValueError):
    """The operand space cannot supply the requested number of distinct problems."""


def count_operands(digits: int, divisor: bool = False) -> int:
    """How many operands have exactly `digits` digits (0-9 for one digit; a divisor is >= 1)."""
    if digits == 1:
        return 9 if divisor else 10
    return 9 * 10 ** (digits - 1)


def space_size(operations: tuple[str, ...], digits: DigitRange) -> int:
    """Number of distinct problems with both operand lengths in `digits`."""
    total = 0
    for op in operations:
        a_count = sum(count_operands(n) for n in digits.lengths)
        b_count = sum(count_operands(n, divisor=op == "div") for n in digits.lengths)
        total += a_count * b_count
    return total


def _draw_operands(rng: np.random.Generator, lengths: np.ndarray, divisor: np.ndarray) -> np.ndarray:
    """One operand per row, uniform over the numbers with lengths[i] digits (int64, or Python ints if long)."""
    short = np.minimum(lengths, INT64_SAFE_DIGITS)
    low = np.where(short == 1, divisor.astype(np.int64), 10 ** (short - 1))
    values = rng.integers(low, 10**short)
    if lengths.max() <= INT64_SAFE_DIGITS:
        return values
    # Longer than int64 allows: a leading part with the extra digits (leading digit 1-9) above 18 uniform digits.
    values = values.astype(object)
    long_rows = np.flatnonzero(lengths > INT64_SAFE_DIGITS)
    extra = lengths[long_rows] - INT64_SAFE_DIGITS
    leading = rng.integers(10 ** (extra - 1), 10**extra)
    tail = rng.integers(0, 10**INT64_SAFE_DIGITS, size=len(long_rows))
    for row, lead, low_part in zip(long_rows, leading.tolist(), tail.tolist(), strict=True):
        values[row] = lead * 10**INT64_SAFE_DIGITS + low_part
    return values


def _answers(op: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact answers, elementwise; object arrays of Python ints stay exact at any length."""
    answer = np.empty(len(op), dtype=a.dtype if a.dtype == b.dtype else object)
    for name, compute in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("div", np.floor_divide)):
        rows = op == name
        if rows.any():
            answer[rows] = compute(a[rows], b[rows])
    return answer


def draw_problems(rng: np.random.Generator, operations: tuple[str, ...], digits: DigitRange, n: int) -> pd.DataFrame:
    """`n` problems drawn independently (duplicates possible), columns a, op, b, answer, a_digits, b_digits."""
    op = np.asarray(operations)[rng.integers(0, len(operations), size=n)]
    a_digits = rng.integers(digits.min, digits.max + 1, size=n)
    b_digits = rng.integers(digits.min, digits.max + 1, size=n)
    a = _draw_operands(rng, a_digits, np.zeros(n, dtype=bool))
    b = _draw_operands(rng, b_digits, op == "div")
    needs_python_ints = digits.max > INT64_SAFE_DIGITS or ("mul" in operations and 2 * digits.max > INT64_SAFE_DIGITS)
    if needs_python_ints:
        a, b = a.astype(object), b.astype(object)
    return pd.DataFrame({"a": a, "op": op, "b": b, "answer": _answers(op, a, b),
                         "a_digits": a_digits.astype(np.int8), "b_digits": b_digits.astype(np.int8)})


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


def answer_text(answers: pd.Series, reverse: bool) -> pd.Series:
    """The answer as the model emits it: digits reversed when `reverse`, a leading '-' in both orders."""
    text = answers.astype(str)
    if not reverse:
        return text
    negative = text.str.startswith("-")
    magnitude = text.str.lstrip("-").str[::-1]
    return magnitude.where(~negative, "-" + magnitude)


def _with_text(problems: pd.DataFrame, reverse: bool) -> pd.DataFrame:
    symbols = problems["op"].map(tokenizer.OPERATOR_SYMBOLS)
    a, b = problems["a"].astype(str), problems["b"].astype(str)
    text = a + symbols + b + tokenizer.EQUALS + answer_text(problems["answer"], reverse) + tokenizer.EOS
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
    return {name: _with_text(splits[name].reset_index(drop=True), config.reverse_answer) for name in SPLITS}


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

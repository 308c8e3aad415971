"""The data splits: drawn problems deduplicated into disjoint splits, saved and loaded (`batches` turns
their texts into tensors).

Problems come from `language_entropy.problems` (the distribution and the answer format). The
splits are disjoint; a small bucket (1x1 digits holds 100 problems per operation) simply runs out
while drawing goes on, and only a request larger than the whole space is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from language_entropy import tokenizer
from language_entropy.errors import UserError
from language_entropy.params import DataConfig, RLConfig
from language_entropy.problems import INT64_SAFE_DIGITS, draw_problems, exact_answers, reorder_answer, space_size

SPLITS = ("train", "val", "test", "ood")
RL_SPLITS = ("rl_prompts", "rl_val")  # the finetune stage's prompts and its held-out validation (`rl.digits`)
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
    written = problems["answer"].astype(str)
    # reorder_answer once per distinct answer (a few thousand among 100k rows), then a lookup per row
    answers = written.map({answer: reorder_answer(answer, reverse) for answer in written.unique()})
    text = a + symbols + b + tokenizer.EQUALS + answers + tokenizer.EOS
    # Stored as decimal strings: exact at any length (int64 overflows past 18 digits).
    return pd.DataFrame({"a": a, "op": problems["op"].astype(str), "b": b,
                         "answer": problems["answer"].astype(str), "a_digits": problems["a_digits"],
                         "b_digits": problems["b_digits"], "text": text})[COLUMNS]


def generate_splits(config: DataConfig, seed: int, rl: RLConfig | None = None) -> dict[str, pd.DataFrame]:
    """train, val, test (in-distribution lengths) and ood (`ood_digits` lengths), pairwise disjoint; with `rl`
    also rl_prompts and rl_val (`rl.digits` lengths), disjoint from each other and from the four.

    Each family of splits has a random stream of its own (children of one SeedSequence), and the RL splits
    are drawn last: adding them, or changing rl.*, leaves the bytes of the first four unchanged."""
    in_rng, ood_rng, rl_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
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
    if rl is not None:
        drawn = _draw_distinct(rl_rng, config.operations, rl.digits, rl.prompt_size + rl.val_size,
                               pd.concat([in_dist, ood], ignore_index=True),
                               "rl_prompts + rl_val (rl.prompt_size + rl.val_size)")
        drawn = drawn.iloc[rl_rng.permutation(len(drawn))]  # as above: no bucket goes to one split first
        splits["rl_prompts"], splits["rl_val"] = drawn.iloc[:rl.prompt_size], drawn.iloc[rl.prompt_size:]
    names = [*SPLITS, *(RL_SPLITS if rl is not None else ())]
    return {name: with_text(splits[name].reset_index(drop=True), config.reverse_answer) for name in names}


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.parquet"


def write_splits(splits: dict[str, pd.DataFrame], data_dir: str | Path) -> None:
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(split_path(data_dir, name), index=False, compression="zstd")


def read_split(data_dir: str | Path, split: str, reverse_answer: bool) -> pd.DataFrame:
    """A saved split, verified before anyone uses it (`split_disagreement`); any problem is one `UserError`
    naming the file, the row (counted from 0, as pandas shows it) and what disagrees."""
    path = split_path(data_dir, split)
    if not path.exists():
        raise UserError(f"{path} not found: run `dvc repro generate-data` first")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # truncated or foreign files: pyarrow raises ArrowInvalid, OSError and more
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise UserError(f"{path}: not a readable parquet file ({reason}): run `dvc repro generate-data`") from None
    problem = split_disagreement(frame, reverse_answer)
    if problem is not None:
        raise UserError(f"{path}: {problem}")
    return frame


_NUMBER = r"0|[1-9][0-9]*"  # operands as written: decimal, no sign, no leading zeros
_IN_VOCABULARY = f"[{re.escape(tokenizer.VOCAB)}]*"


def split_disagreement(frame: pd.DataFrame, reverse_answer: bool) -> str | None:
    """What is wrong with a split, or None: columns and types, non-empty, every row's operands, lengths
    and vocabulary, its `answer` equal to the exact answer of a, op, b and its `text` equal to what
    `with_text` (the one answer format) makes of them. Vectorised: a check costs a few pandas passes."""
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        return f"missing columns {missing} (a split has {COLUMNS})"
    if frame.empty:
        return "holds no rows: run `dvc repro generate-data`"
    for column in COLUMNS:
        numeric = column.endswith("_digits")
        kind_ok = (pd.api.types.is_integer_dtype if numeric else pd.api.types.is_string_dtype)(frame[column])
        if not kind_ok:
            return f"column {column} holds {frame[column].dtype}, not {'integers' if numeric else 'strings'}"
        if frame[column].isna().any():
            return _first(frame[column].isna(), lambda i, column=column: f"{column} is missing")
    a, op, b, text = (frame[column] for column in ("a", "op", "b", "text"))
    checks = [  # (rows that fail, what to say about the first): the format of each row, before any arithmetic
        (~text.str.fullmatch(_IN_VOCABULARY),
         lambda i: f"text {text[i]!r} has {next(ch for ch in text[i] if ch not in tokenizer.STOI)!r}, "
                   "which is not in the vocabulary"),
        (~op.isin(list(tokenizer.OPERATOR_SYMBOLS)),
         lambda i: f"op {op[i]!r} is not one of {list(tokenizer.OPERATOR_SYMBOLS)}"),
        (~a.str.fullmatch(_NUMBER), lambda i: f"a {a[i]!r} is not a decimal number without sign or leading zeros"),
        (~b.str.fullmatch(_NUMBER), lambda i: f"b {b[i]!r} is not a decimal number without sign or leading zeros"),
        (a.str.len() != frame["a_digits"], lambda i: f"a_digits {frame['a_digits'][i]} but a {a[i]!r}"),
        (b.str.len() != frame["b_digits"], lambda i: f"b_digits {frame['b_digits'][i]} but b {b[i]!r}"),
        ((op == "div") & (b == "0"), lambda i: f"{a[i]} / 0 has no answer"),
    ]
    problem = _earliest(checks)
    if problem is not None:
        return problem
    # Exact integers: int64 while no answer can overflow it, Python ints beyond (as the data was drawn).
    fits = int(a.str.len().max()) + int(b.str.len().max()) <= INT64_SAFE_DIGITS
    to_ints = (lambda s: s.to_numpy(dtype=np.int64)) if fits else (lambda s: np.array([int(x) for x in s], object))
    exact = exact_answers(op.to_numpy(dtype=object), to_ints(a), to_ints(b))
    exact_text = pd.Series(exact.astype(str) if fits else [str(x) for x in exact], index=frame.index)
    expected = with_text(frame[["a", "op", "b", "a_digits", "b_digits"]].assign(answer=exact_text), reverse_answer)
    symbol = op.map(tokenizer.OPERATOR_SYMBOLS)

    def wrong_text(i: int) -> str:
        other = with_text(expected.loc[[i]], not reverse_answer)["text"][i]
        hint = (f": the split writes answers {'units first' if not reverse_answer else 'most significant first'}, "
                f"params say data.reverse_answer: {str(reverse_answer).lower()}") if text[i] == other else ""
        return f"text {text[i]!r} but {a[i]} {symbol[i]} {b[i]} gives {expected['text'][i]!r}{hint}"

    return _earliest([(frame["answer"] != exact_text,
                       lambda i: f"answer {frame['answer'][i]!r} but {a[i]} {symbol[i]} {b[i]} = {exact_text[i]}"),
                      (text != expected["text"], wrong_text)])


def _first(bad: pd.Series, describe) -> str:
    rows = np.flatnonzero(bad.to_numpy())
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return f"row {rows[0]}: {describe(bad.index[rows[0]])}{more}"


def _earliest(checks: list) -> str | None:
    """The first failing row over all checks, described by the first check it fails."""
    failing = [(int(np.flatnonzero(bad.to_numpy())[0]), order, bad, describe)
               for order, (bad, describe) in enumerate(checks) if bad.any()]
    if not failing:
        return None
    _, _, bad, describe = min(failing, key=lambda item: item[:2])
    return _first(bad, describe)


def prompt_of(text: str) -> str:
    """The prompt part of a problem's text, up to and including '='."""
    return text[: text.index(tokenizer.EQUALS) + 1]

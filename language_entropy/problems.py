"""The problem distribution and the answer format, in one home for data, theory, evaluation and benchmarks.

A problem is drawn in three steps: an operation uniformly from the allowed ones, the two operand
lengths independently and uniformly from a digit range, and each operand uniformly over the numbers
with that many digits (`operand_range`: 1 digit means 0-9, a 1-digit divisor 1-9). Answers use exact
integer arithmetic (Python ints beyond int64), never `eval`; `div` is the floor quotient.

The answer is emitted as its sign (``-`` when negative), then its digits, units first when the
answer is reversed (the order in which carries are computed), most significant first otherwise.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from language_entropy.params import DigitRange

INTEGER = re.compile(r"[+-]?[0-9]+")  # a well-formed answer: an optional sign, then ASCII digits (not " 12", "١٢")
INT64_SAFE_DIGITS = 18  # |x| < 10**18 fits in int64 with room for a sum
OPERATIONS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.floor_divide}


def operand_range(n_digits: int, divisor: bool = False) -> tuple[int, int]:
    """Smallest and largest operand with `n_digits` digits (inclusive)."""
    if n_digits == 1:
        return (1 if divisor else 0), 9
    return 10 ** (n_digits - 1), 10**n_digits - 1


def count_operands(n_digits: int, divisor: bool = False) -> int:
    """How many operands have exactly `n_digits` digits."""
    low, high = operand_range(n_digits, divisor)
    return high - low + 1


def space_size(operations: tuple[str, ...], digits: DigitRange) -> int:
    """Number of distinct problems with both operand lengths in `digits`."""
    total = 0
    for op in operations:
        a_count = sum(count_operands(n) for n in digits.lengths)
        b_count = sum(count_operands(n, divisor=op == "div") for n in digits.lengths)
        total += a_count * b_count
    return total


def draw_operands(rng: np.random.Generator, lengths: np.ndarray, divisor: np.ndarray) -> np.ndarray:
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


def exact_answers(op: np.ndarray | str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact answers elementwise, for one operation name or one per row; object arrays of Python ints
    stay exact at any length."""
    if isinstance(op, str):
        return OPERATIONS[op](a, b)
    answer = np.empty(len(op), dtype=a.dtype if a.dtype == b.dtype else object)
    for name, compute in OPERATIONS.items():
        rows = op == name
        if rows.any():
            answer[rows] = compute(a[rows], b[rows])
    return answer


def draw_problems(rng: np.random.Generator, operations: tuple[str, ...], digits: DigitRange, n: int) -> pd.DataFrame:
    """`n` problems drawn independently (duplicates possible), columns a, op, b, answer, a_digits, b_digits."""
    op = np.asarray(operations)[rng.integers(0, len(operations), size=n)]
    a_digits = rng.integers(digits.min, digits.max + 1, size=n)
    b_digits = rng.integers(digits.min, digits.max + 1, size=n)
    a = draw_operands(rng, a_digits, np.zeros(n, dtype=bool))
    b = draw_operands(rng, b_digits, op == "div")
    needs_python_ints = digits.max > INT64_SAFE_DIGITS or ("mul" in operations and 2 * digits.max > INT64_SAFE_DIGITS)
    if needs_python_ints:
        a, b = a.astype(object), b.astype(object)
    return pd.DataFrame({"a": a, "op": op, "b": b, "answer": exact_answers(op, a, b),
                         "a_digits": a_digits.astype(np.int8), "b_digits": b_digits.astype(np.int8)})


def reorder_answer(answer: str, reverse: bool) -> str:
    """An answer's digits in the other order (units first <-> most significant first), the sign kept in
    front; unchanged when not `reverse`. Its own inverse: it turns a written answer into the emitted one
    and an emitted one back into the written one."""
    if not reverse:
        return answer
    sign, digits = ("-", answer[1:]) if answer.startswith("-") else ("", answer)
    return sign + digits[::-1]


def written_if_well_formed(emitted: str, reverse: bool) -> str:
    """The written form of a well-formed emitted answer (an optional sign then ASCII digits, `INTEGER`): its digits
    back in reading order, the sign kept in front; any other string unchanged, as emitted. Reordering a malformed
    answer could make a number of it ("12-" units first would read "-21", "12+" "+21"), so only what the answer
    format can produce is un-reversed."""
    if not (reverse and INTEGER.fullmatch(emitted)):
        return emitted
    sign, digits = (emitted[0], emitted[1:]) if emitted[0] in "+-" else ("", emitted)
    return sign + digits[::-1]

"""Buckets and their answers as symbols: the alphabet Y_t ranges over, and every answer's symbol at each step."""

from __future__ import annotations

import math

import numpy as np

from language_entropy.problems import operand_range

SYMBOLS = (*"0123456789", "-", "$", "<ended>")  # '-' and '$' are the tokenizer's minus and end of sequence
MINUS, EOS, ENDED = 10, 11, 12
N_SYMBOLS = len(SYMBOLS)
SIGN_OFFSET = {"+": 0, "-": 1}  # steps the sign takes before the first digit
LN2 = math.log(2.0)
INT64_SAFE = 2**62  # enumerate only buckets whose answers fit int64 with room to spare


def operand_ranges(op: str, a_digits: int, b_digits: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return operand_range(a_digits), operand_range(b_digits, divisor=op == "div")


def bucket_pairs(op: str, a_digits: int, b_digits: int) -> int:
    """Number of operand pairs in the bucket (all equally likely)."""
    (a_lo, a_hi), (b_lo, b_hi) = operand_ranges(op, a_digits, b_digits)
    return (a_hi - a_lo + 1) * (b_hi - b_lo + 1)


def answer_extremes(op: str, a_digits: int, b_digits: int) -> tuple[int, int]:
    """Smallest and largest answer of the bucket."""
    (a_lo, a_hi), (b_lo, b_hi) = operand_ranges(op, a_digits, b_digits)
    if op == "add":
        return a_lo + b_lo, a_hi + b_hi
    if op == "sub":
        return a_lo - b_hi, a_hi - b_lo
    if op == "mul":
        return a_lo * b_lo, a_hi * b_hi
    return a_lo // b_hi, a_hi // b_lo


def answer_steps(op: str, a_digits: int, b_digits: int) -> int:
    """Number of reported steps: the longest answer's sign, digits and '$' (the latest possible '$' is the last)."""
    lowest, highest = answer_extremes(op, a_digits, b_digits)
    longest = len(str(highest)) + 1 if highest >= 0 else 0
    if lowest < 0:  # str() of a negative number includes its '-'
        longest = max(longest, len(str(lowest)) + 1)
    return longest




def answer_tokens(values: np.ndarray, reverse: bool, steps: int) -> np.ndarray:
    """The symbols (indices into SYMBOLS) every answer emits at steps 0..steps-1: int8 (len(values), steps)."""
    negative = np.asarray(values < 0, dtype=bool)
    text = np.abs(values).astype(str)  # fixed-width unicode, padded with code 0 on the right
    codes = text.view(np.uint32).reshape(len(values), text.dtype.itemsize // 4)
    n_digits = (codes != 0).sum(axis=1)
    digits = codes.astype(np.int8) - ord("0")
    rows = np.arange(len(values))
    tokens = np.full((len(values), steps), ENDED, dtype=np.int8)
    tokens[negative, 0] = MINUS
    for t in range(steps):
        k = t - negative  # how many digits were emitted before step t
        is_digit = (k >= 0) & (k < n_digits)
        column = n_digits - 1 - k if reverse else k  # where that digit sits in the written number
        tokens[is_digit, t] = digits[rows[is_digit], column[is_digit]]
        tokens[k == n_digits, t] = EOS
    return tokens


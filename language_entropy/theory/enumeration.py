"""Exact enumeration: every operand pair of a bucket, then the answers' step and prefix entropies."""

from __future__ import annotations

import numpy as np

from language_entropy.entropy import entropy_bits
from language_entropy.params import EntropyConfig
from language_entropy.problems import exact_answers
from language_entropy.theory.answers import (
    INT64_SAFE,
    N_SYMBOLS,
    answer_extremes,
    answer_tokens,
    bucket_pairs,
    operand_ranges,
)


def enumerate_answers(op: str, a_digits: int, b_digits: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct answer of the bucket and how many operand pairs give it (int64), by full enumeration.

    Pairs are generated `chunk_size` at a time; the running table of distinct answers is merged after
    every chunk, so memory stays bounded by one chunk plus the distinct answers.
    """
    (a_lo, _), (b_lo, b_hi) = operand_ranges(op, a_digits, b_digits)
    n_b = b_hi - b_lo + 1
    total = bucket_pairs(op, a_digits, b_digits)
    values, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for start in range(0, total, chunk_size):
        index = np.arange(start, min(start + chunk_size, total), dtype=np.int64)
        chunk_values, chunk_counts = np.unique(exact_answers(op, a_lo + index // n_b, b_lo + index % n_b),
                                               return_counts=True)
        values, inverse = np.unique(np.concatenate([values, chunk_values]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([counts, chunk_counts])).astype(np.int64)
    return values, counts


def enumerable(op: str, a_digits: int, b_digits: int, config: EntropyConfig) -> bool:
    extremes = answer_extremes(op, a_digits, b_digits)
    return bucket_pairs(op, a_digits, b_digits) <= config.exact_limit and max(map(abs, extremes)) < INT64_SAFE


def exact_step_entropies(values: np.ndarray, probs: np.ndarray, reverse: bool,
                          steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Step distributions (steps, 13) and prefix entropies H(Y_<t), t = 0..steps, of a weighted answer list."""
    tokens = answer_tokens(values, reverse, steps)
    distributions = np.stack([np.bincount(tokens[:, t], weights=probs, minlength=N_SYMBOLS) for t in range(steps)])
    prefix_bits = np.zeros(steps + 1)
    prefix_ids = np.zeros(len(values), dtype=np.int64)
    for t in range(steps):
        classes, prefix_ids = np.unique(prefix_ids * N_SYMBOLS + tokens[:, t], return_inverse=True)
        prefix_bits[t + 1] = entropy_bits(np.bincount(prefix_ids, weights=probs))
        if len(classes) == len(values):  # every answer is told apart: later prefixes add nothing
            prefix_bits[t + 1:] = prefix_bits[t + 1]
            break
    return distributions, prefix_bits

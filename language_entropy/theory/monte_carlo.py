"""Monte Carlo for mul/div buckets too large to enumerate: seeded samples, Miller-Madow plug-in entropies."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from language_entropy.entropy import entropy_bits
from language_entropy.problems import draw_operands, exact_answers
from language_entropy.theory.answers import INT64_SAFE, LN2, N_SYMBOLS, answer_extremes, answer_tokens

MC_SEED = 7  # Monte Carlo draws are seeded by this, the operation and the lengths: reruns give the same numbers
MC_MAX_PREFIX_FRACTION = 0.05  # plug-in conditionals need >= ~20 samples per distinct prefix on average


def sample_answers(op: str, a_digits: int, b_digits: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` answers of random problems of the bucket (int64, or Python ints when they could overflow)."""
    a = draw_operands(rng, np.full(size, a_digits), np.zeros(size, dtype=bool))
    b = draw_operands(rng, np.full(size, b_digits), np.full(size, op == "div"))
    if max(map(abs, answer_extremes(op, a_digits, b_digits))) >= INT64_SAFE:
        a, b = a.astype(object), b.astype(object)
    return exact_answers(op, a, b)


def sample_tokens(op: str, sizes: Mapping[tuple[int, int], int], reverse: bool, steps: int,
                   rng: np.random.Generator, chunk_size: int) -> np.ndarray:
    chunks = []
    for (a_digits, b_digits), size in sizes.items():
        for start in range(0, size, chunk_size):
            values = sample_answers(op, a_digits, b_digits, min(chunk_size, size - start), rng)
            chunks.append(answer_tokens(values, reverse, steps))
    return np.concatenate(chunks)


def plugin_marginals(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step distributions, Miller-Madow marginal entropies and their standard errors from samples."""
    n = len(tokens)
    distributions = np.stack([np.bincount(column, minlength=N_SYMBOLS) / n for column in tokens.T])
    plugin = entropy_bits(distributions)
    observed = (distributions > 0).sum(axis=1)
    log2p = np.log2(np.where(distributions > 0, distributions, 1.0))
    variance = np.clip((distributions * log2p**2).sum(axis=1) - plugin**2, 0.0, None)
    return distributions, plugin + (observed - 1) / (2 * n * LN2), np.sqrt(variance / n)


def plugin_conditionals(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Miller-Madow H(Y_t | Y_<t) = H(Y_<=t) - H(Y_<t) from samples, their standard errors, and per-step notes."""
    n, steps = tokens.shape
    bits, stderr, notes = np.full(steps, np.nan), np.full(steps, np.nan), [""] * steps
    ids, counts = np.zeros(n, dtype=np.int64), np.array([n])
    for t in range(steps):
        classes, new_ids = np.unique(ids * N_SYMBOLS + tokens[:, t], return_inverse=True)
        if len(classes) > MC_MAX_PREFIX_FRACTION * n:
            notes[t:] = [f"conditional not estimated: {len(classes)} distinct answer prefixes in {n} samples "
                         f"(more than {MC_MAX_PREFIX_FRACTION:.0%}) would bias the plug-in estimate"] * (steps - t)
            break
        new_counts = np.bincount(new_ids)
        surprise = np.log2(counts[ids]) - np.log2(new_counts[new_ids])  # -log2 p(Y_t | Y_<t) per sample
        bits[t] = surprise.mean() + (len(classes) - len(counts)) / (2 * n * LN2)
        stderr[t] = surprise.std() / math.sqrt(n)
        ids, counts = new_ids, new_counts
    return bits, stderr, notes

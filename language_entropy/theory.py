"""Theoretical entropy of the answers: the uncertainty the data itself leaves at each answer step.

Problems are drawn as generate-data draws them: an operation uniformly from ``data.operations``, the
two operand lengths independently and uniformly from a digit range, each operand uniformly over the
numbers of its length (1 digit: 0..9, a 1-digit divisor: 1..9, n >= 2 digits: 10^(n-1)..10^n-1).
The model emits the answer as symbols: ``-`` when it is negative, the digits of its absolute value
(units digit first when ``data.reverse_answer``, else the most significant first), then ``$``.

Definitions, in bits, per operation and bucket (a_digits, b_digits). Y_t is the symbol emitted at
step t = 0, 1, ...; after ``$`` every step emits one more symbol, "ended", so each Y_t is a proper
distribution over 13 symbols (``SYMBOLS``). Steps run from 0 to the step of the latest possible
``$`` (sign + digits + ``$`` of the longest answer, minus one); no step after it is reported.

* ``marginal_bits[t] = H(Y_t)``: what is left to a predictor that knows only the step;
* ``conditional_bits[t] = H(Y_t | Y_<t) = H(Y_<=t) - H(Y_<t)``: what is left to a predictor that sees
  the answer prefix (not the operands). The steps sum to the entropy of the whole answer string.

Mixtures (scope ``in_distribution``: lengths from ``data.digits``; ``ood``: from ``data.ood_digits``;
one per operation) weight every bucket equally, as the lengths are drawn: the marginal is the entropy
of the averaged step distribution, the conditional that of the averaged prefix distribution.

How each number is found (column ``method``: one name, or ``<marginal>+<conditional>`` when they differ):

* ``exact``: enumerate every operand pair of a bucket of at most ``entropy.exact_limit`` pairs
  (vectorised, ``entropy.chunk_size`` pairs at a time), then count answers and answer prefixes.
* ``dp``: add/sub marginals at any length, from the carry (add) or borrow (sub) chain over the digit
  places, which also tracks the answer's sign and where its leading zeros start (its length).
* ``analytic``: add/sub conditionals at any length. The number of operand pairs with answer y is a
  trapezoid in y, so the number of pairs behind each answer prefix is piecewise linear in the prefix
  read as a number; sum(c log c) over each linear piece is summed term by term near zero and by
  Euler-Maclaurin elsewhere (error far below 1e-9 bits).
* ``monte_carlo``: mul/div buckets too large to enumerate: ``entropy.mc_samples`` seeded samples,
  plug-in entropies with the Miller-Madow correction (K - 1) / (2 N ln 2). A conditional is left
  empty (NaN, reason in ``note``) once the distinct answer prefixes exceed
  ``MC_MAX_PREFIX_FRACTION`` of the samples, where the plug-in value would be biased.

``stderr_bits`` is the standard error of ``marginal_bits`` and ``conditional_stderr_bits`` that of
``conditional_bits`` (0 when exact), from Var(log2 p(Y)) / N (delta method).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from language_entropy.cli import UserError
from language_entropy.params import OPERATIONS, DataConfig, DigitRange, EntropyConfig

SYMBOLS = (*"0123456789", "-", "$", "<ended>")  # '-' and '$' are the tokenizer's minus and end of sequence
MINUS, EOS, ENDED = 10, 11, 12
N_SYMBOLS = len(SYMBOLS)
SIGN_OFFSET = {"+": 0, "-": 1}  # steps the sign takes before the first digit
LN2 = math.log(2.0)

CSV_NAME = "theoretical_entropy.csv"
JSON_NAME = "theoretical_entropy.json"
SCOPES = ("bucket", "in_distribution", "ood")
COLUMNS = ("scope", "operation", "a_digits", "b_digits", "step", "marginal_bits", "conditional_bits", "method",
           "stderr_bits", "conditional_stderr_bits", "note")

MC_SEED = 7  # Monte Carlo draws are seeded by this, the operation and the lengths: reruns give the same numbers
MC_MAX_PREFIX_FRACTION = 0.05  # plug-in conditionals need >= ~20 samples per distinct prefix on average
INT64_SAFE = 2**62  # enumerate only buckets whose answers fit int64 with room to spare


# ----------------------------------------------------------------------------------------------- buckets

def operand_range(n_digits: int, divisor: bool = False) -> tuple[int, int]:
    """Smallest and largest operand with `n_digits` digits (inclusive), as generate-data draws them."""
    if n_digits == 1:
        return (1 if divisor else 0), 9
    return 10 ** (n_digits - 1), 10**n_digits - 1


def _ranges(op: str, a_digits: int, b_digits: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return operand_range(a_digits), operand_range(b_digits, divisor=op == "div")


def bucket_pairs(op: str, a_digits: int, b_digits: int) -> int:
    """Number of operand pairs in the bucket (all equally likely)."""
    (a_lo, a_hi), (b_lo, b_hi) = _ranges(op, a_digits, b_digits)
    return (a_hi - a_lo + 1) * (b_hi - b_lo + 1)


def _answer_extremes(op: str, a_digits: int, b_digits: int) -> tuple[int, int]:
    """Smallest and largest answer of the bucket."""
    (a_lo, a_hi), (b_lo, b_hi) = _ranges(op, a_digits, b_digits)
    if op == "add":
        return a_lo + b_lo, a_hi + b_hi
    if op == "sub":
        return a_lo - b_hi, a_hi - b_lo
    if op == "mul":
        return a_lo * b_lo, a_hi * b_hi
    return a_lo // b_hi, a_hi // b_lo


def answer_steps(op: str, a_digits: int, b_digits: int) -> int:
    """Number of reported steps: the longest answer's sign, digits and '$' (the latest possible '$' is the last)."""
    lowest, highest = _answer_extremes(op, a_digits, b_digits)
    longest = len(str(highest)) + 1 if highest >= 0 else 0
    if lowest < 0:  # str() of a negative number includes its '-'
        longest = max(longest, len(str(lowest)) + 1)
    return longest


def _apply(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact answers elementwise (object arrays of Python ints stay exact at any length)."""
    return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.floor_divide}[op](a, b)


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


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    """Entropy in bits along the last axis (0 log 0 = 0)."""
    positive = p > 0
    terms = np.where(positive, p * np.log2(np.where(positive, p, 1.0)), 0.0)
    return np.clip(-terms.sum(axis=-1), 0.0, None) + 0.0  # + 0.0 turns -0.0 into 0.0


# ---------------------------------------------------------------------------------- exact enumeration

def enumerate_answers(op: str, a_digits: int, b_digits: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct answer of the bucket and how many operand pairs give it (int64), by full enumeration.

    Pairs are generated `chunk_size` at a time; the running table of distinct answers is merged after
    every chunk, so memory stays bounded by one chunk plus the distinct answers.
    """
    (a_lo, _), (b_lo, b_hi) = _ranges(op, a_digits, b_digits)
    n_b = b_hi - b_lo + 1
    total = bucket_pairs(op, a_digits, b_digits)
    values, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for start in range(0, total, chunk_size):
        index = np.arange(start, min(start + chunk_size, total), dtype=np.int64)
        chunk_values, chunk_counts = np.unique(_apply(op, a_lo + index // n_b, b_lo + index % n_b),
                                               return_counts=True)
        values, inverse = np.unique(np.concatenate([values, chunk_values]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([counts, chunk_counts])).astype(np.int64)
    return values, counts


def _enumerable(op: str, a_digits: int, b_digits: int, config: EntropyConfig) -> bool:
    extremes = _answer_extremes(op, a_digits, b_digits)
    return bucket_pairs(op, a_digits, b_digits) <= config.exact_limit and max(map(abs, extremes)) < INT64_SAFE


def _exact_step_entropies(values: np.ndarray, probs: np.ndarray, reverse: bool,
                          steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Step distributions (steps, 13) and prefix entropies H(Y_<t), t = 0..steps, of a weighted answer list."""
    tokens = answer_tokens(values, reverse, steps)
    distributions = np.stack([np.bincount(tokens[:, t], weights=probs, minlength=N_SYMBOLS) for t in range(steps)])
    prefix_bits = np.zeros(steps + 1)
    prefix_ids = np.zeros(len(values), dtype=np.int64)
    for t in range(steps):
        classes, prefix_ids = np.unique(prefix_ids * N_SYMBOLS + tokens[:, t], return_inverse=True)
        prefix_bits[t + 1] = _entropy_bits(np.bincount(prefix_ids, weights=probs))
        if len(classes) == len(values):  # every answer is told apart: later prefixes add nothing
            prefix_bits[t + 1:] = prefix_bits[t + 1]
            break
    return distributions, prefix_bits


# ------------------------------------------------------------------------ carry / borrow chain (dp)

_X, _Y = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")  # digit of a, digit of b at one place


def _chain_tables(op: str) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """The automaton that reads the operands place by place, units first.

    add: the state is the carry; the digit is (x + y + carry) % 10; the answer is never negative.
    sub: the state compares the low places read so far: 0 equal, 1 a < b, 2 a > b. When a >= b the
    answer's digits are those of a - b, which borrows exactly when the low part of a is the smaller
    (state 1); when a < b they are those of b - a, borrowing in state 2. The sign is the final state.
    Returns the digit emitted per sign, indexed (state, x, y), the next state (state, x, y), and per
    sign which final states give that sign.
    """
    if op == "add":
        total = _X[None] + _Y[None] + np.arange(2)[:, None, None]
        return {"+": total % 10}, total // 10, {"+": np.ones(2)}
    state = np.arange(3)[:, None, None]
    following = np.where(_X > _Y, 2, np.where(_X < _Y, 1, state))
    digits = {"+": (_X - _Y - (state == 1)) % 10, "-": (_Y - _X - (state == 2)) % 10}
    return digits, following, {"+": np.array([1.0, 0.0, 1.0]), "-": np.array([0.0, 1.0, 0.0])}


def _place_digit_probs(n_digits: int, place: int) -> np.ndarray:
    """Distribution of an operand's digit at a place (units = 0): uniform, a nonzero leading digit, or 0 above it."""
    probs = np.zeros(10)
    if place >= n_digits:
        probs[0] = 1.0
    elif place == n_digits - 1 and n_digits > 1:
        probs[1:] = 1 / 9
    else:
        probs[:] = 0.1
    return probs


def dp_distributions(op: str, a_digits: int, b_digits: int, reverse: bool, steps: int | None = None) -> np.ndarray:
    """Exact step distributions P(Y_t = symbol), shape (steps, 13), of an add or sub bucket of any length.

    The places 0..max(a_digits, b_digits) are a Markov chain in the carry/borrow state. With the forward
    state probabilities and, per sign, two backward quantities (the chance of that sign, and of that
    sign with every digit from a place up being 0: where the answer's leading zeros start), every event
    "the answer has this sign and length L, and digit d at place j" is a product of small matrices; a
    step then maps to a place through the sign offset and, in normal order, the length.
    """
    if op not in ("add", "sub"):
        raise ValueError(f"the carry chain covers add and sub, not {op!r}")
    steps = answer_steps(op, a_digits, b_digits) if steps is None else steps
    places = max(a_digits, b_digits) + 1  # the top place holds the final carry (add) or only zeros (sub)
    emitted, following, accept = _chain_tables(op)
    n_states = following.shape[0]
    joint = [np.outer(_place_digit_probs(a_digits, j), _place_digit_probs(b_digits, j)) for j in range(places)]

    def kernel(digits: np.ndarray) -> np.ndarray:
        """(places, state, digit, next state) probabilities for one sign."""
        index = digits * n_states + following
        return np.stack([[np.bincount(index[s].ravel(), weights=w.ravel(), minlength=10 * n_states)
                          .reshape(10, n_states) for s in range(n_states)] for w in joint])

    kernels = {sign: kernel(digits) for sign, digits in emitted.items()}
    move = next(iter(kernels.values())).sum(axis=2)  # state transitions: the same whichever sign is emitted
    forward = np.zeros((places + 1, n_states))  # P(state entering place j)
    forward[0, 0] = 1.0
    for j in range(places):
        forward[j + 1] = forward[j] @ move[j]

    distributions = np.zeros((steps, N_SYMBOLS))
    for sign, kern in kernels.items():
        offset = SIGN_OFFSET[sign]
        # reach[j] / zero[j]: P(this sign | state entering j) / P(this sign, digits at places >= j all 0 | state)
        reach, zero = np.zeros((places + 1, n_states)), np.zeros((places + 1, n_states))
        reach[places] = zero[places] = accept[sign]
        for j in reversed(range(places)):
            reach[j] = move[j] @ reach[j + 1]
            zero[j] = kern[j, :, 0, :] @ zero[j + 1]
        zero_from = (forward * zero).sum(axis=1)  # P(sign, all digits at places >= k are 0), k = 0..places
        length = np.diff(zero_from, prepend=0.0)  # length[L] = P(sign, answer has L digits); 0 has one digit
        length[1] += length[0]
        length[0] = 0.0
        if offset:
            distributions[0, MINUS] += forward[0] @ reach[0]
        for n_digits in range(1, places + 1):
            if offset + n_digits < steps:
                distributions[offset + n_digits, EOS] += length[n_digits]
        lead = np.einsum("js,jsdt->jdt", forward[:-1], kern)  # P(state in, digit d at place j, state out)
        if reverse:  # step offset + k emits place k, if the answer has more than k digits
            for k in range(min(places, steps - offset)):
                after = np.repeat(reach[k + 1][None], 10, axis=0)
                if k >= 1:  # a 0 is emitted only below a nonzero digit
                    after[0] -= zero[k + 1]
                distributions[offset + k, :10] += (lead[k] * after).sum(axis=1)
            continue
        # normal order: step offset + k emits place L-1-k of an L-digit answer
        above = np.zeros((places + 1, places + 1, n_states))  # above[i, m] = P(sign, places >= m all 0 | state at i)
        for m in range(places + 1):
            above[m, m] = zero[m]
            for i in reversed(range(m)):
                above[i, m] = move[i] @ above[i + 1, m]
        for n_digits in range(1, places + 1):
            top = n_digits - 1
            first = lead[top] @ zero[n_digits]
            if n_digits > 1:
                first[0] = 0.0  # no leading zero (a 1-digit answer may be 0)
            if offset < steps:
                distributions[offset, :10] += first
            ks = np.arange(1, min(n_digits, steps - offset))
            places_j = top - ks
            # digit at j below the top: "places >= L all 0" minus "places >= L-1 all 0" keeps the top nonzero
            tail = above[places_j + 1, n_digits] - above[places_j + 1, n_digits - 1]
            distributions[offset + ks, :10] += np.einsum("jdt,jt->jd", lead[places_j], tail)
    distributions[:, ENDED] = np.clip(1.0 - distributions[:, :ENDED].sum(axis=1), 0.0, None)
    return distributions


# ------------------------------------------------------------------- analytic prefix entropies

Segment = tuple[int, int, int, int]  # (first, last, intercept, slope): count(u) = intercept + slope*u, first<=u<=last


def _segment_sum(first: int, last: int, intercept: int, slope: int) -> int:
    n = last - first + 1
    return n * intercept + slope * (first + last) * n // 2  # (first + last) * n is always even


def answer_count_segments(op: str, a_digits: int, b_digits: int) -> dict[str, list[Segment]]:
    """Operand pairs per answer magnitude u, for each sign present: a trapezoid, piecewise linear in u."""
    if op not in ("add", "sub"):
        raise ValueError(f"answer counts are piecewise linear for add and sub, not {op!r}")
    (a_lo, a_hi), (b_lo, b_hi) = _ranges(op, a_digits, b_digits)
    if op == "sub":
        b_lo, b_hi = -b_hi, -b_lo  # a - b = a + (-b)
    lowest, highest = a_lo + b_lo, a_hi + b_hi
    knee_low, knee_high = sorted((a_lo + b_hi, a_hi + b_lo))
    plateau = min(a_hi - a_lo, b_hi - b_lo) + 1
    trapezoid = [(lowest, knee_low, 1 - lowest, 1), (knee_low + 1, knee_high, plateau, 0),
                 (knee_high + 1, highest, highest + 1, -1)]
    segments: dict[str, list[Segment]] = {"+": [], "-": []}
    for first, last, intercept, slope in trapezoid:
        if first > last:
            continue
        if last >= 0:
            segments["+"].append((max(first, 0), last, intercept, slope))
        if first < 0:  # magnitude u = -y: count = intercept - slope * u
            segments["-"].append((-min(last, -1), -first, intercept, -slope))
    return {sign: found for sign, found in segments.items() if found}


Event = tuple[int, int, int]  # (position, change of intercept, change of slope) of a piecewise-linear class count


def _linear(first: int, last: int, intercept: int, slope: int) -> list[Event]:
    return [(first, intercept, slope), (last + 1, -intercept, -slope)]


def _residue_events(segment: Segment, modulus: int) -> list[Event]:
    """Class counts sum over u = r (mod modulus) of a segment, as linear functions of the residue r."""
    first, last, intercept, slope = segment
    head, tail = first // modulus, last // modulus
    if head == tail:
        return _linear(first - head * modulus, last - head * modulus, intercept + slope * head * modulus, slope)
    events = (_linear(first - head * modulus, modulus - 1, intercept + slope * head * modulus, slope)
              + _linear(0, last - tail * modulus, intercept + slope * tail * modulus, slope))
    wraps = tail - head - 1  # whole turns between the partial first and last ones
    if wraps:
        events += _linear(0, modulus - 1, wraps * intercept + slope * modulus * (head + tail) * wraps // 2,
                          wraps * slope)
    return events


def _block_events(segment: Segment, size: int) -> list[Event]:
    """Class counts sum over u in [D*size, D*size + size) of a segment, as functions of D."""
    first, last, intercept, slope = segment
    head, tail = first // size, last // size
    if head == tail:
        return _linear(head, head, _segment_sum(first, last, intercept, slope), 0)
    events = []
    if first % size:
        events += _linear(head, head, _segment_sum(first, head * size + size - 1, intercept, slope), 0)
        head += 1
    if (last + 1) % size:
        events += _linear(tail, tail, _segment_sum(tail * size, last, intercept, slope), 0)
        tail -= 1
    if head <= tail:  # whole blocks: size*intercept + slope*(size*D*size + size*(size-1)/2)
        events += _linear(head, tail, size * intercept + slope * size * (size - 1) // 2, slope * size * size)
    return events


def _pieces(events: list[Event]) -> list[tuple[int, int, int]]:
    """Sweep the events into linear pieces (smallest value, |slope|, number of classes) of the class count."""
    pieces = []
    intercept = slope = 0
    previous = None
    for position, d_intercept, d_slope in sorted(events):
        if previous is not None and position > previous and (intercept or slope):
            low, high = intercept + slope * previous, intercept + slope * (position - 1)
            assert min(low, high) >= 0, "a class cannot hold a negative number of operand pairs"
            pieces.append((min(low, high), abs(slope), position - previous))
        intercept, slope, previous = intercept + d_intercept, slope + d_slope, position
    return pieces


_DIRECT_TERMS = 64  # pieces this short are summed term by term
_EM_START = 32  # Euler-Maclaurin from y >= 32 * slope on: its remainder is below 1e-12 of one slope


def _xlogx(y: np.ndarray) -> np.ndarray:
    return y * np.log(np.where(y > 0, y, 1.0))


def _sum_xlogx(pieces: list[tuple[int, int, int]]) -> float:
    """Sum of y ln y over y = start + slope*i, i = 0..count-1, of every (start, slope, count) piece (y >= 0).

    Each piece is summed term by term up to y >= _EM_START * slope, the rest by Euler-Maclaurin with
    the exact integral of y ln y (in a form free of cancellation) and corrections up to B6.
    """
    if not pieces:
        return 0.0
    start, slope, count = (np.array([float(v) for v in column]) for column in zip(*pieces, strict=True))
    flat = slope == 0
    total = float((count[flat] * _xlogx(start[flat])).sum())
    start, slope, count = start[~flat], slope[~flat], count[~flat]
    direct = np.where(count <= _DIRECT_TERMS, count, np.clip(np.ceil(_EM_START - start / np.maximum(slope, 1.0)),
                                                             0, count)).astype(np.int64)
    index = np.arange(direct.sum()) - np.repeat(np.cumsum(direct) - direct, direct)
    total += float(_xlogx(np.repeat(start, direct) + np.repeat(slope, direct) * index).sum())
    rest = count > direct
    a = direct[rest].astype(float)
    start, slope, count = start[rest], slope[rest], count[rest]
    y_a, y_b = start + slope * a, start + slope * (count - 1)
    gaps = count - 1 - a  # terms after the first one of the Euler-Maclaurin part
    growth = np.log1p(slope * gaps / y_a)  # ln(y_b / y_a)
    integral = gaps * (y_a + y_b) * (np.log(y_a) / 2 - 0.25) + y_b * y_b * growth / (2 * slope)
    ratio_a, ratio_b = slope / y_a, slope / y_b
    corrections = (slope / 12 * growth - slope / 720 * (ratio_a**2 - ratio_b**2)
                   + slope / 5040 * (ratio_a**4 - ratio_b**4))
    total += float((integral + (_xlogx(y_a) + _xlogx(y_b)) / 2 + corrections).sum())
    return total


def _prefix_classes_xlogx(segments: list[Segment], k: int, reverse: bool) -> float:
    """Sum of c ln c over the prefix classes of answers of one sign after k of their digits were emitted.

    Magnitudes with fewer than k digits are complete (their '$' was emitted): one class each. The
    others share a class with every answer whose first k emitted digits are the same: the residue
    mod 10^k (units first) or the leading k digits (most significant first).
    """
    if k == 0:
        return float(_xlogx(np.array([float(sum(_segment_sum(*s) for s in segments))]))[0])
    threshold = 10 ** (k - 1) if k >= 2 else 0  # below it: fewer than k digits
    complete, incomplete = [], []
    for first, last, intercept, slope in segments:
        if first < threshold:
            complete += _linear(first, min(last, threshold - 1), intercept, slope)
    longer = [(max(first, threshold), last, c0, c1) for first, last, c0, c1 in segments if last >= threshold]
    if reverse:
        for segment in longer:
            incomplete += _residue_events(segment, 10**k)
    else:
        most_digits = len(str(max(last for _, last, _, _ in segments)))
        for n_digits in range(k, most_digits + 1):  # L-digit magnitudes, blocks of 10^(L-k) share k leading digits
            low, high = 10 ** (n_digits - 1), 10**n_digits - 1
            for first, last, c0, c1 in longer:
                if first <= high and last >= low:
                    incomplete += _block_events((max(first, low), min(last, high), c0, c1), 10 ** (n_digits - k))
        if k == 1:  # the answer 0 is its own class "0" (its leading digit is not 1-9)
            zero = sum(c0 for first, _, c0, _ in segments if first == 0)
            incomplete += _linear(0, 0, zero, 0) if zero else []
    return _sum_xlogx(_pieces(complete)) + _sum_xlogx(_pieces(incomplete))


def analytic_prefix_entropies(segments: Mapping[str, list[Segment]], reverse: bool, steps: int) -> np.ndarray:
    """H(Y_<t) in bits for t = 0..steps, from the answer counts per sign (add/sub buckets or their mixtures)."""
    total = sum(_segment_sum(*s) for found in segments.values() for s in found)
    prefix_bits = np.zeros(steps + 1)
    for t in range(1, steps + 1):
        xlogx = sum(_prefix_classes_xlogx(found, t - SIGN_OFFSET[sign], reverse) for sign, found in segments.items())
        prefix_bits[t] = (math.log(total) - xlogx / total) / LN2
    return prefix_bits


# ------------------------------------------------------------------------------------- Monte Carlo

def _sample_operands(rng: np.random.Generator, n_digits: int, size: int, divisor: bool) -> np.ndarray:
    lo, hi = operand_range(n_digits, divisor)
    if hi < INT64_SAFE:
        return rng.integers(lo, hi + 1, size=size, dtype=np.int64)
    # beyond int64: a nonzero leading digit, then uniform blocks of up to 18 digits, as Python ints
    values = rng.integers(1, 10, size=size).astype(object) * 10 ** (n_digits - 1)
    for place in range(0, n_digits - 1, 18):
        width = min(18, n_digits - 1 - place)
        values += rng.integers(0, 10**width, size=size).astype(object) * 10**place
    return values


def sample_answers(op: str, a_digits: int, b_digits: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` answers of random problems of the bucket (int64, or Python ints when they could overflow)."""
    a = _sample_operands(rng, a_digits, size, divisor=False)
    b = _sample_operands(rng, b_digits, size, divisor=op == "div")
    if max(map(abs, _answer_extremes(op, a_digits, b_digits))) >= INT64_SAFE:
        a, b = a.astype(object), b.astype(object)
    return _apply(op, a, b)


def _sample_tokens(op: str, sizes: Mapping[tuple[int, int], int], reverse: bool, steps: int,
                   rng: np.random.Generator, chunk_size: int) -> np.ndarray:
    chunks = []
    for (a_digits, b_digits), size in sizes.items():
        for start in range(0, size, chunk_size):
            values = sample_answers(op, a_digits, b_digits, min(chunk_size, size - start), rng)
            chunks.append(answer_tokens(values, reverse, steps))
    return np.concatenate(chunks)


def _plugin_marginals(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step distributions, Miller-Madow marginal entropies and their standard errors from samples."""
    n = len(tokens)
    distributions = np.stack([np.bincount(column, minlength=N_SYMBOLS) / n for column in tokens.T])
    plugin = _entropy_bits(distributions)
    observed = (distributions > 0).sum(axis=1)
    log2p = np.log2(np.where(distributions > 0, distributions, 1.0))
    variance = np.clip((distributions * log2p**2).sum(axis=1) - plugin**2, 0.0, None)
    return distributions, plugin + (observed - 1) / (2 * n * LN2), np.sqrt(variance / n)


def _plugin_conditionals(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
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


# --------------------------------------------------------------------------------- buckets, mixtures

@dataclass(frozen=True)
class StepEntropies:
    """Per-step entropies of one bucket or mixture (arrays of length `steps`)."""

    distributions: np.ndarray  # (steps, 13): P(Y_t = symbol), symbols as in SYMBOLS
    marginal_bits: np.ndarray
    conditional_bits: np.ndarray  # NaN where it could not be estimated (see notes)
    marginal_stderr_bits: np.ndarray
    conditional_stderr_bits: np.ndarray
    marginal_method: str
    conditional_method: str
    notes: tuple[str, ...]
    samples: int = 0  # Monte Carlo samples behind the distributions (0: exact)
    answers: tuple[np.ndarray, np.ndarray] | None = None  # (answers, probabilities) when enumerated exactly

    @property
    def steps(self) -> int:
        return len(self.marginal_bits)

    @property
    def method(self) -> str:
        if self.marginal_method == self.conditional_method:
            return self.marginal_method
        return f"{self.marginal_method}+{self.conditional_method}"


def _conditionals_from_prefixes(prefix_bits: np.ndarray) -> np.ndarray:
    """H(Y_t | Y_<t) = H(Y_<=t) - H(Y_<t) from exact prefix entropies (rounding can leave -1e-15 where it is 0)."""
    return np.clip(np.diff(prefix_bits), 0.0, None) + 0.0


def _exact(distributions: np.ndarray, prefix_bits: np.ndarray, marginal_method: str, conditional_method: str,
           answers: tuple[np.ndarray, np.ndarray] | None = None) -> StepEntropies:
    steps = len(distributions)
    return StepEntropies(distributions, _entropy_bits(distributions), _conditionals_from_prefixes(prefix_bits),
                         np.zeros(steps), np.zeros(steps), marginal_method, conditional_method, ("",) * steps,
                         answers=answers)


def bucket_entropy(op: str, a_digits: int, b_digits: int, reverse: bool, config: EntropyConfig) -> StepEntropies:
    """Per-step entropies of one bucket: exact enumeration, else dp+analytic (add/sub), else Monte Carlo."""
    steps = answer_steps(op, a_digits, b_digits)
    if _enumerable(op, a_digits, b_digits, config):
        values, counts = enumerate_answers(op, a_digits, b_digits, config.chunk_size)
        probs = counts / counts.sum()
        return _exact(*_exact_step_entropies(values, probs, reverse, steps), "exact", "exact", answers=(values, probs))
    if op in ("add", "sub"):
        distributions = dp_distributions(op, a_digits, b_digits, reverse, steps)
        prefix_bits = analytic_prefix_entropies(answer_count_segments(op, a_digits, b_digits), reverse, steps)
        return _exact(distributions, prefix_bits, "dp", "analytic")
    rng = np.random.default_rng((MC_SEED, OPERATIONS.index(op), a_digits, b_digits))
    tokens = _sample_tokens(op, {(a_digits, b_digits): config.mc_samples}, reverse, steps, rng, config.chunk_size)
    distributions, marginal, marginal_stderr = _plugin_marginals(tokens)
    conditional, conditional_stderr, notes = _plugin_conditionals(tokens)
    return StepEntropies(distributions, marginal, conditional, marginal_stderr, conditional_stderr,
                         "monte_carlo", "monte_carlo", tuple(notes), samples=len(tokens))


def _padded(distributions: np.ndarray, steps: int) -> np.ndarray:
    """Step distributions extended to `steps` steps with the "ended" symbol."""
    extra = np.zeros((steps - len(distributions), N_SYMBOLS))
    extra[:, ENDED] = 1.0
    return np.concatenate([distributions, extra])


def mixture_entropy(op: str, lengths: DigitRange, reverse: bool, config: EntropyConfig,
                    buckets: Mapping[tuple[int, int], StepEntropies]) -> StepEntropies:
    """Per-step entropies of an operation when both lengths are drawn uniformly from `lengths`.

    `buckets` holds (at least) every bucket of the range. The marginal is exact from the averaged step
    distributions (with a delta-method standard error and a Miller-Madow-like bias correction where a
    bucket was sampled). The conditional is exact from the merged answers when every bucket was
    enumerated, analytic for add/sub, and otherwise estimated from samples of the mixture itself.
    """
    grid = [(a, b) for a in lengths.lengths for b in lengths.lengths]
    parts = [buckets[ab] for ab in grid]
    weight = 1.0 / len(parts)
    steps = max(part.steps for part in parts)
    padded = np.stack([_padded(part.distributions, steps) for part in parts])
    distributions = padded.mean(axis=0)
    marginal = _entropy_bits(distributions)
    variance, bias = np.zeros(steps), np.zeros(steps)
    mixed = np.where(distributions > 0, distributions, 1.0)
    log2p = np.log2(mixed)
    for part, part_distributions in zip(parts, padded, strict=True):
        if part.samples:  # H(sum w p_c): bias -sum Var(p(y)) / (2 p(y) ln 2), variance sum w^2 Var_c(log2 p(Y)) / N_c
            spread = (part_distributions * log2p**2).sum(axis=1) - (part_distributions * log2p).sum(axis=1) ** 2
            variance += weight**2 * np.clip(spread, 0.0, None) / part.samples
            bias += weight**2 * (part_distributions * (1 - part_distributions) / mixed).sum(axis=1) / (
                2 * part.samples * LN2)
    marginal_method = ("monte_carlo" if any(p.samples for p in parts)
                       else "dp" if any(p.marginal_method == "dp" for p in parts) else "exact")
    conditional_stderr, notes = np.zeros(steps), [""] * steps
    if all(part.answers is not None for part in parts):
        values, inverse = np.unique(np.concatenate([part.answers[0] for part in parts]), return_inverse=True)
        probs = np.bincount(inverse, weights=np.concatenate([part.answers[1] * weight for part in parts]))
        conditional = _conditionals_from_prefixes(_exact_step_entropies(values, probs, reverse, steps)[1])
        conditional_method = "exact"
    elif op in ("add", "sub"):
        # integer weights make every bucket count the same total: lcm / pairs per operand pair
        common = math.lcm(*(bucket_pairs(op, a, b) for a, b in grid))
        segments: dict[str, list[Segment]] = {}
        for a, b in grid:
            scale = common // bucket_pairs(op, a, b)
            for sign, found in answer_count_segments(op, a, b).items():
                segments.setdefault(sign, []).extend((f, last, c0 * scale, c1 * scale) for f, last, c0, c1 in found)
        conditional = _conditionals_from_prefixes(analytic_prefix_entropies(segments, reverse, steps))
        conditional_method = "analytic"
    else:
        rng = np.random.default_rng((MC_SEED, OPERATIONS.index(op), lengths.min, lengths.max, 1))
        sizes = dict(zip(grid, rng.multinomial(config.mc_samples, [weight] * len(grid)).tolist(), strict=True))
        tokens = _sample_tokens(op, sizes, reverse, steps, rng, config.chunk_size)
        conditional, conditional_stderr, notes = _plugin_conditionals(tokens)
        conditional_method = "monte_carlo"
    return StepEntropies(distributions, marginal + bias, conditional, np.sqrt(variance), conditional_stderr,
                         marginal_method, conditional_method, tuple(notes), samples=0)


# ----------------------------------------------------------------------------------------- the table

def _rows(scope: str, op: str, ab: tuple[int, int] | tuple[None, None], result: StepEntropies) -> list[dict]:
    return [{"scope": scope, "operation": op, "a_digits": ab[0], "b_digits": ab[1], "step": t,
             "marginal_bits": result.marginal_bits[t], "conditional_bits": result.conditional_bits[t],
             "method": result.method, "stderr_bits": result.marginal_stderr_bits[t],
             "conditional_stderr_bits": result.conditional_stderr_bits[t], "note": result.notes[t]}
            for t in range(result.steps)]


def theoretical_entropy_table(data: DataConfig, config: EntropyConfig,
                              progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every bucket of the in-distribution and OOD ranges, and both mixtures, per operation: one row per step."""
    scopes = {"in_distribution": data.digits, "ood": data.ood_digits}
    rows = []
    for op in data.operations:
        grid = sorted({(a, b) for lengths in scopes.values() for a in lengths.lengths for b in lengths.lengths})
        buckets = {ab: bucket_entropy(op, *ab, data.reverse_answer, config) for ab in grid}
        for ab, result in buckets.items():
            rows += _rows("bucket", op, ab, result)
        for scope, lengths in scopes.items():
            rows += _rows(scope, op, (None, None), mixture_entropy(op, lengths, data.reverse_answer, config, buckets))
        if progress is not None:
            methods = pd.Series([result.method for result in buckets.values()]).value_counts()
            progress(f"{op}: {len(buckets)} buckets (" + ", ".join(f"{n} {m}" for m, n in methods.items()) + ")")
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"a_digits": "Int64", "b_digits": "Int64", "step": "int64"})


def summary_metrics(table: pd.DataFrame) -> dict:
    """Per mixture scope and operation: `answer_bits` = H(answer) = sum of the conditionals (absent if any
    is missing) and `marginal_sum_bits` = sum of the marginals, an upper bound on it."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for (scope, op), rows in table[table["scope"] != "bucket"].groupby(["scope", "operation"], sort=False):
        entry = {"marginal_sum_bits": float(rows["marginal_bits"].sum())}
        if rows["conditional_bits"].notna().all():
            entry = {"answer_bits": float(rows["conditional_bits"].sum()), **entry}
        summary.setdefault(scope, {})[op] = entry
    return summary


def load_theoretical_entropy(path: str | Path) -> pd.DataFrame:
    """The table the compute-theoretical-entropy stage wrote (`path`: the CSV or the metrics directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / CSV_NAME
    if not path.exists():
        raise UserError(f"{path} not found: run `dvc repro compute-theoretical-entropy` first")
    table = pd.read_csv(path, dtype={"a_digits": "Int64", "b_digits": "Int64", "note": str})
    table["note"] = table["note"].fillna("")
    return table


def theoretical_levels(table: pd.DataFrame, scope: str, operation: str, a_digits: int | None = None,
                       b_digits: int | None = None) -> pd.DataFrame:
    """Columns step, marginal_bits, conditional_bits of one bucket (scope "bucket") or mixture, by step."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)} (got {scope!r})")
    if (scope == "bucket") != (a_digits is not None and b_digits is not None):
        raise ValueError("a_digits and b_digits are given for scope 'bucket', and only for it")
    rows = (table["scope"] == scope) & (table["operation"] == operation)
    if scope == "bucket":
        rows &= (table["a_digits"] == a_digits) & (table["b_digits"] == b_digits)
    levels = table.loc[rows.fillna(False), ["step", "marginal_bits", "conditional_bits"]]
    if levels.empty:
        where = f"{operation} {a_digits}x{b_digits}" if scope == "bucket" else f"{scope} {operation}"
        raise UserError(f"no theoretical entropy for {where}: rerun `dvc repro compute-theoretical-entropy` "
                        "after changing data.operations or the digit ranges")
    return levels.sort_values("step").reset_index(drop=True)

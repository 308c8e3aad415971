"""Exact add/sub prefix entropies at any length: answer counts are piecewise linear (``analytic``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from language_entropy.theory.answers import LN2, SIGN_OFFSET, operand_ranges

Segment = tuple[int, int, int, int]  # (first, last, intercept, slope): count(u) = intercept + slope*u, first<=u<=last


def _segment_sum(first: int, last: int, intercept: int, slope: int) -> int:
    n = last - first + 1
    return n * intercept + slope * (first + last) * n // 2  # (first + last) * n is always even


def answer_count_segments(op: str, a_digits: int, b_digits: int) -> dict[str, list[Segment]]:
    """Operand pairs per answer magnitude u, for each sign present: a trapezoid, piecewise linear in u."""
    if op not in ("add", "sub"):
        raise ValueError(f"answer counts are piecewise linear for add and sub, not {op!r}")
    (a_lo, a_hi), (b_lo, b_hi) = operand_ranges(op, a_digits, b_digits)
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

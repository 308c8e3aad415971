"""Exact add/sub step distributions at any length, from the carry (add) or borrow (sub) chain (``dp``)."""

from __future__ import annotations

import numpy as np

from language_entropy.theory.answers import ENDED, EOS, MINUS, N_SYMBOLS, SIGN_OFFSET, answer_steps

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

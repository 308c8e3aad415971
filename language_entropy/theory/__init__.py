"""Theoretical entropy of the answers: the uncertainty the data itself leaves at each answer step.

Problems follow `language_entropy.problems`, the distribution generate-data draws from: an operation
uniformly from ``data.operations``, the two operand lengths independently and uniformly from a digit
range, each operand uniformly over the numbers of its length.
The model emits the answer as symbols: ``-`` when it is negative, the digits of its absolute value
(units digit first when ``data.reverse_answer``, else the most significant first), then ``$``.

Definitions, in bits, per operation and bucket (a_digits, b_digits). Y_t is the symbol emitted at
step t = 0, 1, ...; after ``$`` every step emits one more symbol, "ended", so each Y_t is a proper
distribution over 13 symbols (``SYMBOLS``). Steps run from 0 to the step of the latest possible
``$`` (sign + digits + ``$`` of the longest answer, minus one); no step after it is reported.

* ``marginal_bits[t] = H(Y_t)``: what is left to a predictor that knows only the step;
* ``conditional_bits[t] = H(Y_t | Y_<t) = H(Y_<=t) - H(Y_<t)``: what is left to a predictor that sees
  the answer prefix (not the operands). The steps sum to the entropy of the whole answer string.
* ``running_fraction[t] = P(Y_t != ended)``: the fraction of answers still running at step t (their
  '$' is at step t or later). An ended answer emits "ended" with certainty, so the conditional
  entropy over the answers still running is ``conditional_bits[t] / running_fraction[t]``.

Within one bucket, ``conditional_bits`` is the entropy left to a *digit-blind* predictor: one that
reads the operation and both operand lengths from the prompt, and the answer so far, but not the
operands' digits. The evaluate stage mixes the buckets with the weights of each split
(`language_entropy.evaluation.digit_blind_levels`).

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

from language_entropy.theory.answers import ENDED, SYMBOLS, answer_steps, answer_tokens
from language_entropy.theory.table import (
    COLUMNS,
    CSV_NAME,
    JSON_NAME,
    SCOPES,
    StepEntropies,
    bucket_entropy,
    load_theoretical_entropy,
    mixture_entropy,
    summary_metrics,
    theoretical_entropy_table,
    theoretical_levels,
)

__all__ = ["COLUMNS", "CSV_NAME", "ENDED", "JSON_NAME", "SCOPES", "SYMBOLS", "StepEntropies", "answer_steps",
           "answer_tokens", "bucket_entropy", "load_theoretical_entropy", "mixture_entropy", "summary_metrics",
           "theoretical_entropy_table", "theoretical_levels"]

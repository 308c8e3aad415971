"""Theoretical-entropy benchmarks: the cost of the compute-theoretical-entropy stage's heavy cases.

    python benchmarks/bench_theory.py [--repeats 3]

Prints one JSON object (seconds, the median of `repeats` runs):
* add_sub_20_digits_s: every add and sub bucket with 1..20 digit operands (2 x 400 buckets), default
  entropy params, answers reversed: marginals exact (enumeration or dp), conditionals exact
  (enumeration or analytic); the budget is 60 s on a 2-core machine;
* add_sub_20_digits_mixture_s: the two 1..20-digit mixtures from those buckets;
* mul_div_3x3_s: every mul and div bucket up to 3 x 3 digits, enumerated exactly.
The functions are importable (`time_add_sub_20_digits`, `time_mul_div_3x3`, `run`) for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from language_entropy.params import DigitRange, EntropyConfig
from language_entropy.theory import StepEntropies, bucket_entropy, mixture_entropy

CONFIG = EntropyConfig()


def _buckets(ops: tuple[str, ...], lengths: DigitRange) -> dict[str, dict[tuple[int, int], StepEntropies]]:
    return {op: {(a, b): bucket_entropy(op, a, b, True, CONFIG) for a in lengths.lengths for b in lengths.lengths}
            for op in ops}


def time_add_sub_20_digits() -> float:
    """Seconds for all 800 add/sub buckets with 1..20 digit operands."""
    start = time.perf_counter()
    _buckets(("add", "sub"), DigitRange(1, 20))
    return time.perf_counter() - start


def time_add_sub_20_digits_mixture() -> float:
    """Seconds for the 1..20-digit add and sub mixtures (their buckets computed beforehand, not timed)."""
    lengths = DigitRange(1, 20)
    buckets = _buckets(("add", "sub"), lengths)
    start = time.perf_counter()
    for op, found in buckets.items():
        mixture_entropy(op, lengths, True, CONFIG, found)
    return time.perf_counter() - start


def time_mul_div_3x3() -> float:
    """Seconds for every mul and div bucket up to 3 x 3 digits (exact enumeration)."""
    start = time.perf_counter()
    _buckets(("mul", "div"), DigitRange(1, 3))
    return time.perf_counter() - start


def run(repeats: int = 3) -> dict[str, float]:
    timers = {"add_sub_20_digits_s": time_add_sub_20_digits,
              "add_sub_20_digits_mixture_s": time_add_sub_20_digits_mixture,
              "mul_div_3x3_s": time_mul_div_3x3}
    return {name: round(statistics.median(timer() for _ in range(repeats)), 3) for name, timer in timers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    print(json.dumps(run(parser.parse_args().repeats), indent=2))


if __name__ == "__main__":
    main()

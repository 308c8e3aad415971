"""Buckets and mixtures put together, the table the compute-theoretical-entropy stage writes, and its readers."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from language_entropy.entropy import entropy_bits
from language_entropy.errors import UserError
from language_entropy.params import OPERATIONS, DataConfig, DigitRange, EntropyConfig
from language_entropy.theory.analytic import Segment, analytic_prefix_entropies, answer_count_segments
from language_entropy.theory.answers import ENDED, LN2, N_SYMBOLS, answer_steps, bucket_pairs
from language_entropy.theory.carry_chain import dp_distributions
from language_entropy.theory.enumeration import enumerable, enumerate_answers, exact_step_entropies
from language_entropy.theory.monte_carlo import MC_SEED, plugin_conditionals, plugin_marginals, sample_tokens

CSV_NAME = "theoretical_entropy.csv"
JSON_NAME = "theoretical_entropy.json"
SCOPES = ("bucket", "in_distribution", "ood")
COLUMNS = ("scope", "operation", "a_digits", "b_digits", "step", "marginal_bits", "conditional_bits",
           "running_fraction", "method", "stderr_bits", "conditional_stderr_bits", "note")


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
    def running_fraction(self) -> np.ndarray:
        """P(the answer is still running at step t) = 1 - P(Y_t = ended): it emits a digit, '-' or '$' there."""
        return 1.0 - self.distributions[:, ENDED]

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
    return StepEntropies(distributions, entropy_bits(distributions), _conditionals_from_prefixes(prefix_bits),
                         np.zeros(steps), np.zeros(steps), marginal_method, conditional_method, ("",) * steps,
                         answers=answers)


def bucket_entropy(op: str, a_digits: int, b_digits: int, reverse: bool, config: EntropyConfig) -> StepEntropies:
    """Per-step entropies of one bucket: exact enumeration, else dp+analytic (add/sub), else Monte Carlo."""
    steps = answer_steps(op, a_digits, b_digits)
    if enumerable(op, a_digits, b_digits, config):
        values, counts = enumerate_answers(op, a_digits, b_digits, config.chunk_size)
        probs = counts / counts.sum()
        return _exact(*exact_step_entropies(values, probs, reverse, steps), "exact", "exact", answers=(values, probs))
    if op in ("add", "sub"):
        distributions = dp_distributions(op, a_digits, b_digits, reverse, steps)
        prefix_bits = analytic_prefix_entropies(answer_count_segments(op, a_digits, b_digits), reverse, steps)
        return _exact(distributions, prefix_bits, "dp", "analytic")
    rng = np.random.default_rng((MC_SEED, OPERATIONS.index(op), a_digits, b_digits))
    tokens = sample_tokens(op, {(a_digits, b_digits): config.mc_samples}, reverse, steps, rng, config.chunk_size)
    distributions, marginal, marginal_stderr = plugin_marginals(tokens)
    conditional, conditional_stderr, notes = plugin_conditionals(tokens)
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
    marginal = entropy_bits(distributions)
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
        conditional = _conditionals_from_prefixes(exact_step_entropies(values, probs, reverse, steps)[1])
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
        tokens = sample_tokens(op, sizes, reverse, steps, rng, config.chunk_size)
        conditional, conditional_stderr, notes = plugin_conditionals(tokens)
        conditional_method = "monte_carlo"
    return StepEntropies(distributions, marginal + bias, conditional, np.sqrt(variance), conditional_stderr,
                         marginal_method, conditional_method, tuple(notes), samples=0)


def _rows(scope: str, op: str, ab: tuple[int, int] | tuple[None, None], result: StepEntropies) -> list[dict]:
    return [{"scope": scope, "operation": op, "a_digits": ab[0], "b_digits": ab[1], "step": t,
             "marginal_bits": result.marginal_bits[t], "conditional_bits": result.conditional_bits[t],
             "running_fraction": result.running_fraction[t], "method": result.method,
             "stderr_bits": result.marginal_stderr_bits[t],
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
    """Columns step, marginal_bits, conditional_bits, running_fraction of one bucket (scope "bucket") or
    mixture, by step."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)} (got {scope!r})")
    if (scope == "bucket") != (a_digits is not None and b_digits is not None):
        raise ValueError("a_digits and b_digits are given for scope 'bucket', and only for it")
    rows = (table["scope"] == scope) & (table["operation"] == operation)
    if scope == "bucket":
        rows &= (table["a_digits"] == a_digits) & (table["b_digits"] == b_digits)
    if "running_fraction" not in table.columns:
        raise UserError("the theoretical-entropy table has no running_fraction column (written by older code): "
                        "rerun `dvc repro compute-theoretical-entropy`")
    levels = table.loc[rows.fillna(False), ["step", "marginal_bits", "conditional_bits", "running_fraction"]]
    if levels.empty:
        where = f"{operation} {a_digits}x{b_digits}" if scope == "bucket" else f"{scope} {operation}"
        raise UserError(f"no theoretical entropy for {where}: rerun `dvc repro compute-theoretical-entropy` "
                        "after changing data.operations or the digit ranges")
    return levels.sort_values("step").reset_index(drop=True)

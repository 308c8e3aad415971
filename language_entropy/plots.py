"""Figures of the pipeline: one function per figure, plain data in, one PNG out.

Every function takes pandas DataFrames / numpy arrays in the formats of the metrics files
(metrics/*.csv), an output path and a `dpi`, and writes one PNG of exactly ``figsize * dpi``
pixels (no tight bounding box; constrained layout keeps labels inside). Figures are built
with matplotlib's object API on the Agg canvas, never through pyplot, so nothing is
registered globally, no display is needed and the figure is closed (freed) after saving.
Entropies are in bits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA

SPLIT_TITLES = {"test": "test (in distribution)", "test_ood": "test_ood (longer operands)"}
RIGHT, WRONG = "-", "--"  # line styles of right and wrong answers in the trajectories
ENTROPY_STEP_PREFIX = "entropy_step_"


@dataclass(frozen=True)
class Trajectory:
    """One generated answer: its label (e.g. ``12+7=19``), whether it was right, the emitted
    tokens and, per hidden-state index (0 = input embeddings), the states that emitted them:
    ``states[layer]`` has shape (len(tokens), C)."""

    label: str
    correct: bool
    tokens: Sequence[str]
    states: Mapping[int, np.ndarray]


# ----------------------------------------------------------------------------- helpers


def pca(x: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of the rows of `x` (n, C), through scikit-learn's PCA.

    Returns (projection (n, k), components (k, C), explained variance ratio (k,)). Signs are
    fixed so that each component's largest-magnitude loading is positive. Components beyond
    the data's rank (fewer than k rows or columns) are zero, with ratio 0.
    """
    x = np.asarray(x, dtype=np.float64)
    if n_components < 1:
        raise ValueError(f"pca needs n_components >= 1 (got {n_components})")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"pca needs a non-empty 2-D array (got shape {x.shape})")
    k = min(n_components, *x.shape)
    components, explained = np.zeros((n_components, x.shape[1])), np.zeros(n_components)
    if x.shape[0] > 1:  # one row has no variance to explain
        fitted = PCA(n_components=k, svd_solver="full").fit(x)
        signs = np.sign(fitted.components_[np.arange(k), np.abs(fitted.components_).argmax(axis=1)])
        components[:k] = fitted.components_ * signs[:, None]
        explained[:k] = np.nan_to_num(fitted.explained_variance_ratio_)
    return (x - x.mean(axis=0)) @ components.T, components, explained


def new_figure(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure with an nrows x ncols grid of axes (always 2-D), not tied to any GUI backend."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Write `fig` as a PNG of figsize * dpi pixels (parents created) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    fig.clear()
    return path


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing} (has {list(df.columns)})")


def _splits(df: pd.DataFrame) -> list[str]:
    """The splits present, known ones first in their usual order."""
    present = list(dict.fromkeys(df["split"]))
    return [s for s in SPLIT_TITLES if s in present] + [s for s in present if s not in SPLIT_TITLES]


def _colours(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


ENTROPY_LINEAR_BELOW = 1e-3  # bits: the symlog entropy axes are linear below this, logarithmic above


def _entropy_axis(ax, label: str) -> None:
    """A symlog entropy axis: a trained model's 0.001-0.3 bits and the digit-blind 1-3.3 bits both readable,
    and an exact 0 still drawn."""
    ax.set_yscale("symlog", linthresh=ENTROPY_LINEAR_BELOW)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"{label}, symlog scale")


def _style_legend(fig: Figure, styles: Mapping[str, str], **kwargs):
    """A figure legend of line styles only (grey lines), beside any other legend."""
    handles = [Line2D([], [], color="grey", linestyle=ls) for ls in styles.values()]
    return fig.legend(handles, list(styles), **kwargs)


def entropy_step_columns(train_curve: pd.DataFrame) -> list[tuple[int, str]]:
    """(answer step, column) of every ``entropy_step_<k>`` column, by step."""
    found = [(int(m.group(1)), c) for c in train_curve.columns
             if (m := re.fullmatch(rf"{ENTROPY_STEP_PREFIX}(\d+)", str(c)))]
    return sorted(found)


# ----------------------------------------------------------------------------- figures


def plot_trajectories(trajectories: Sequence[Trajectory], layers: Sequence[int], path: str | Path,
                      dpi: int = 110) -> Path:
    """Generation trajectories in hidden-state space, one subplot per layer.

    Each layer's PCA is fitted on all states of all trajectories at that layer; a trajectory
    is its states joined in step order, each point annotated with the token it emitted, the
    first one drawn as a square. Colour tells problems apart, line style right (solid) from
    wrong (dashed).
    """
    if not trajectories:
        raise ValueError("plot_trajectories needs at least one trajectory")
    for t in trajectories:
        for layer in layers:
            if layer not in t.states:
                raise ValueError(f"trajectory {t.label!r} has no states for layer {layer} (has {sorted(t.states)})")
            if len(t.states[layer]) != len(t.tokens):
                raise ValueError(f"trajectory {t.label!r}: {len(t.states[layer])} states at layer {layer} "
                                 f"but {len(t.tokens)} tokens")
    fig, axes = new_figure(1, len(layers), (5.0 * len(layers) + 2.5, 5.0))
    colours = _colours(len(trajectories))
    for ax, layer in zip(axes[0], layers, strict=True):
        projected, _, ratio = pca(np.concatenate([np.asarray(t.states[layer]) for t in trajectories]))
        bounds = np.cumsum([0] + [len(t.tokens) for t in trajectories])
        # Points that coincide (at layer 0 every emission of a token is the same embedding) get one label,
        # listing the tokens there, instead of a pile of overlapping ones.
        span = np.ptp(projected, axis=0).max() or 1.0
        labels_at: dict[tuple[int, int], tuple[np.ndarray, list[str]]] = {}
        for t, colour, start, stop in zip(trajectories, colours, bounds[:-1], bounds[1:], strict=True):
            xy = projected[start:stop]
            ax.plot(xy[:, 0], xy[:, 1], linestyle=RIGHT if t.correct else WRONG, marker="o", markersize=4,
                    color=colour, label=f"{t.label} ({'right' if t.correct else 'wrong'})")
            ax.plot(xy[:1, 0], xy[:1, 1], marker="s", markersize=8, color=colour, linestyle="none")
            for point, token in zip(xy, t.tokens, strict=True):
                key = tuple(np.round(point / span * 50).astype(int))  # within 1/50 of the spread: one place
                labels_at.setdefault(key, (point, []))[1].append(token)
        for point, tokens in labels_at.values():
            ax.annotate("".join(dict.fromkeys(tokens)), point, xytext=(4, 4), textcoords="offset points", fontsize=8,
                        color="black", bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.6,
                                             "linewidth": 0})
        ax.set_title(f"layer {layer}" + (" (input embeddings)" if layer == 0 else ""))
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="problem (square = first token)", fontsize=8)
    fig.suptitle("Hidden-state trajectories while generating the answer (PCA per layer)")
    return save_figure(fig, path, dpi)


def plot_digit_geometry(embeddings: np.ndarray, path: str | Path, dpi: int = 110) -> Path:
    """Token embeddings of the digits 0-9 (array (10, C)): their 2-D PCA with consecutive
    digits joined, beside their cosine-similarity matrix."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] != 10:
        raise ValueError(f"digit embeddings must have shape (10, C) (got {embeddings.shape})")
    fig, axes = new_figure(1, 2, (11.0, 5.0))
    ax_pca, ax_cos = axes[0]

    projected, _, ratio = pca(embeddings)
    ax_pca.plot(projected[:, 0], projected[:, 1], color="tab:blue", marker="o", alpha=0.7)
    for digit, (x, y) in enumerate(projected):
        ax_pca.annotate(str(digit), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=11, weight="bold")
    ax_pca.set_title("Digit embeddings, PCA (consecutive digits joined)")
    ax_pca.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
    ax_pca.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
    ax_pca.grid(alpha=0.3)

    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.where(norms > 0, norms, 1.0)
    cosine = unit @ unit.T
    image = ax_cos.imshow(cosine, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    for (i, j), value in np.ndenumerate(cosine):
        ax_cos.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(value) > 0.6 else "black")
    ax_cos.set_xticks(range(10), [str(d) for d in range(10)])
    ax_cos.set_yticks(range(10), [str(d) for d in range(10)])
    ax_cos.set_xlabel("digit")
    ax_cos.set_ylabel("digit")
    ax_cos.set_title("Cosine similarity of digit embeddings")
    fig.colorbar(image, ax=ax_cos, label="cosine similarity")
    return save_figure(fig, path, dpi)


DIGIT_BLIND = "digit-blind level"  # H(Y_t | Y_<t, operation, lengths): operation and lengths known, digits not


def plot_entropy_by_step(entropy_by_step: pd.DataFrame, path: str | Path, dpi: int = 110) -> Path:
    """Model entropy per answer step against the digit-blind level (dashed): the entropy a predictor
    that reads the operation and the operand lengths but not the digits would have on the same
    answers still running; one panel per split, one colour per operation.

    entropy_by_step: metrics/entropy_by_step.csv (split, operation, step, model_entropy_bits,
    digit_blind_running_bits, ...).
    """
    _require_columns(entropy_by_step, ["split", "operation", "step", "model_entropy_bits",
                                       "digit_blind_running_bits"], "entropy_by_step")
    splits = _splits(entropy_by_step)
    operations = list(dict.fromkeys(entropy_by_step["operation"]))
    colours = dict(zip(operations, _colours(len(operations)), strict=True))
    curves = {"model": ("model_entropy_bits", "-"), f"{DIGIT_BLIND} (answers still running)":
              ("digit_blind_running_bits", "--")}
    fig, axes = new_figure(1, len(splits), (5.5 * len(splits), 4.5), sharey=True)
    for ax, split in zip(axes[0], splits, strict=True):
        rows = entropy_by_step[entropy_by_step["split"] == split]
        for op, group in rows.groupby("operation", sort=False):
            group = group.sort_values("step")
            for column, style in curves.values():
                ax.plot(group["step"], group[column], linestyle=style, color=colours[op],
                        marker="o" if style == "-" else None, label=op if style == "-" else None)
        ax.set_title(SPLIT_TITLES.get(split, split))
        ax.set_xlabel("answer step (token index after '=')")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _entropy_axis(axes[0, 0], "entropy (bits)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, title="operation", loc="outside right upper", fontsize=8)
    _style_legend(fig, {name: style for name, (_, style) in curves.items()}, loc="outside right lower", fontsize=8)
    fig.suptitle("Entropy of the next answer token: model vs a predictor that sees the operation and "
                 "lengths, not the digits")
    return save_figure(fig, path, dpi)


def plot_entropy_during_training(train_curve: pd.DataFrame, reference: pd.DataFrame | None, path: str | Path,
                                 dpi: int = 110) -> Path:
    """Mean validation entropy of each answer step over training, with each step's digit-blind level
    as a dashed horizontal line of the same colour: a model at that line has learned the answer
    format and lengths but not yet the digits.

    train_curve: metrics/train_curve.csv (``step`` and ``entropy_step_<k>`` columns; NaN rows,
    where entropy was not measured, are skipped). reference: columns ``step`` (answer step) and
    ``digit_blind_running_bits`` for the validation split as a whole (both operations: the mean
    per step covers them all), e.g. `evaluation.digit_blind_levels(theory, val, [])`. None draws
    no levels.
    """
    _require_columns(train_curve, ["step"], "train_curve")
    steps = entropy_step_columns(train_curve)
    if not steps:
        raise ValueError(f"train_curve has no {ENTROPY_STEP_PREFIX}<k> columns")
    levels = {}
    if reference is not None:
        _require_columns(reference, ["step", "digit_blind_running_bits"], "reference")
        levels = dict(zip(reference["step"].astype(int), reference["digit_blind_running_bits"], strict=True))
    cmap = colormaps["viridis"]
    fig, axes = new_figure(1, 1, (9.0, 5.0))
    ax = axes[0, 0]
    for i, (k, column) in enumerate(steps):
        colour = cmap(i / max(len(steps) - 1, 1))
        measured = train_curve[["step", column]].dropna()
        ax.plot(measured["step"], measured[column], marker="o", markersize=3, color=colour, label=f"answer step {k}")
        if k in levels and np.isfinite(levels[k]):
            ax.axhline(levels[k], color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel("training step")
    ax.set_xscale("symlog", linthresh=100)  # the dense early validations (0, 25, 50, 100, 200) get room
    _entropy_axis(ax, "mean entropy on validation (bits)")
    ax.set_title(f"Entropy per answer step during training (dashed: {DIGIT_BLIND})")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    _style_legend(fig, {"model (validation)": "-", f"{DIGIT_BLIND} (sees operation and lengths, not digits)": "--"},
                  loc="outside right lower", fontsize=8)
    return save_figure(fig, path, dpi)


LOSS_TERMS = ("loss", "ce_loss", "continuity_loss", "entropy_loss", "val_loss")


def plot_training_curves(train_curve: pd.DataFrame, path: str | Path, dpi: int = 110) -> Path:
    """Every loss term against the training step (left; log scale when all drawn values are
    positive) and the validation exact match (right).

    train_curve: metrics/train_curve.csv. A term that is zero or NaN throughout (switched off)
    is left out; NaN rows (e.g. val_loss between evaluations) are skipped per term.
    """
    _require_columns(train_curve, ["step", "val_exact_match"], "train_curve")
    fig, axes = new_figure(1, 2, (12.0, 4.5))
    ax_loss, ax_em = axes[0]
    drawn = []
    for term in (t for t in LOSS_TERMS if t in train_curve.columns):
        values = train_curve[["step", term]].dropna()
        if values.empty or not values[term].ne(0).any():
            continue
        ax_loss.plot(values["step"], values[term], label=term, marker="o" if term == "val_loss" else None,
                     markersize=3, linewidth=1.2)
        drawn.append(values[term].to_numpy())
    if drawn and (np.concatenate(drawn) > 0).all():
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("loss value per answer token")
    ax_loss.set_title("Loss terms (cross-entropy in nats)")
    ax_loss.grid(alpha=0.3, which="both")
    if drawn:
        ax_loss.legend(fontsize=8)

    measured = train_curve[["step", "val_exact_match"]].dropna()
    ax_em.plot(measured["step"], measured["val_exact_match"], marker="o", markersize=3, color="tab:green")
    ax_em.set_ylim(-0.02, 1.02)
    ax_em.set_xlabel("training step")
    ax_em.set_ylabel("exact match (fraction of problems)")
    ax_em.set_title("Validation exact match")
    ax_em.grid(alpha=0.3)
    return save_figure(fig, path, dpi)


DECODING_LABELS = {"greedy": "greedy answer", "sampled_t1": "one sample at T=1"}


def plot_reliability(reliability: pd.DataFrame, path: str | Path, dpi: int = 110,
                     ece: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Sequence-level reliability diagram per split: the exact match of the answers in each bin of
    sequence confidence (the model's probability of the whole answer, EOS included) as bars for the
    greedy answer, and as points for one answer sampled at T=1, beside the diagonal of perfect
    calibration; the bar's gap to its mean confidence is red.

    reliability: metrics/sequence_reliability.csv (split, operation, decoding, bin_lower, bin_upper,
    count, confidence, accuracy; only the rows of operation "all" are drawn when the column is
    there); empty bins (count 0) are not drawn. ece: split -> decoding -> expected calibration
    error, shown in the panel title when given.
    """
    _require_columns(reliability, ["split", "decoding", "bin_lower", "bin_upper", "count", "confidence",
                                   "accuracy"], "reliability")
    if "operation" in reliability.columns:
        reliability = reliability[reliability["operation"] == "all"]
    splits = _splits(reliability)
    fig, axes = new_figure(1, len(splits), (5.0 * len(splits), 5.0), sharey=True)
    for ax, split in zip(axes[0], splits, strict=True):
        filled = reliability[(reliability["split"] == split) & (reliability["count"] > 0)]
        rows = filled[filled["decoding"] == "greedy"]
        width = rows["bin_upper"] - rows["bin_lower"]
        ax.bar(rows["bin_lower"], rows["accuracy"], width=width, align="edge", color="tab:blue",
               edgecolor="black", linewidth=0.5, label=f"exact match, {DECODING_LABELS['greedy']}")
        ax.bar(rows["bin_lower"], rows["confidence"] - rows["accuracy"], bottom=rows["accuracy"], width=width,
               align="edge", color="tab:red", alpha=0.35, edgecolor="tab:red", label="gap to confidence")
        for _, row in rows.iterrows():  # how many answers each bar stands for: a bar of 1 is no evidence
            ax.annotate(f"n={int(row['count'])}", (row["bin_lower"] + (row["bin_upper"] - row["bin_lower"]) / 2,
                                                   max(row["accuracy"], row["confidence"])),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=6, rotation=90)
        sampled = filled[filled["decoding"] == "sampled_t1"]
        ax.plot(sampled["confidence"], sampled["accuracy"], marker="o", linestyle="none", color="tab:orange",
                label=f"exact match, {DECODING_LABELS['sampled_t1']}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        title = SPLIT_TITLES.get(split, split)
        if ece is not None and split in ece:
            title += "\nECE " + ", ".join(f"{DECODING_LABELS.get(d, d)} {v:.3f}" for d, v in ece[split].items())
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.15)  # room for the counts above a full bar
        ax.set_xlabel("sequence confidence (model's probability of the answer)")
        ax.legend(loc="upper left", fontsize=7)
    axes[0, 0].set_ylabel("exact match (fraction of answers)")
    fig.suptitle("Sequence-level reliability diagram")
    return save_figure(fig, path, dpi)


def plot_temperature(temperature: pd.DataFrame, path: str | Path, dpi: int = 110) -> Path:
    """Exact match (left) and mean entropy (right) against the sampling temperature, a line
    per split. temperature: metrics/temperature.csv (split, temperature, exact_match,
    mean_entropy_bits); temperature 0 is greedy decoding, whose entropy (of the point mass it
    samples from) is 0."""
    _require_columns(temperature, ["split", "temperature", "exact_match", "mean_entropy_bits"], "temperature")
    fig, axes = new_figure(1, 2, (11.0, 4.5))
    ax_em, ax_h = axes[0]
    splits = _splits(temperature)
    for split, colour in zip(splits, _colours(len(splits)), strict=True):
        rows = temperature[temperature["split"] == split].sort_values("temperature")
        label = SPLIT_TITLES.get(split, split)
        ax_em.plot(rows["temperature"], rows["exact_match"], marker="o", color=colour, label=label)
        ax_h.plot(rows["temperature"], rows["mean_entropy_bits"], marker="o", color=colour, label=label)
    ax_em.set_ylim(-0.02, 1.02)
    ax_em.set_ylabel("exact match (fraction of problems)")
    ax_em.set_title("Accuracy vs temperature")
    ax_h.set_ylabel("mean entropy of the sampled distribution (bits)")
    ax_h.set_title("Entropy vs temperature")
    for ax in (ax_em, ax_h):
        ax.set_xlabel("sampling temperature (0 = greedy)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi)


# ----------------------------------------------------------------------------- RL fine-tuning

NATS_PER_BIT = float(np.log(2.0))


def plot_rl_entropy_accuracy(rl_curve: pd.DataFrame, fit: Mapping[str, float], path: str | Path,
                             dpi: int = 110) -> Path:
    """Validation exact match against the policy's entropy during RL, one point per validation (coloured by
    step), with the least-squares curve R = -a exp(H) + b of Cui et al. 2025 (H in nats, drawn over bits) and
    its predicted ceiling b - a, the exact match at entropy 0: what this run can still reach by collapsing.

    rl_curve: metrics/rl_curve.csv (step, entropy_bits, val_exact_match). fit: metrics/rl_fit.json (a, b,
    ceiling; NaN or missing draws no curve).
    """
    _require_columns(rl_curve, ["step", "entropy_bits", "val_exact_match"], "rl_curve")
    points = rl_curve.dropna(subset=["entropy_bits", "val_exact_match"])
    fig, axes = new_figure(1, 1, (7.5, 5.0))
    ax = axes[0, 0]
    drawn = ax.scatter(points["entropy_bits"], points["val_exact_match"], c=points["step"], cmap="viridis", zorder=3)
    fig.colorbar(drawn, ax=ax, label="RL step")
    a, b = (np.nan if fit.get(key) is None else float(fit[key]) for key in ("a", "b"))  # None: no fit
    if np.isfinite(a) and np.isfinite(b) and len(points):
        bits = np.linspace(0.0, 1.2 * float(points["entropy_bits"].max()), 200)
        ax.plot(bits, -a * np.exp(bits * NATS_PER_BIT) + b, color="black",
                label=f"fit R = {-a:.3g} exp(H) {'+' if b >= 0 else '-'} {abs(b):.3g} (H in nats)")
        ax.axhline(b - a, color="black", linestyle=":", label=f"predicted ceiling (H = 0): {b - a:.3f}")
    ax.set_xlabel("policy entropy of the sampled answer tokens (bits)")
    ax.set_ylabel("greedy exact match on the RL validation split")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("RL: validation accuracy against policy entropy")
    return save_figure(fig, path, dpi)


def plot_rl_entropy_by_step(by_step: pd.DataFrame, path: str | Path, dpi: int = 110) -> Path:
    """Entropy per answer step of the model before and after RL fine-tuning (teacher-forced on the RL
    validation problems, temperature 1) beside the digit-blind level of the same problems (NaN: none known).

    by_step: columns step, before_bits, after_bits, digit_blind_running_bits.
    """
    _require_columns(by_step, ["step", "before_bits", "after_bits", "digit_blind_running_bits"], "by_step")
    fig, axes = new_figure(1, 1, (7.5, 4.5))
    ax = axes[0, 0]
    rows = by_step.sort_values("step")
    for column, label, style in (("before_bits", "trained model (before RL)", "-"),
                                 ("after_bits", "fine-tuned model (after RL)", "-"),
                                 ("digit_blind_running_bits", f"{DIGIT_BLIND} (answers still running)", "--")):
        ax.plot(rows["step"], rows[column], linestyle=style, marker="o" if style == "-" else None, label=label)
    ax.set_xlabel("answer step (token index after '=')")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _entropy_axis(ax, "entropy (bits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Entropy per answer step on the RL validation problems, before and after RL")
    return save_figure(fig, path, dpi)


def plot_rl_curves(rl_curve: pd.DataFrame, path: str | Path, dpi: int = 110) -> Path:
    """Reward and exact match (sampled, and greedy on validation), the policy's entropy (mean and per answer
    step) and Cui et al.'s covariance term over RL steps.

    rl_curve: metrics/rl_curve.csv.
    """
    _require_columns(rl_curve, ["step", "reward", "sample_exact_match", "val_exact_match", "entropy_bits",
                                "covariance"], "rl_curve")
    fig, axes = new_figure(1, 3, (15.0, 4.2))
    rewards, entropy, covariance = axes[0]
    for column, label in (("reward", "mean reward of the samples"), ("sample_exact_match", "samples exactly right"),
                          ("val_exact_match", "greedy exact match, RL validation")):
        measured = rl_curve[["step", column]].dropna()
        rewards.plot(measured["step"], measured[column], marker="o", markersize=3, label=label)
    rewards.set_ylabel("fraction")
    rewards.legend(fontsize=8)
    cmap = colormaps["viridis"]
    steps = entropy_step_columns(rl_curve)
    for i, (k, column) in enumerate(steps):
        measured = rl_curve[["step", column]].dropna()
        entropy.plot(measured["step"], measured[column], color=cmap(i / max(len(steps) - 1, 1)), linewidth=1,
                     label=f"answer step {k}")
    measured = rl_curve[["step", "entropy_bits"]].dropna()
    entropy.plot(measured["step"], measured["entropy_bits"], color="black", linewidth=2, label="mean")
    _entropy_axis(entropy, "policy entropy of the samples (bits)")
    entropy.legend(fontsize=7, ncol=2)
    measured = rl_curve[["step", "covariance"]].dropna()
    covariance.plot(measured["step"], measured["covariance"], marker="o", markersize=3, color="tab:red")
    covariance.axhline(0.0, color="grey", linewidth=1)
    covariance.set_ylabel("Cov(log-probability, advantage) over tokens")
    for ax in axes[0]:
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    fig.suptitle("RL fine-tuning: reward, entropy (the exploration budget) and the covariance that drives it")
    return save_figure(fig, path, dpi)

"""Typed, validated parameters: one small frozen config per params.yaml section.

`load_params` reads params.yaml and builds every section; any unknown key, wrong type or
out-of-range value raises `ParamsError` with one line naming the key, the rule and the value,
e.g. ``params.yaml: data.digits.min must be >= 1 (got 0)``. Components receive only the
section they need (``params.model``, ``params.loss`` ...), never the whole file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from language_entropy.errors import ParamsError

OPERATIONS = ("add", "sub", "mul", "div")


def _require(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise ParamsError(f"{key} {rule} (got {value!r})")


@dataclass(frozen=True)
class DigitRange:
    min: int
    max: int

    def __post_init__(self):
        _require(self.min >= 1, "min", "must be >= 1", self.min)
        _require(self.max <= 30, "max", "must be <= 30", self.max)
        _require(self.max >= self.min, "max", f"must be >= min ({self.min})", self.max)

    @property
    def lengths(self) -> range:
        return range(self.min, self.max + 1)


@dataclass(frozen=True)
class DataConfig:
    operations: tuple[str, ...] = ("add", "sub")
    digits: DigitRange = DigitRange(1, 3)
    ood_digits: DigitRange = DigitRange(4, 5)
    train_size: int = 100_000
    val_size: int = 1_000
    test_size: int = 2_000
    ood_size: int = 1_000
    reverse_answer: bool = True

    def __post_init__(self):
        _require(len(self.operations) > 0, "operations", "must name at least one operation", list(self.operations))
        for op in self.operations:
            _require(op in OPERATIONS, "operations", f"must be a subset of {list(OPERATIONS)}", op)
        _require(len(set(self.operations)) == len(self.operations), "operations", "must not repeat",
                 list(self.operations))
        for name in ("train_size", "val_size", "test_size", "ood_size"):
            _require(getattr(self, name) > 0, name, "must be > 0", getattr(self, name))


@dataclass(frozen=True)
class EntropyConfig:
    """Theoretical entropy of the answers (compute-theoretical-entropy stage)."""

    exact_limit: int = 1_000_000  # enumerate a bucket exactly when it has at most this many operand pairs
    mc_samples: int = 200_000  # Monte Carlo samples for a bucket too large to enumerate
    chunk_size: int = 1_000_000  # operand pairs per vectorised chunk: bounds memory

    def __post_init__(self):
        for name in ("exact_limit", "mc_samples", "chunk_size"):
            _require(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))


POS_ENCODINGS = ("abacus", "rope", "learned")


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 3
    n_head: int = 6
    n_embd: int = 96
    dropout: float = 0.0
    pos_encoding: str = "abacus"
    abacus_max_offset: int = 4  # random place-value offset in training, so longer numbers than seen still align
    abacus_offset_equals: bool = False  # '=' and a leading '-' take the offset too: see README, Speed
    max_seq_len: int = 96  # longest token sequence (prompt + answer + bos/eos); also the position table size

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "max_seq_len"):
            _require(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        _require(self.n_embd % self.n_head == 0, "n_embd", f"must be divisible by n_head ({self.n_head})", self.n_embd)
        _require((self.n_embd // self.n_head) % 2 == 0, "n_embd", "must give an even head size (n_embd / n_head)",
                 self.n_embd)
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)", self.dropout)
        _require(self.pos_encoding in POS_ENCODINGS, "pos_encoding", f"must be one of {list(POS_ENCODINGS)}",
                 self.pos_encoding)
        _require(self.abacus_max_offset >= 0, "abacus_max_offset", "must be >= 0", self.abacus_max_offset)


ENTROPY_MASKS = ("none", "drop_high", "keep_high")


@dataclass(frozen=True)
class LossConfig:
    entropy_weight: float = 0.0  # > 0 penalises entropy, < 0 is an entropy bonus, 0 switches the term off
    entropy_temperature: float = 1.0
    entropy_target: float | None = None  # bits; when set, the coefficient is learned (SAC-style bonus)
    entropy_coef_init: float = 0.01  # starting bonus coefficient when entropy_target is set
    entropy_coef_lr: float = 0.01
    continuity_weight: float = 0.0
    continuity_on: str | int = "final"  # "embedding", "final", or a layer index (0 = embeddings)
    continuity_positions: str = "answer"  # "answer" or "all"
    continuity_metric: str = "l2"  # "l2" (original design) or "cosine"
    entropy_mask: str = "none"
    entropy_mask_quantile: float = 0.8
    entropy_chunk_size: int = 4096  # rows of logits per chunk when computing entropy
    label_smoothing: float = 0.0  # eps: CE target (1 - eps) one-hot + eps uniform; 0 is plain cross-entropy

    def __post_init__(self):
        _require(self.entropy_temperature > 0, "entropy_temperature", "must be > 0", self.entropy_temperature)
        if self.entropy_target is not None:
            _require(self.entropy_target >= 0, "entropy_target", "must be >= 0 bits or null", self.entropy_target)
        _require(self.entropy_coef_init > 0, "entropy_coef_init", "must be > 0", self.entropy_coef_init)
        _require(self.entropy_coef_lr > 0, "entropy_coef_lr", "must be > 0", self.entropy_coef_lr)
        _require(self.continuity_weight >= 0, "continuity_weight", "must be >= 0", self.continuity_weight)
        if isinstance(self.continuity_on, str):
            _require(self.continuity_on in ("embedding", "final"), "continuity_on",
                     "must be 'embedding', 'final' or a layer index >= 0", self.continuity_on)
        else:
            _require(self.continuity_on >= 0, "continuity_on", "must be 'embedding', 'final' or a layer index >= 0",
                     self.continuity_on)
        _require(self.continuity_positions in ("answer", "all"), "continuity_positions", "must be 'answer' or 'all'",
                 self.continuity_positions)
        _require(self.continuity_metric in ("l2", "cosine"), "continuity_metric", "must be 'l2' or 'cosine'",
                 self.continuity_metric)
        _require(self.entropy_mask in ENTROPY_MASKS, "entropy_mask", f"must be one of {list(ENTROPY_MASKS)}",
                 self.entropy_mask)
        _require(0.0 < self.entropy_mask_quantile < 1.0, "entropy_mask_quantile", "must be in (0, 1)",
                 self.entropy_mask_quantile)
        _require(self.entropy_chunk_size >= 1, "entropy_chunk_size", "must be >= 1", self.entropy_chunk_size)
        _require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)", self.label_smoothing)


DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    log_every: int = 25  # training loss and learning rate as MLflow step metrics (validation: eval_every)
    checkpoint_every: int = 500
    device: str = "auto"
    compile: bool = False
    cuda_graphs: bool = True  # on CUDA: capture the training step and generation in CUDA graphs (README, GPU)
    nproc_per_node: int = 1  # > 1: the stage relaunches itself through torchrun (DDP)
    threads: int | str = "auto"  # intra-op CPU threads of every stage: "auto" = every core this process may use

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "log_every", "checkpoint_every", "nproc_per_node"):
            _require(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        _require(self.lr > 0, "lr", "must be > 0", self.lr)
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0", self.warmup_steps)
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        _require(self.grad_clip > 0, "grad_clip", "must be > 0", self.grad_clip)
        _require(self.device in DEVICES, "device", f"must be one of {list(DEVICES)}", self.device)
        _require(self.threads == "auto" or (isinstance(self.threads, int) and self.threads >= 1), "threads",
                 "must be 'auto' or an integer >= 1", self.threads)


@dataclass(frozen=True)
class EvalConfig:
    samples: int | None = None  # problems per split; null = the whole split
    batch_size: int = 512
    temperatures: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
    top_k: int | None = None
    top_p: float | None = None
    calibration_bins: int = 15
    semantic_problems: int = 1000  # the whole default OOD split
    semantic_samples: int = 10
    semantic_temperature: float = 1.0

    def __post_init__(self):
        if self.samples is not None:
            _require(self.samples >= 1, "samples", "must be >= 1 or null", self.samples)
        _require(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        _require(len(self.temperatures) > 0, "temperatures", "must list at least one temperature", [])
        for t in self.temperatures:
            _require(t >= 0, "temperatures", "must all be >= 0 (0 = greedy)", t)
        if self.top_k is not None:
            _require(self.top_k >= 1, "top_k", "must be >= 1 or null", self.top_k)
        if self.top_p is not None:
            _require(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1] or null", self.top_p)
        _require(self.calibration_bins >= 1, "calibration_bins", "must be >= 1", self.calibration_bins)
        _require(self.semantic_problems >= 1, "semantic_problems", "must be >= 1", self.semantic_problems)
        _require(self.semantic_samples >= 2, "semantic_samples", "must be >= 2", self.semantic_samples)
        _require(self.semantic_temperature > 0, "semantic_temperature", "must be > 0", self.semantic_temperature)


@dataclass(frozen=True)
class VizConfig:
    trajectories: int = 8  # problems whose generation trajectories are drawn
    layers: tuple[int, ...] = (0, 3)  # hidden-state indices: 0 = input embeddings, n_layer = final layer
    dpi: int = 110

    def __post_init__(self):
        _require(self.trajectories >= 1, "trajectories", "must be >= 1", self.trajectories)
        _require(len(self.layers) > 0, "layers", "must list at least one layer", [])
        for layer in self.layers:
            _require(layer >= 0, "layers", "must all be >= 0", layer)
        _require(self.dpi >= 30, "dpi", "must be >= 30", self.dpi)


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "language-entropy"
    study: str | None = None  # when set, every run is tagged `study` with it: stages/compare.py --study selects them

    def __post_init__(self):
        _require(bool(self.experiment.strip()), "experiment", "must not be empty", self.experiment)
        if self.study is not None:
            _require(bool(self.study.strip()) and "/" not in self.study, "study",
                     "must be a non-empty name without '/' (it names reports/<study>/) or null", self.study)


MEMORY_LIMIT_ENV = "LANGUAGE_ENTROPY_MEMORY_LIMIT_GB"


@dataclass(frozen=True)
class ResourcesConfig:
    """Bounds checked when params are loaded (see `memory_estimate`): no stage starts what it cannot finish."""

    memory_limit_gb: float | None = None  # null: $LANGUAGE_ENTROPY_MEMORY_LIMIT_GB, else half this machine's memory

    def __post_init__(self):
        if self.memory_limit_gb is not None:
            _require(self.memory_limit_gb > 0, "memory_limit_gb", "must be > 0 or null", self.memory_limit_gb)


@dataclass(frozen=True)
class PathsConfig:
    """Every file the pipeline reads or writes, relative to the repository root (dvc.yaml templates these)."""

    data: str = "data"
    model: str = "models/model.pt"
    resume: str = "checkpoints"  # outside the stage's outs, so DVC does not delete the resume state
    metrics: str = "metrics"
    plots: str = "plots"


def longest_sequence(operation: str, digits: int) -> int:
    """Tokens of the longest problem with `digits`-digit operands: bos, both operands, operator, '=',
    the longest answer (a sign or carry adds one; a product doubles the digits), eos, one spare step."""
    answer = {"add": digits + 1, "sub": digits + 1, "mul": 2 * digits, "div": digits}[operation]
    return 1 + 2 * digits + 2 + answer + 2


@dataclass(frozen=True)
class Params:
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    entropy: EntropyConfig = field(default_factory=EntropyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def __post_init__(self):
        _require(0 <= self.seed < 2**32, "seed", "must be in [0, 2**32)", self.seed)
        # Checks across sections: caught here, before any stage spends time, not at the first step.
        longest, op, digits = max((longest_sequence(op, r.max), op, r.max) for op in self.data.operations
                                  for r in (self.data.digits, self.data.ood_digits))
        _require(self.model.max_seq_len >= longest, "model.max_seq_len",
                 f"must be >= {longest} to hold the longest problem ({op} of {digits}-digit operands, its answer, "
                 "bos, eos and a spare generation step)", self.model.max_seq_len)
        if not isinstance(self.loss.continuity_on, str):
            _require(self.loss.continuity_on <= self.model.n_layer, "loss.continuity_on",
                     f"must be a hidden-state index 0..model.n_layer ({self.model.n_layer})", self.loss.continuity_on)
        for layer in self.viz.layers:
            _require(layer <= self.model.n_layer, "viz.layers",
                     f"must be hidden-state indices 0..model.n_layer ({self.model.n_layer})", layer)
        _check_memory(self)

    def flat(self) -> dict[str, object]:
        """Every value under its dotted params.yaml name, e.g. ``{"loss.entropy_weight": 0.2}``."""
        return flatten(dataclasses.asdict(self))


# --- memory ------------------------------------------------------------------------------------------
# Estimates from the shapes, calibrated on this project's CPU runs (2026-11): a stage's peak is about
# start-up + data + model (+ optimizer) + one batch. Generous rather than tight: a configuration near the
# limit is refused, one a hundred times over it never starts (it would fill the memory within seconds).

GB = 1024**3
STARTUP_BYTES = GB // 2  # the interpreter with torch, pandas and MLflow imported
VOCAB_BOUND = 32  # tokens in the vocabulary, rounded up (params cannot import the tokenizer: it imports torch)
ROW_BYTES = 2_000  # one problem held as pandas rows, Python strings and token lists, besides its tokens
SEQUENCE_BYTES = 400  # one generated sequence's answer, scores and bookkeeping


def machine_memory() -> int | None:
    """Physical memory, or the cgroup's limit when smaller; None where neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if cgroup.isdigit():
            total = min(total, int(cgroup))
    except OSError:
        pass
    return total


def memory_limit(config: ResourcesConfig) -> tuple[float | None, str]:
    """The limit in bytes and where it comes from: the param, the environment, else half the machine."""
    if config.memory_limit_gb is not None:
        return config.memory_limit_gb * GB, "resources.memory_limit_gb"
    if os.environ.get(MEMORY_LIMIT_ENV):
        try:
            value = float(os.environ[MEMORY_LIMIT_ENV])
        except ValueError:
            value = -1.0
        _require(math.isfinite(value) and value > 0, f"${MEMORY_LIMIT_ENV}", "must be a number of GB > 0",
                 os.environ[MEMORY_LIMIT_ENV])
        return value * GB, f"${MEMORY_LIMIT_ENV}"
    total = machine_memory()
    return (total / 2 if total else None), f"half this machine's memory; set resources.memory_limit_gb or " \
                                          f"${MEMORY_LIMIT_ENV} to change it"


def _blame(ratios: dict[str, float]) -> str:
    """The key that grew most against its default, of those a term scales with."""
    return max(ratios, key=lambda key: ratios[key])


def memory_estimate(params: Params) -> dict[str, dict[str, tuple[float, str]]]:
    """Per stage, its terms: name -> (bytes, the params key that most makes it large)."""
    m, d, t, e = params.model, params.data, params.train, params.eval
    model0, train0, eval0 = ModelConfig(), TrainConfig(), EvalConfig()
    C, L, H = m.n_embd, m.n_layer, m.n_head
    hidden = 32 * math.ceil(8 * C / 3 / 32)  # the SwiGLU width (model.py)
    train_len = max(longest_sequence(op, d.digits.max) for op in d.operations)
    eval_len = max(longest_sequence(op, r.max) for op in d.operations for r in (d.digits, d.ood_digits))
    table_rows = {"learned": m.max_seq_len, "abacus": m.max_seq_len + m.abacus_max_offset + 1}.get(m.pos_encoding, 0)
    table = table_rows * C + (m.max_seq_len * C // H if m.pos_encoding == "rope" else 0)  # rope: cos/sin buffers
    layers = L * (4 * C * C + 3 * C * hidden + 2 * C) + (VOCAB_BOUND + 1) * C
    width = {"model.n_embd": (C / model0.n_embd) ** 2, "model.n_layer": L / model0.n_layer}
    model_key = "model.max_seq_len" if table > layers else _blame(width)

    def layer_floats(length: int) -> int:  # floats one token keeps per layer in a forward pass
        return 10 * C + 4 * hidden + 2 * H * length

    def rows(n: int, length: int) -> int:  # problems held as frames, strings and token lists
        return n * (ROW_BYTES + 32 * length)

    in_split = [min(e.samples or size, size) for size in (d.test_size, d.ood_size)]
    n_eval, n_semantic = sum(in_split), min(e.semantic_problems, max(in_split))
    eval_key = "eval.samples" if e.samples is not None and e.samples < max(d.test_size, d.ood_size) else \
        ("data.test_size" if d.test_size >= d.ood_size else "data.ood_size")
    eval_rows = min(e.batch_size, max(max(in_split), n_semantic * e.semantic_samples))  # batches never exceed it
    outputs = n_eval * ((len(e.temperatures) + 1) * SEQUENCE_BYTES + 64 * eval_len)  # sampled rows, token stats
    model_only = (4 * (table + layers), model_key)
    return {
        "generate-data": {"data": (rows(d.train_size + d.val_size + d.test_size + d.ood_size, eval_len),
                                   _blame({f"data.{k}": getattr(d, k) for k in ("train_size", "val_size",
                                                                                "test_size", "ood_size")}))},
        "train": {
            "data": (rows(d.train_size + d.val_size, train_len),
                     "data.train_size" if d.train_size >= d.val_size else "data.val_size"),
            "model and optimizer": (16 * (table + layers), model_key),
            "one batch's activations": (
                t.batch_size / t.nproc_per_node * train_len * (L * layer_floats(train_len) + 8 * VOCAB_BOUND) * 4,
                _blame({"train.batch_size": t.batch_size / train0.batch_size, **width})),
        },
        "evaluate": {
            "data": (rows(n_eval, eval_len) + outputs, eval_key),
            "model": model_only,
            "one evaluation batch": (  # no autograd: one layer at a time, and the KV cache of every layer
                eval_rows * eval_len * 4 * (layer_floats(eval_len) + 8 * VOCAB_BOUND + 2 * L * C),
                _blame({"eval.batch_size": e.batch_size / eval0.batch_size, **width})),
            "semantic sampling": (
                n_semantic * e.semantic_samples * (SEQUENCE_BYTES + 8 * eval_len),
                _blame({"eval.semantic_samples": e.semantic_samples / eval0.semantic_samples,
                        "eval.semantic_problems": n_semantic / eval0.semantic_problems})),
        },
        "visualize": {
            "data": (rows(n_eval, eval_len) + n_eval * SEQUENCE_BYTES, eval_key),
            "model": model_only,
            "trajectories": (min(params.viz.trajectories, n_eval) * eval_len * (L + 1) * C * 4 * 2,
                             "viz.trajectories"),
        },
    }


def _human(n: float) -> str:
    for unit, size in (("TB", 1024**4), ("GB", GB), ("MB", 1024**2)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} KB"


def _check_memory(params: Params) -> None:
    """Refuse, naming the key and the estimate, a configuration whose stage would need more than the limit."""
    limit, source = memory_limit(params.resources)
    if limit is None:
        return
    for stage, terms in memory_estimate(params).items():
        total = STARTUP_BYTES + sum(size for size, _ in terms.values())
        if total > limit:
            term, (_, key) = max(terms.items(), key=lambda item: item[1][0])
            parts = ", ".join(f"{name} {_human(size)}" for name, (size, _) in terms.items())
            value = params.flat().get(key)
            raise ParamsError(f"{key}: the {stage} stage would need about {_human(total)} of memory ({parts}, "
                              f"start-up {_human(STARTUP_BYTES)}), above the limit of {_human(limit)} ({source}): "
                              f"lower {key} (got {value!r})")


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested params mapping as ``{"section.key": value}``, tuples as lists."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def _coerce(value: object, hint: object, key: str) -> object:
    """Check `value` against a type hint (int, float, bool, str, tuple[T, ...], Optional, unions)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            _require(type(None) in options, key, "must not be null", value)
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except ParamsError as error:
                errors.append(error)
        raise errors[0] if len(errors) == 1 else ParamsError(
            f"{key} must be one of the types {[getattr(o, '__name__', str(o)) for o in options]} (got {value!r})")
    if origin is tuple:
        _require(isinstance(value, list | tuple), key, "must be a list", value)
        (item_hint, _) = typing.get_args(hint)
        return tuple(_coerce(item, item_hint, key) for item in value)
    if dataclasses.is_dataclass(hint):
        _require(isinstance(value, dict), key, "must be a mapping", value)
        return _build(hint, value, f"{key}.")
    if hint is bool:
        _require(isinstance(value, bool), key, "must be true or false", value)
    elif hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, "must be an integer", value)
    elif hint is float:
        _require(isinstance(value, int | float) and not isinstance(value, bool), key, "must be a number", value)
        value = float(value)
        _require(math.isfinite(value), key, "must be finite", value)
    elif hint is str:
        _require(isinstance(value, str), key, "must be a string", value)
    return value


def _build(cls: type, mapping: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        _require(key in names, f"{prefix}{key}", f"is not a known key (known: {', '.join(names)})", mapping[key])
    values = {name: _coerce(mapping[name], hints[name], f"{prefix}{name}") for name in names if name in mapping}
    try:
        return cls(**values)
    except ParamsError as error:  # __post_init__ names the key relative to its section: add the section
        raise ParamsError(f"{prefix}{error}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every problem is a one-line `ParamsError` naming the file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found in {Path.cwd()} (run the stages from the repository root, "
                          "where params.yaml and dvc.yaml are, or pass --params)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (got {type(raw).__name__})")
    try:
        return _build(Params, raw)
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None

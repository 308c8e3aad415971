"""Typed, validated parameters: one small frozen config per params.yaml section.

`load_params` reads params.yaml and builds every section; any unknown key, wrong type or
out-of-range value raises `ParamsError` with one line naming the key, the rule and the value,
e.g. ``params.yaml: data.digits.min must be >= 1 (got 0)``. Components receive only the
section they need (``params.model``, ``params.loss`` ...), never the whole file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from language_entropy.errors import ParamsError
from language_entropy.resources import check_memory, longest_sequence

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
    seed: int | None = None  # the splits' seed; null = the run's `seed`. Set it to hold the data fixed across seeds

    def __post_init__(self):
        if self.seed is not None:
            _require(0 <= self.seed < 2**32, "seed", "must be in [0, 2**32) or null (follow the run's seed)", self.seed)
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

    @property
    def ffn_width(self) -> int:
        """The SwiGLU hidden width: ~8/3 n_embd (the parameters of a 4x MLP), a multiple of 32; 256 for 96."""
        return 32 * math.ceil(8 * self.n_embd / 3 / 32)


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
    warmup_steps: int = 500  # 100 stalled one seed in four; 500: none of 24 (reports/defaults)
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


RL_REWARDS = ("exact", "digits")
RL_LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
RL_TOKEN_MASKS = ("none", "top_entropy", "bottom_entropy")
RL_ENTROPY_TOKENS = ("masked", "all")
RL_COV_CONTROLS = ("none", "clip_cov", "kl_cov", "kl_cov_clipped")


@dataclass(frozen=True)
class RLConfig:
    """Policy-gradient fine-tuning of the trained model with a verifiable reward (finetune stage, docs/rl.md).

    The entropy controls reuse the supervised loss's names and sign convention: entropy_weight > 0
    penalises entropy, < 0 is a bonus; entropy_target (bits) makes the coefficient a learned bonus.
    """

    steps: int = 125  # 0: the trained model passes through unchanged
    seed: int = 0  # RL's own random streams (prompt order, samples, Clip-Cov picks); `seed` made the model
    prompts_per_step: int = 16  # P
    samples_per_prompt: int = 8  # G: answers sampled per prompt, one group
    minibatches: int = 1  # optimizer updates per pass over a step's samples (whole groups each)
    ppo_epochs: int = 1  # passes over a step's samples
    temperature: float = 1.5  # sampling temperature; the policy is softmax(logits / temperature)
    lr: float = 5e-5  # 3e-4 forgot the trained lengths within 10 steps (reports/defaults)
    grad_clip: float = 1.0
    reward: str = "exact"  # "exact": 1 for the exact answer ending in EOS; "digits": per-position partial credit
    scale_rewards: bool = True  # divide each group's advantages by its reward std (GRPO); false: Dr. GRPO
    loss_type: str = "dapo"  # aggregation as TRL's loss_type: grpo, dapo, dr_grpo
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.28  # DAPO's clip-higher: larger than clip_low
    kl_coef: float = 0.0  # beta of the k3 KL estimate to the trained (reference) model
    entropy_weight: float = 0.0  # as loss.entropy_weight: > 0 penalises entropy, < 0 is a bonus
    entropy_target: float | None = None  # bits; when set, the coefficient is a learned bonus (SAC-style)
    entropy_coef_init: float = 0.01
    entropy_coef_lr: float = 0.01
    token_mask: str = "none"  # top_entropy: gradient on the top entropy quantile only; bottom_entropy: on the rest
    token_mask_quantile: float = 0.2  # the fraction of highest-entropy tokens top_entropy keeps
    entropy_tokens: str = "masked"  # the entropy term over the tokens the token mask keeps (TRL >= 1.8), or all
    cov_control: str = "none"  # Cui et al. 2025: clip_cov, kl_cov (unclipped, the paper's) or kl_cov_clipped
    clip_cov_ratio: float = 0.02  # fraction of tokens whose gradient Clip-Cov detaches
    clip_cov_low: float = 1.0  # the covariance band Clip-Cov picks from
    clip_cov_high: float = 5.0
    kl_cov_ratio: float = 0.02  # fraction of tokens (largest covariance) KL-Cov penalises
    kl_cov_coef: float = 1.0
    replay_weight: float = 1.0  # weight of a supervised cross-entropy term on the train split (the trained lengths)
    replay_batch_size: int = 64  # train problems per step in that term
    digits: DigitRange = DigitRange(4, 4)  # operand lengths of the RL prompts (data.operations)
    prompt_size: int = 20_000  # RL prompt split
    val_size: int = 500  # RL validation split: greedy exact match every eval_every steps
    eval_every: int = 25
    log_every: int = 5
    checkpoint_every: int = 25

    def __post_init__(self):
        _require(self.steps >= 0, "steps", "must be >= 0", self.steps)
        _require(self.samples_per_prompt >= 2, "samples_per_prompt",
                 "must be >= 2 (a group needs two answers for a baseline)", self.samples_per_prompt)
        for name in ("prompts_per_step", "minibatches", "ppo_epochs", "prompt_size", "val_size", "eval_every",
                     "log_every", "checkpoint_every", "replay_batch_size"):
            _require(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        _require(self.prompts_per_step % self.minibatches == 0, "minibatches",
                 f"must divide rl.prompts_per_step ({self.prompts_per_step}): a minibatch holds whole groups",
                 self.minibatches)
        _require(self.temperature > 0, "temperature", "must be > 0 (the policy samples)", self.temperature)
        _require(self.lr > 0, "lr", "must be > 0", self.lr)
        _require(self.grad_clip > 0, "grad_clip", "must be > 0", self.grad_clip)
        _require(self.reward in RL_REWARDS, "reward", f"must be one of {list(RL_REWARDS)}", self.reward)
        _require(self.loss_type in RL_LOSS_TYPES, "loss_type", f"must be one of {list(RL_LOSS_TYPES)}",
                 self.loss_type)
        _require(0.0 <= self.clip_low < 1.0, "clip_low", "must be in [0, 1)", self.clip_low)
        _require(self.clip_high >= 0.0, "clip_high", "must be >= 0", self.clip_high)
        _require(self.kl_coef >= 0.0, "kl_coef", "must be >= 0", self.kl_coef)
        _require(self.replay_weight >= 0.0, "replay_weight", "must be >= 0", self.replay_weight)
        if self.entropy_target is not None:
            _require(self.entropy_target >= 0, "entropy_target", "must be >= 0 bits or null", self.entropy_target)
        _require(self.entropy_coef_init > 0, "entropy_coef_init", "must be > 0", self.entropy_coef_init)
        _require(self.entropy_coef_lr > 0, "entropy_coef_lr", "must be > 0", self.entropy_coef_lr)
        _require(self.token_mask in RL_TOKEN_MASKS, "token_mask", f"must be one of {list(RL_TOKEN_MASKS)}",
                 self.token_mask)
        _require(0.0 < self.token_mask_quantile <= 1.0, "token_mask_quantile", "must be in (0, 1]",
                 self.token_mask_quantile)
        _require(self.entropy_tokens in RL_ENTROPY_TOKENS, "entropy_tokens",
                 f"must be one of {list(RL_ENTROPY_TOKENS)}", self.entropy_tokens)
        _require(self.cov_control in RL_COV_CONTROLS, "cov_control", f"must be one of {list(RL_COV_CONTROLS)}",
                 self.cov_control)
        _require(0.0 < self.clip_cov_ratio <= 1.0, "clip_cov_ratio", "must be in (0, 1]", self.clip_cov_ratio)
        _require(self.clip_cov_high > self.clip_cov_low, "clip_cov_high", f"must be > rl.clip_cov_low "
                 f"({self.clip_cov_low})", self.clip_cov_high)
        _require(0.0 < self.kl_cov_ratio <= 1.0, "kl_cov_ratio", "must be in (0, 1]", self.kl_cov_ratio)
        _require(self.kl_cov_coef >= 0.0, "kl_cov_coef", "must be >= 0", self.kl_cov_coef)


@dataclass(frozen=True)
class ResourcesConfig:
    """Bounds checked when params are loaded (`resources.check_memory`): no stage starts what it cannot finish."""

    memory_limit_gb: float | None = None  # null: $LANGUAGE_ENTROPY_MEMORY_LIMIT_GB, else half this machine's memory

    def __post_init__(self):
        if self.memory_limit_gb is not None:
            _require(self.memory_limit_gb > 0, "memory_limit_gb", "must be > 0 or null", self.memory_limit_gb)


@dataclass(frozen=True)
class PathsConfig:
    """Every file the pipeline reads or writes, relative to the repository root (dvc.yaml templates these)."""

    data: str = "data"
    model: str = "models/model.pt"
    finetuned: str = "models/finetuned.pt"  # the finetune stage's model: what evaluate and visualize measure
    resume: str = "checkpoints"  # outside the stage's outs, so DVC does not delete the resume state
    metrics: str = "metrics"
    plots: str = "plots"


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
    rl: RLConfig = field(default_factory=RLConfig)
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
        longest, op = max((longest_sequence(op, self.rl.digits.max), op) for op in self.data.operations)
        _require(longest <= self.model.max_seq_len, "rl.digits.max",
                 f"must fit the model's positions: {op} of {self.rl.digits.max}-digit operands needs {longest} "
                 f"tokens, above model.max_seq_len ({self.model.max_seq_len})", self.rl.digits.max)
        if not isinstance(self.loss.continuity_on, str):
            _require(self.loss.continuity_on <= self.model.n_layer, "loss.continuity_on",
                     f"must be a hidden-state index 0..model.n_layer ({self.model.n_layer})", self.loss.continuity_on)
        for layer in self.viz.layers:
            _require(layer <= self.model.n_layer, "viz.layers",
                     f"must be hidden-state indices 0..model.n_layer ({self.model.n_layer})", layer)

    @property
    def data_seed(self) -> int:
        """The seed the data splits are drawn with: `data.seed` when set, else the run's `seed` (so one seed
        gives the same splits in every configuration: a study's configurations share data per seed)."""
        return self.seed if self.data.seed is None else self.data.seed

    def flat(self) -> dict[str, object]:
        """Every value under its dotted params.yaml name, e.g. ``{"loss.entropy_weight": 0.2}``."""
        return flatten(dataclasses.asdict(self))


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
    """Read and validate params.yaml; every problem is a one-line `ParamsError` naming the file and key.

    A file that is empty, not UTF-8 or not YAML is refused like a wrong value: an empty file would
    otherwise run every stage silently on the code's defaults."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found in {Path.cwd()} (run the stages from the repository root, "
                          "where params.yaml and dvc.yaml are, or pass --params)") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a directory, not a params file") from None
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start})"
                          ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        sections = ", ".join(f.name for f in dataclasses.fields(Params))
        raise ParamsError(f"{path}: is empty (expected the sections {sections})")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (got {type(raw).__name__})")
    try:
        params = _build(Params, raw)
        check_memory(params)
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None
    return params

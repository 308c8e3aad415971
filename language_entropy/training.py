"""The training loop: deterministic, resumable to the bit, and the same on 1 or N processes.

Determinism comes from making every random choice a function of (seed, step): the data order
is a seeded permutation per epoch, indexed by step, and the torch RNG (dropout, abacus offsets)
is saved in every checkpoint. A resumed run therefore replays exactly the steps it lost.

Under DDP (torchrun) every rank takes rows rank, rank+world, ... of the same global batch, and
the losses normalise by the global token count, so N ranks with batch B/N equal one with B.

A step never waits for the device: the loss terms stay on it, one vector per step, and are read in
one transfer at the next log, validation or checkpoint (`Trainer.flush_log`), which also stops a
diverged run, naming the first step and term that went non-finite. On CUDA the whole step (forward,
losses, backward, clipping, AdamW) is one CUDA graph (`train.cuda_graphs`; batches padded to the
split's longest row so every step has one shape).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from language_entropy import tokenizer
from language_entropy.batches import batch_from_tokens, encode_batch
from language_entropy.entropy import to_bits
from language_entropy.errors import UserError
from language_entropy.losses import (
    AdaptiveEntropyCoefficient,
    LossTerms,
    compute_losses,
    entropy_coefficient,
    global_average,
    logged_terms,
)
from language_entropy.measure import continuity_stats, greedy_exact_match, teacher_forced_stats
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import LossConfig, ModelConfig, TrainConfig

CURVE_LOSS_COLUMNS = ("loss", "ce_loss", "continuity_loss", "entropy_loss", "entropy_coef")
EARLY_VALIDATION_STEPS = (0, 25, 50, 100, 200)  # dense at the start: does entropy sit at the digit-blind level?


def validation_due(step: int, config: TrainConfig) -> bool:
    """Whether `fit` validates after `step` training steps: at EARLY_VALIDATION_STEPS (step 0 is the
    untrained model), every `train.eval_every` steps, and at the last step."""
    return step in EARLY_VALIDATION_STEPS or step % config.eval_every == 0 or step == config.steps


class TrainingDiverged(UserError):
    """A loss term became NaN or infinite."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint has been written."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def configure_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms, biases and embeddings are not decayed."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 and id(param) not in embedding_weights else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` of the peak at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def seeded_generator(seed: int, stream: str, index: int) -> torch.Generator:
    """An independent, reproducible random stream per (seed, purpose, epoch or step)."""
    entropy = [seed, *stream.encode(), index]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1))


class BatchSampler:
    """Global batch of step s: rows s*B .. (s+1)*B of an endless chain of seeded epoch permutations; `stream`
    names the random stream, so two samplers of one seed (RL's prompts and its replay batches) draw apart."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, stream: str = "data order"):
        self.n_rows, self.batch_size, self.seed, self.stream = n_rows, batch_size, seed, stream
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = seeded_generator(self.seed, self.stream, epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n_rows, generator=generator)
        return self._order

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.batch_size
        parts, remaining = [], self.batch_size
        while remaining:
            epoch, offset = divmod(start, self.n_rows)
            take = min(remaining, self.n_rows - offset)
            parts.append(self._permutation(epoch)[offset: offset + take])
            start, remaining = start + take, remaining - take
        return torch.cat(parts)


@dataclass
class TrainResult:
    model: ArithmeticDecoder
    curve: pd.DataFrame


def fit_optimizer_to_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """AdamW as this device needs it, whichever device saved its state: on CUDA it keeps its learning
    rate and step counts in device tensors (`capturable`: a captured step reads the values the
    scheduler wrote since; an eager step on CUDA does the same, so the two take identical steps);
    elsewhere in Python floats and CPU tensors, torch's default."""
    on_device = device.type == "cuda"
    lr = float(optimizer.param_groups[0]["lr"])
    shared_lr = torch.tensor(lr, device=device) if on_device else lr  # one tensor for every group
    for group in optimizer.param_groups:
        group["capturable"] = on_device
        group["lr"] = shared_lr
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device if on_device else "cpu", torch.float32)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # pinned: the copy is queued behind the running step, not waited for
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def training_autocast(device: torch.device, graphed: bool):
    """bf16 autocast on CUDA, none elsewhere."""
    if device.type == "cuda":  # no weight cache when captured: a cached cast would outlive its context
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not graphed)
    return contextlib.nullcontext()


def validation_row(model: ArithmeticDecoder, val_texts: list[str], loss_config: LossConfig,
                   device: torch.device) -> dict[str, float]:
    """On the whole val split: loss, exact match, answer entropy per step (bits), and the continuity
    readings of the representation the continuity loss acts on (`measure.continuity_stats`: its
    mean l2 norm, l2 and cosine continuity), logged whatever continuity weight and metric train."""
    model.eval()
    stats = teacher_forced_stats(model, val_texts, device, batch_size=512)
    exact = greedy_exact_match(model, val_texts, batch_size=512)
    continuity = continuity_stats(model, val_texts, device, loss_config.continuity_on,
                                  loss_config.continuity_positions, batch_size=512)
    row = {"val_loss": stats.ce_nats, "val_exact_match": exact,
           **{f"val_{name}": value for name, value in continuity.items()}}
    row.update({f"entropy_step_{k}": bits for k, bits in enumerate(stats.entropy_bits_by_step)})
    return row


def curve_row(step: int, tokens_per_s: float, lr: float, logged: dict[str, float],
              validation: dict[str, float]) -> dict[str, float]:
    """One row of the training curve (its `wall_time_s` is added by the caller): the step, throughput, learning
    rate, the training loss terms at that step (NaN before the first step) and the validation readings."""
    return {"step": step, "tokens_per_s": tokens_per_s, "lr": lr,
            **{key: logged.get(key, math.nan) for key in CURVE_LOSS_COLUMNS}, **validation}


def curve_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    """The curve rows as a table, the columns every run has first."""
    curve = pd.DataFrame(rows)
    first = ["step", "wall_time_s", "tokens_per_s", "lr", *CURVE_LOSS_COLUMNS, "val_loss", "val_exact_match"]
    return curve if curve.empty else curve[first + [c for c in curve.columns if c not in first]]


def raise_if_diverged(rows: dict[int, dict[str, float]], run: str = "") -> None:
    """TrainingDiverged naming the first step, and its first non-finite term (the parts before the total), of
    `rows` ({step: `logged_terms`}) that went NaN or infinite; `run` names the run when several train at once."""
    for step, row in rows.items():
        for name in ("ce_loss", "entropy_loss", "continuity_loss", "loss"):
            if not math.isfinite(row[name]):
                raise TrainingDiverged(f"{run}{name} became {row[name]} at step {step}")


class Trainer:
    """Owns the model, optimisers and state of one training run; `fit` runs it to `config.steps`."""

    def __init__(self, model_config: ModelConfig, loss_config: LossConfig, config: TrainConfig, seed: int,
                 train_texts: list[str], val_texts: list[str], device: torch.device,
                 dist_info: Distributed = Distributed()):
        if config.batch_size % dist_info.world_size:
            raise UserError(f"train.batch_size ({config.batch_size}) must be divisible by the number of "
                            f"processes ({dist_info.world_size})")
        torch.manual_seed(seed)
        self.config, self.loss_config, self.seed = config, loss_config, seed
        self.device, self.dist = device, dist_info
        # one graph per run: one process (DDP's hooks and torch.compile's own graphs are left eager)
        self.graphed = (config.cuda_graphs and device.type == "cuda" and dist_info.world_size == 1
                        and not config.compile)
        self.model = ArithmeticDecoder(model_config).to(device)
        self.model.graphed_generation = config.cuda_graphs  # validation's generation (CUDA only)
        self.optimizer = configure_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, config))
        fit_optimizer_to_device(self.optimizer, device)
        self.adaptive = None
        if loss_config.entropy_target is not None:
            self.adaptive = AdaptiveEntropyCoefficient(loss_config).to(device)
            self.adaptive_optimizer = self.adaptive.configure_optimizer()
        self.train_tokens = encode_batch(train_texts)["tokens"]  # (N, T) right-padded, kept on CPU
        self.train_lengths = (self.train_tokens != tokenizer.PAD_ID).sum(dim=1)
        self.val_texts = val_texts
        self.sampler = BatchSampler(len(train_texts), config.batch_size, seed)
        self.step = 0
        self.elapsed_s = 0.0
        self.curve: list[dict[str, float]] = []
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, LossTerms.as_vector()) not read yet
        self._graph: CapturedStep | None = None
        self.wrapped = self.model
        if dist_info.world_size > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=device_ids)
        if config.compile:
            self.wrapped = torch.compile(self.wrapped)

    # --- state for checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        state = {"step": self.step, "elapsed_s": self.elapsed_s, "curve": self.curve,
                 "model_state": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.adaptive is not None:
            state["adaptive"] = self.adaptive.state_dict()
            state["adaptive_optimizer"] = self.adaptive_optimizer.state_dict()
        return state

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.adaptive is not None:
            self.adaptive.load_state_dict(state["adaptive"])
            self.adaptive_optimizer.load_state_dict(state["adaptive_optimizer"])
        self.step, self.elapsed_s, self.curve = state["step"], state["elapsed_s"], list(state["curve"])
        fit_optimizer_to_device(self.optimizer, self.device)
        self._graph = None  # the optimizer's state tensors are new: capture again

    def load_base(self, payload: dict) -> str:
        """Continue from another checkpoint: weights always, optimizer state when it fits; says which."""
        self.model.load_state_dict(payload["model_state"])
        self._graph = None
        if "optimizer" not in payload:
            return "weights loaded; optimizer starts fresh (the base checkpoint holds no optimizer state)"
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as error:
            return f"weights loaded; optimizer starts fresh (its saved state does not fit: {error})"
        fit_optimizer_to_device(self.optimizer, self.device)
        return "weights and optimizer state loaded"

    # --- the loop --------------------------------------------------------------------------------------
    def local_batch(self, step: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of `rows`, the global batch of `step`: tokens (B, W) and abacus offsets (B,),
        on the CPU.

        The offsets are drawn for the whole global batch from a generator seeded by (seed, step), so
        each row gets the same offset on 1 or N ranks, and a resumed run draws the same ones. W is the
        batch's longest row, or the split's when the step is captured (one shape for every step; the
        extra padding changes no loss term: every mask leaves padding out).
        """
        generator = seeded_generator(self.seed, "abacus offsets", step)
        offsets = torch.randint(0, self.model.config.abacus_max_offset + 1, (self.config.batch_size,),
                                generator=generator)
        mine = slice(self.dist.rank, None, self.dist.world_size)
        rows = rows[mine]
        width = self.train_tokens.shape[1] if self.graphed else int(self.train_lengths[rows].max())
        return self.train_tokens[rows, :width], offsets[mine]

    def update(self, tokens: torch.Tensor, offsets: torch.Tensor) -> LossTerms:
        """One optimisation step on a batch already on the device: forward, losses, backward, clipping,
        AdamW. No host synchronisation, so a CUDA graph can capture it (`CapturedStep`)."""
        batch = batch_from_tokens(tokens)
        coefficient = entropy_coefficient(self.loss_config, self.adaptive)
        needs_hidden = self.loss_config.continuity_weight > 0
        with training_autocast(self.device, self.graphed):
            output = self.wrapped(tokens[:, :-1], return_hidden=needs_hidden, abacus_offset=offsets)
            logits, hidden = output if needs_hidden else (output, None)
            terms = compute_losses(logits.float(), hidden, tokens[:, 1:], batch["answer_mask"], batch["valid_mask"],
                                   self.loss_config, coefficient)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return terms

    def train_step(self) -> float:
        """Take the next step; returns the number of tokens it predicted (the global batch's, all ranks).
        Its loss terms wait on the device until `flush_log`."""
        self.wrapped.train()
        rows = self.sampler.indices(self.step)
        tokens, offsets = self.local_batch(self.step, rows)
        if self.graphed:
            if self._graph is None:
                self._graph = CapturedStep(self, tokens.to(self.device), offsets.to(self.device))
            terms, vector = self._graph.replay(tokens, offsets)
        else:
            terms = self.update(to_device(tokens, self.device), to_device(offsets, self.device))
            vector = terms.as_vector()
        self.scheduler.step()
        if self.adaptive is not None:  # the global mean entropy, still on the device
            self.adaptive_optimizer.zero_grad(set_to_none=True)
            self.adaptive.loss(to_bits(global_average(terms.entropy))).backward()
            self.adaptive_optimizer.step()
        predicted = float((self.train_lengths[rows] - 1).sum())
        self.step += 1
        self._pending.append((self.step, vector))
        return predicted

    def flush_log(self) -> dict[int, dict[str, float]]:
        """Read every step's loss terms since the last flush in one transfer: {step: `logged_terms`}.

        Raises TrainingDiverged naming the first step, and its first non-finite term (the parts before
        the total), when any went NaN or infinite. Under DDP every rank must call it at the same steps.
        """
        if not self._pending:
            return {}
        steps = [step for step, _ in self._pending]
        values = global_average(torch.stack([vector for _, vector in self._pending])).tolist()  # one host sync
        self._pending = []
        rows = {step: logged_terms(row) for step, row in zip(steps, values, strict=True)}
        raise_if_diverged(rows)
        return rows

    def validate(self) -> dict[str, float]:
        """`validation_row` of this run's model on its val split."""
        return validation_row(self.model, self.val_texts, self.loss_config, self.device)

    def current_lr(self) -> float:
        """The learning rate of the next step, from the schedule on the host (the optimizer's may be a
        device tensor)."""
        return self.config.lr * lr_factor(self.step, self.config)

    def _agreed_stop(self, signum: int | None) -> int | None:
        """Under DDP a signal may reach the ranks at different steps: all stop when any has one."""
        if self.dist.world_size == 1:
            return signum
        flag = torch.tensor([signum or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def fit(self, on_eval: Callable[[dict[str, float]], None], on_checkpoint: Callable[[dict], None],
            stop_requested: Callable[[], int | None],
            on_log: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
        """Train from the current step to `config.steps`; validate when `validation_due` (step 0 included,
        before the first update), checkpoint every `checkpoint_every` steps, and hand the training loss
        terms and learning rate to `on_log` every `log_every` steps (cheap: no validation)."""
        config = self.config
        bar = tqdm(total=config.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.dist.is_main and sys.stderr.isatty()))
        window_tokens, window_start = 0.0, time.perf_counter()
        clock = window_start  # wall time (training and validation) is added to elapsed_s at each eval

        def evaluate(logged: dict[str, float]) -> None:
            nonlocal window_tokens, window_start, clock
            tokens_per_s = window_tokens / (time.perf_counter() - window_start) if window_tokens else math.nan
            row = curve_row(self.step, tokens_per_s, self.current_lr(), logged, self.validate())
            self.elapsed_s += time.perf_counter() - clock
            clock = time.perf_counter()
            row["wall_time_s"] = self.elapsed_s
            self.curve.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_em=f"{row['val_exact_match']:.3f}")
            on_eval(row)
            window_tokens, window_start = 0.0, time.perf_counter()

        # Validation on rank 0 alone: the other ranks wait for it in the next step's gradient all-reduce.
        # Step 0 (the untrained model, no loss yet: NaN loss columns) only when no row has been logged:
        # a run resumed at step 0 after it was logged does not log it twice.
        if self.step == 0 and not self.curve and validation_due(0, config) and self.dist.is_main:
            evaluate({})
        while self.step < config.steps:
            window_tokens += self.train_step()
            bar.update(1)
            log_due = on_log is not None and self.step % config.log_every == 0
            eval_due = validation_due(self.step, config)
            signum = self._agreed_stop(stop_requested())
            checkpoint_due = self.step % config.checkpoint_every == 0 or signum is not None
            if not (log_due or eval_due or checkpoint_due):
                continue
            logged = self.flush_log()[self.step]  # the host waits here only: every log_every steps at most
            if log_due and self.dist.is_main:
                on_log(self.step, {**{f"train_{key}": logged[key] for key in CURVE_LOSS_COLUMNS},
                                   "lr": self.current_lr()})
            if eval_due and self.dist.is_main:
                evaluate(logged)
            if checkpoint_due and self.dist.is_main:
                on_checkpoint(self.state())
            if signum is not None:
                bar.close()
                raise TrainingInterrupted(signum)
        bar.close()
        return TrainResult(self.model, curve_frame(self.curve))  # empty on ranks other than 0


class CapturedStep:
    """`Trainer.update` captured in one CUDA graph: a training step is one launch instead of hundreds.

    The model is small, so on a GPU an eager step waits on the host launching its kernels. Capture
    needs static shapes (the trainer pads every batch to one width) and no host synchronisation in
    the step. Before capturing, three warm-up steps on a side stream let autograd, the optimizer state
    and cuBLAS allocate; they are real updates, so the weights, optimizer state and RNG are rewound
    to what they were before them. Every replay is therefore a step taken from the same state as the
    eager loop would take it, and a resumed run, which captures afresh, replays the same graph from
    the restored state: bit-exact resume. The scheduler and the adaptive entropy coefficient update
    outside the graph, in place, where the replays read them. `trainer` may be any object with a `model`,
    an `optimizer` and an `update(tokens, offsets)` whose result has `as_vector()`: `batched.BatchedTrainer`
    captures its K runs' step through it too.
    """

    WARMUP_STEPS = 3

    def __init__(self, trainer: Trainer, tokens: torch.Tensor, offsets: torch.Tensor):
        self.tokens, self.offsets = tokens, offsets  # the graph's input buffers
        model, optimizer = trainer.model, trainer.optimizer
        params = [p.detach().clone() for p in model.parameters()]
        states = {p: {k: v.clone() for k, v in state.items()} for p, state in optimizer.state.items()}
        rng = torch.cuda.get_rng_state(tokens.device)
        side = torch.cuda.Stream(tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                trainer.update(self.tokens, self.offsets)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        with torch.no_grad():  # rewind: the warm-up steps never happened
            for param, saved in zip(model.parameters(), params, strict=True):
                param.copy_(saved)
            for param, state in optimizer.state.items():
                for key, value in state.items():
                    if param in states:
                        value.copy_(states[param][key])
                    else:  # created by the warm-up: AdamW starts its moments and step count at zero
                        value.zero_()
        torch.cuda.set_rng_state(rng, tokens.device)
        optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.terms = trainer.update(self.tokens, self.offsets)
            self.vector = self.terms.as_vector()

    def replay(self, tokens: torch.Tensor, offsets: torch.Tensor) -> tuple[LossTerms, torch.Tensor]:
        """Take one step on `tokens` (B, W) and `offsets` (B,) from the CPU: the terms (the graph's
        buffers, overwritten by the next replay) and a copy of their vector."""
        self.tokens.copy_(tokens.pin_memory(), non_blocking=True)
        self.offsets.copy_(offsets.pin_memory(), non_blocking=True)
        self.graph.replay()
        return self.terms, self.vector.clone()

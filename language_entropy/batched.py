"""K trainings that differ only in seed (and the entropy weight) trained as one batched model in one process.

One default training leaves a GPU nearly idle (a captured step of the small model is a few hundred tiny
kernels), so K of them as separate processes scale poorly. Here the K runs' decoders become one module whose
parameters carry a leading run dimension (`torch.func.stack_module_state`), and a step runs decoder k on
batch k for every k at once (`torch.func.vmap` of `functional_call`): the same kernels, K times larger. On
CUDA the whole step is one CUDA graph (`training.CapturedStep`). On a CPU the step is already compute-bound:
batching gains nothing there (docs/batched-seeds.md).

Each run stays the training its own `Trainer` would do. The caller builds one `Trainer` per run exactly as a
separate training (its seed gives its initial weights, data order and abacus offsets; its data its batches),
and `BatchedTrainer` takes every step's batch and offsets from each of them:
- AdamW is elementwise, so one AdamW over the stacked parameters is K AdamWs; the gradient is clipped per
  run, by that run's own norm; the learning rate schedule is the runs' common one;
- each run is validated on its own validation split on the same schedule, with its own weights;
- after `fit` every `Trainer` holds its run's weights, AdamW state, learning rate, step and curve, as after its
  own `fit`, so the caller writes each run as a separate training writes it.
The K batches are padded to one width, which changes no loss term (every mask leaves padding out); batched
kernels sum in another order, so the runs equal separate trainings to float tolerance, not bit for bit.

Refused, each with one line naming the param: runs that differ in anything but seed, data and
`loss.entropy_weight`; dropout (each run's masks would not be its own training's); the learned entropy
coefficient (`loss.entropy_target`); `train.compile`; DDP. Batched training has no checkpoints: interrupted,
it starts over.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from language_entropy import tokenizer
from language_entropy.batches import batch_from_tokens
from language_entropy.errors import UserError
from language_entropy.losses import VECTOR_TERMS, compute_losses, logged_terms
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import LossConfig
from language_entropy.training import (
    CURVE_LOSS_COLUMNS,
    CapturedStep,
    Trainer,
    TrainResult,
    curve_frame,
    curve_row,
    fit_optimizer_to_device,
    lr_factor,
    raise_if_diverged,
    to_device,
    training_autocast,
    validation_due,
    validation_row,
)

# torch has no vmap rule for the CPU flash-attention kernel and loops over the runs instead (same results);
# on a CPU batching is no faster anyway, so the warning says nothing a user can act on
warnings.filterwarnings("ignore", message=r"There is a performance drop .*scaled_dot_product_flash_attention_for_cpu")

ENTROPY_TERM = VECTOR_TERMS.index("entropy")


class StackedDecoder(nn.Module):
    """K `ArithmeticDecoder`s of one config as one module: each of their parameters stacked into one (K, ...)
    parameter, under the decoder's own name (`names`; a tied table once, as `named_parameters` gives it)."""

    def __init__(self, models: list[ArithmeticDecoder]):
        super().__init__()
        stacked, _ = stack_module_state(models)  # {name: (K, ...)}; the buffers are the same in every run
        self.names = list(stacked)
        self.stacked = nn.ParameterList(stacked.values())
        self.runs = len(models)
        # the architecture functional_call runs (its buffers too); in a list, so that it is no submodule and
        # its own parameters stay out of parameters() and the optimizer
        self._decoder = [copy.deepcopy(models[0]).train()]

    def run_parameters(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.stacked, strict=True))

    def forward(self, idx: torch.Tensor, abacus_offset: torch.Tensor, return_hidden: bool = False):
        """Decoder k on idx[k] (K, B, T) with abacus offsets abacus_offset[k] (K, B): logits (K, B, T, V), and with
        `return_hidden` also the hidden states, L+1 tensors (K, B, T, C) (see `ArithmeticDecoder.forward`)."""
        decoder = self._decoder[0]

        def one_run(parameters, run_idx, run_offset):
            return functional_call(decoder, parameters, (run_idx,),
                                   {"return_hidden": return_hidden, "abacus_offset": run_offset})

        return vmap(one_run)(self.run_parameters(), idx, abacus_offset)

    @torch.no_grad()
    def write_run(self, run: int, model: ArithmeticDecoder) -> None:
        """Copy run `run`'s weights into `model` (an `ArithmeticDecoder` of the same config)."""
        stacked = self.run_parameters()
        for name, param in model.named_parameters():
            param.copy_(stacked[name][run])


def run_losses(logits: torch.Tensor, hidden: list[torch.Tensor] | None, tokens: torch.Tensor, entropy_coef,
               config: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One run's losses, as `Trainer.update` computes them: the total to minimise and `LossTerms.as_vector()`.
    logits (B, T-1, V), hidden (L+1 tensors (B, T-1, C)) or None, tokens (B, T)."""
    batch = batch_from_tokens(tokens)
    terms = compute_losses(logits.float(), hidden, tokens[:, 1:], batch["answer_mask"], batch["valid_mask"], config,
                           entropy_coef)
    return terms.total, terms.as_vector()


def clip_grad_norm_per_run(parameters: list[torch.Tensor], max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_` for each run of stacked parameters (K, ...): run k's gradients scaled by
    min(1, max_norm / (norm_k + 1e-6)), norm_k the 2-norm of all of run k's gradients together."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (P, K)
    scale = (max_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)  # (K,)
    for grad in grads:
        grad.mul_(scale.view(-1, *[1] * (grad.dim() - 1)))


@dataclass
class StackedTerms:
    """What `BatchedTrainer.update` returns: every run's `LossTerms.as_vector()`, (K, len(VECTOR_TERMS))."""

    vectors: torch.Tensor

    def as_vector(self) -> torch.Tensor:
        return self.vectors.detach()


def _differences(configs: list, section: str, allowed: tuple[str, ...] = ()) -> None:
    """UserError naming the first `section.key` (not in `allowed`) whose value differs between the runs."""
    first = dataclasses.asdict(configs[0])
    for k, config in enumerate(configs[1:], start=1):
        for key, value in dataclasses.asdict(config).items():
            if key not in allowed and value != first[key]:
                raise UserError(f"{section}.{key} differs between batched runs ({first[key]!r} in run 0, {value!r} in "
                                f"run {k}): they may differ only in seed, data and loss.entropy_weight")


def check_batchable(trainers: list[Trainer]) -> None:
    """Refuse, in one line naming the param, runs that one batched model cannot train as their own trainings."""
    if not trainers:
        raise UserError("batched training needs at least one run")
    first = trainers[0]
    _differences([t.model.config for t in trainers], "model")
    _differences([t.config for t in trainers], "train")
    _differences([t.loss_config for t in trainers], "loss", allowed=("entropy_weight",))
    for k, trainer in enumerate(trainers):
        if trainer.step or trainer.curve:
            raise UserError(f"run {k} is at step {trainer.step}: batched training starts every run at step 0")
        if trainer.device != first.device:
            raise UserError(f"run {k} is on {trainer.device}, run 0 on {first.device}: batched runs share one device")
        if trainer.dist.world_size > 1:
            raise UserError("train.nproc_per_node must be 1 for batched training (one process trains every run)")
    if first.model.config.dropout > 0:
        raise UserError(f"model.dropout must be 0 for batched training (got {first.model.config.dropout}): each "
                        "run's dropout masks would not be those of its own training")
    if first.loss_config.entropy_target is not None:
        raise UserError("loss.entropy_target must be null for batched training: the learned entropy coefficient is "
                        "not batched (set loss.entropy_weight, or train these runs one by one)")
    if first.config.compile:
        raise UserError("train.compile must be false for batched training (its step is vmapped; on CUDA captured)")


def stacked_adamw(model: StackedDecoder, run: Trainer) -> torch.optim.Optimizer:
    """The runs' optimizer over the stacked parameters: `run`'s AdamW groups (which parameters decay) and
    hyperparameters, each stacked parameter in the group its run's parameter is in."""
    names = {id(param): name for name, param in run.model.named_parameters()}
    stacked = model.run_parameters()
    groups = [{**{key: value for key, value in group.items() if key != "params"},
               "params": [stacked[names[id(param)]] for param in group["params"]]}
              for group in run.optimizer.param_groups]
    return type(run.optimizer)(groups)


class BatchedTrainer:
    """Trains the runs of `trainers` (fresh `Trainer`s that differ only in seed, data and loss.entropy_weight) as
    one `StackedDecoder`; `fit` runs them to `train.steps` and leaves each `Trainer` as its own `fit` would."""

    def __init__(self, trainers: list[Trainer]):
        check_batchable(trainers)
        first = trainers[0]
        self.trainers, self.config, self.device, self.graphed = trainers, first.config, first.device, first.graphed
        self.loss_config = first.loss_config  # the same in every run but entropy_weight, which is passed apart
        self.model = StackedDecoder([trainer.model for trainer in trainers])
        self.optimizer = stacked_adamw(self.model, first)
        config = self.config
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, config))
        fit_optimizer_to_device(self.optimizer, self.device)
        weights = [trainer.loss_config.entropy_weight for trainer in trainers]
        # one weight: passed as the float a Trainer passes. Several: every run computes its entropy (a weight of 0
        # adds 0 to its loss and gradient), and a run whose weight is 0 logs that term as 0, as it would alone
        self.entropy_coef = weights[0] if len(set(weights)) == 1 else torch.tensor(weights, device=self.device)
        self.entropy_off = [weight == 0 for weight in weights]
        self.validator = copy.deepcopy(first.model)  # each run's weights in turn, for its validation
        self.width = max(trainer.train_tokens.shape[1] for trainer in trainers)  # a captured step's one width
        self.step, self.elapsed_s = 0, 0.0
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, (K, len(VECTOR_TERMS))) not read yet
        self._graph: CapturedStep | None = None

    @property
    def runs(self) -> int:
        return len(self.trainers)

    def update(self, tokens: torch.Tensor, offsets: torch.Tensor) -> StackedTerms:
        """One optimisation step of every run on batches already on the device, tokens (K, B, W) and offsets
        (K, B): `Trainer.update` of each, vmapped. No host synchronisation, so a CUDA graph can capture it."""
        needs_hidden = self.loss_config.continuity_weight > 0
        coefficient_dim = 0 if isinstance(self.entropy_coef, torch.Tensor) else None  # one per run, or one float
        losses = vmap(partial(run_losses, config=self.loss_config),
                      in_dims=(0, 0 if needs_hidden else None, 0, coefficient_dim))
        with training_autocast(self.device, self.graphed):
            output = self.model(tokens[:, :, :-1], offsets, return_hidden=needs_hidden)
            logits, hidden = output if needs_hidden else (output, None)
            totals, vectors = losses(logits, hidden, tokens, self.entropy_coef)  # (K,), (K, len(VECTOR_TERMS))
        self.optimizer.zero_grad(set_to_none=True)
        totals.sum().backward()  # the runs share no parameter: each run's gradient is that of its own loss
        clip_grad_norm_per_run(list(self.model.parameters()), self.config.grad_clip)
        self.optimizer.step()
        return StackedTerms(vectors)

    def train_step(self) -> list[float]:
        """Take every run's next step; returns each run's number of predicted tokens. The loss terms wait on
        the device until `flush_log`."""
        tokens, offsets, predicted = [], [], []
        for trainer in self.trainers:
            rows = trainer.sampler.indices(self.step)
            run_tokens, run_offsets = trainer.local_batch(self.step, rows)  # (B, W_k), (B,): as its own step's
            tokens.append(run_tokens)
            offsets.append(run_offsets)
            predicted.append(float((trainer.train_lengths[rows] - 1).sum()))
        width = self.width if self.graphed else max(run_tokens.shape[1] for run_tokens in tokens)
        tokens = torch.stack([F.pad(t, (0, width - t.shape[1]), value=tokenizer.PAD_ID) for t in tokens])  # (K, B, W)
        offsets = torch.stack(offsets)  # (K, B)
        if self.graphed:
            if self._graph is None:
                self._graph = CapturedStep(self, tokens.to(self.device), offsets.to(self.device))
            _, vectors = self._graph.replay(tokens, offsets)
        else:
            vectors = self.update(to_device(tokens, self.device), to_device(offsets, self.device)).as_vector()
        self.scheduler.step()
        self.step += 1
        self._pending.append((self.step, vectors))
        return predicted

    def flush_log(self) -> list[dict[int, dict[str, float]]]:
        """Every run's loss terms since the last flush, read in one transfer: per run {step: `logged_terms`}.
        Raises TrainingDiverged naming the run, step and term when any went NaN or infinite."""
        steps = [step for step, _ in self._pending]
        values = torch.stack([vectors for _, vectors in self._pending]).tolist() if steps else []  # (S, K, terms)
        self._pending = []
        logs = []
        for k, trainer in enumerate(self.trainers):
            rows = {}
            for step, by_run in zip(steps, values, strict=True):
                vector = by_run[k]
                if self.entropy_off[k]:
                    vector[ENTROPY_TERM] = 0.0
                rows[step] = logged_terms(vector)
            raise_if_diverged(rows, run=f"batched run {k} (seed {trainer.seed}): ")
            logs.append(rows)
        return logs

    def current_lr(self) -> float:
        return self.config.lr * lr_factor(self.step, self.config)

    def fit(self, on_eval: Callable[[int, dict[str, float]], None],
            on_log: Callable[[int, int, dict[str, float]], None] | None = None) -> list[TrainResult]:
        """Train every run to `train.steps`, validating each when `validation_due` (step 0 included) and handing
        `on_eval(run, curve row)` each row, and `on_log(run, step, values)` the training loss terms and learning
        rate every `log_every` steps, as `Trainer.fit` does. Wall times are the batch's: `wall_time_s` is the
        same in every run, and a run's `tokens_per_s` counts its own tokens over the batch's time."""
        config = self.config
        window_tokens, window_start = [0.0] * self.runs, time.perf_counter()
        clock = window_start

        def evaluate(logged: list[dict[str, float]]) -> None:
            nonlocal window_tokens, window_start, clock
            window_s = time.perf_counter() - window_start
            rows = []
            for k, trainer in enumerate(self.trainers):
                self.model.write_run(k, self.validator)
                validation = validation_row(self.validator, trainer.val_texts, trainer.loss_config, self.device)
                tokens_per_s = window_tokens[k] / window_s if window_tokens[k] else math.nan
                rows.append(curve_row(self.step, tokens_per_s, self.current_lr(), logged[k], validation))
            self.elapsed_s += time.perf_counter() - clock
            clock = time.perf_counter()
            for k, (trainer, row) in enumerate(zip(self.trainers, rows, strict=True)):
                row["wall_time_s"] = self.elapsed_s
                trainer.curve.append(row)
                on_eval(k, row)
            window_tokens, window_start = [0.0] * self.runs, time.perf_counter()

        if validation_due(0, config):
            evaluate([{}] * self.runs)
        while self.step < config.steps:
            for k, tokens in enumerate(self.train_step()):
                window_tokens[k] += tokens
            log_due = on_log is not None and self.step % config.log_every == 0
            eval_due = validation_due(self.step, config)
            if not (log_due or eval_due):
                continue
            logged = [rows[self.step] for rows in self.flush_log()]  # the host waits here only
            if log_due:
                for k in range(self.runs):
                    on_log(k, self.step, {**{f"train_{key}": logged[k][key] for key in CURVE_LOSS_COLUMNS},
                                          "lr": self.current_lr()})
            if eval_due:
                evaluate(logged)
        self._hand_back()
        return [TrainResult(trainer.model, curve_frame(trainer.curve)) for trainer in self.trainers]

    @torch.no_grad()
    def _hand_back(self) -> None:
        """Leave each `Trainer` as after its own `fit`: its run's weights, AdamW state and learning rate, its
        scheduler, step and wall time (its curve is already its own)."""
        stacked = self.model.run_parameters()
        lr = float(self.optimizer.param_groups[0]["lr"])
        for k, trainer in enumerate(self.trainers):
            self.model.write_run(k, trainer.model)
            for name, param in trainer.model.named_parameters():
                state = self.optimizer.state[stacked[name]]  # per element (K, ...) or shared (the step count)
                trainer.optimizer.state[param] = {key: (value[k] if value.shape == stacked[name].shape else value)
                                                  .clone() for key, value in state.items()}
            trainer.scheduler.load_state_dict(self.scheduler.state_dict())
            for group in trainer.optimizer.param_groups:  # on CUDA one device tensor shared by the groups
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr
            trainer.step, trainer.elapsed_s = self.step, self.elapsed_s

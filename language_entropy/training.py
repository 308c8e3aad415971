"""The training loop: deterministic, resumable to the bit, and the same on 1 or N processes.

Determinism comes from making every random choice a function of (seed, step): the data order
is a seeded permutation per epoch, indexed by step, and the torch RNG (dropout, abacus offsets)
is saved in every checkpoint. A resumed run therefore replays exactly the steps it lost.

Under DDP (torchrun) every rank takes rows rank, rank+world, ... of the same global batch, and
the losses normalise by the global token count, so N ranks with batch B/N equal one with B.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from language_entropy import tokenizer, tracking
from language_entropy.checkpoint import load_checkpoint, model_payload, save_checkpoint
from language_entropy.cli import UserError
from language_entropy.data import SPLITS, batch_from_tokens, encode_batch, read_split, split_path
from language_entropy.devices import select_device
from language_entropy.evaluation import greedy_exact_match, teacher_forced_stats
from language_entropy.losses import AdaptiveEntropyCoefficient, compute_losses, entropy_coefficient
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import LossConfig, ModelConfig, Params, TrainConfig

CURVE_LOSS_COLUMNS = ("loss", "ce_loss", "continuity_loss", "entropy_loss", "entropy_coef")


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


def init_distributed(device_name: str) -> Distributed:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1), else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    backend = "nccl" if select_device(device_name).type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


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
    """Global batch of step s: rows s*B .. (s+1)*B of an endless chain of seeded epoch permutations."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = seeded_generator(self.seed, "data order", epoch)
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
        self.model = ArithmeticDecoder(model_config).to(device)
        self.optimizer = configure_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, config))
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

    def load_base(self, payload: dict) -> str:
        """Continue from another checkpoint: weights always, optimizer state when it fits; says which."""
        self.model.load_state_dict(payload["model_state"])
        if "optimizer" not in payload:
            return "weights loaded; optimizer starts fresh (the base checkpoint holds no optimizer state)"
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as error:
            return f"weights loaded; optimizer starts fresh (its saved state does not fit: {error})"
        return "weights and optimizer state loaded"

    # --- the loop --------------------------------------------------------------------------------------
    def _local_batch(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This rank's rows of the global batch of `step`, and their abacus offsets.

        The offsets are drawn for the whole global batch from a generator seeded by (seed, step), so
        each row gets the same offset on 1 or N ranks, and a resumed run draws the same ones.
        """
        generator = seeded_generator(self.seed, "abacus offsets", step)
        offsets = torch.randint(0, self.model.config.abacus_max_offset + 1, (self.config.batch_size,),
                                generator=generator)
        mine = slice(self.dist.rank, None, self.dist.world_size)
        rows = self.sampler.indices(step)[mine]
        width = int(self.train_lengths[rows].max())
        return batch_from_tokens(self.train_tokens[rows, :width].to(self.device, non_blocking=True)), offsets[mine]

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, float]:
        self.wrapped.train()
        batch, offsets = self._local_batch(self.step)
        tokens = batch["tokens"]
        coefficient = entropy_coefficient(self.loss_config, self.adaptive)
        needs_hidden = self.loss_config.continuity_weight > 0
        with self._autocast():
            output = self.wrapped(tokens[:, :-1], return_hidden=needs_hidden, abacus_offset=offsets)
            logits, hidden = output if needs_hidden else (output, None)
            terms = compute_losses(logits.float(), hidden, tokens[:, 1:], batch["answer_mask"], batch["valid_mask"],
                                   self.loss_config, coefficient)
        logged = terms.logged()
        for name in ("ce_loss", "entropy_loss", "continuity_loss", "loss"):  # the failing term before the total
            if not math.isfinite(logged[name]):
                raise TrainingDiverged(f"{name} became {logged[name]} at step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.adaptive is not None:
            self.adaptive_optimizer.zero_grad(set_to_none=True)
            self.adaptive.loss(logged["entropy_bits"]).backward()
            self.adaptive_optimizer.step()
        self.step += 1
        return {**logged, "tokens": float(batch["valid_mask"].sum()) * self.dist.world_size}

    def validate(self) -> dict[str, float]:
        """Validation loss, exact match and answer entropy per step (bits), on the whole val split."""
        self.model.eval()
        stats = teacher_forced_stats(self.model, self.val_texts, self.device, batch_size=512)
        exact = greedy_exact_match(self.model, self.val_texts, batch_size=512)
        row = {"val_loss": stats.ce_nats, "val_exact_match": exact}
        row.update({f"entropy_step_{k}": bits for k, bits in enumerate(stats.entropy_bits_by_step)})
        return row

    def _agreed_stop(self, signum: int | None) -> int | None:
        """Under DDP a signal may reach the ranks at different steps: all stop when any has one."""
        if self.dist.world_size == 1:
            return signum
        flag = torch.tensor([signum or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def fit(self, on_eval: Callable[[dict[str, float]], None], on_checkpoint: Callable[[dict], None],
            stop_requested: Callable[[], int | None]) -> TrainResult:
        """Train from the current step to `config.steps`; evaluate and checkpoint at their intervals."""
        config = self.config
        bar = tqdm(total=config.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (self.dist.is_main and sys.stderr.isatty()))
        window_tokens, window_start = 0.0, time.perf_counter()
        clock = window_start  # wall time (training and validation) is added to elapsed_s at each eval
        while self.step < config.steps:
            logged = self.train_step()
            window_tokens += logged.pop("tokens")
            bar.update(1)
            # Validation on rank 0 alone: the other ranks wait for it in the next step's gradient all-reduce.
            if (self.step % config.eval_every == 0 or self.step == config.steps) and self.dist.is_main:
                tokens_per_s = window_tokens / (time.perf_counter() - window_start)
                row = {"step": self.step, "tokens_per_s": tokens_per_s, "lr": self.scheduler.get_last_lr()[0],
                       **{key: logged[key] for key in CURVE_LOSS_COLUMNS}, **self.validate()}
                self.elapsed_s += time.perf_counter() - clock
                clock = time.perf_counter()
                row["wall_time_s"] = self.elapsed_s
                self.curve.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", val_em=f"{row['val_exact_match']:.3f}")
                on_eval(row)
                window_tokens, window_start = 0.0, time.perf_counter()
            signum = self._agreed_stop(stop_requested())
            if (self.step % config.checkpoint_every == 0 or signum is not None) and self.dist.is_main:
                on_checkpoint(self.state())
            if signum is not None:
                bar.close()
                raise TrainingInterrupted(signum)
        bar.close()
        curve = pd.DataFrame(self.curve)  # empty on ranks other than 0
        first = ["step", "wall_time_s", "tokens_per_s", "lr", *CURVE_LOSS_COLUMNS, "val_loss", "val_exact_match"]
        if not curve.empty:
            curve = curve[first + [c for c in curve.columns if c not in first]]
        return TrainResult(self.model, curve)


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, so a checkpoint gets written."""

    def __init__(self):
        self.signum: int | None = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __call__(self) -> int | None:
        return self.signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def load_resume_state(path: Path, fingerprint: str) -> tuple[dict | None, str]:
    """The resume checkpoint if it belongs to this exact run (params, data, code), with the reason either way."""
    if not path.exists():
        return None, "no resume checkpoint; starting fresh"
    try:
        state = load_checkpoint(path)
    except UserError as error:
        return None, f"resume checkpoint unusable ({error}); starting fresh"
    if state.get("fingerprint") != fingerprint:
        return None, f"{path} was written with other params, data or code; starting fresh"
    return state, f"resuming from {path} at step {state['step']}"


def model_config_differences(saved: dict, config: ModelConfig) -> list[str]:
    """Keys where a checkpoint's model config differs from params, as `key: saved -> params`."""
    current = dataclasses.asdict(config)
    return [f"model.{key}: {saved.get(key)!r} -> {value!r}"
            for key, value in current.items() if saved.get(key) != value]


def save_resume_state(path: Path, state: dict, fingerprint: str, run_id: str | None) -> None:
    save_checkpoint(path, {**state, "fingerprint": fingerprint, "mlflow_run_id": run_id})


def run_fingerprint(trajectory_params: dict, data_files: list[Path], base: Path | None) -> str:
    """Hash of everything that decides the weights: the params, the data bytes, the package's code."""
    digest = hashlib.sha256(json.dumps(trajectory_params, sort_keys=True, default=str).encode())
    code = sorted(Path(__file__).parent.glob("*.py"))
    for path in [*data_files, *code, *([base] if base else [])]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def preflight(params: Params, base: Path | None) -> tuple[dict | None, dict[str, pd.DataFrame], str]:
    """Every check a user mistake can fail, before any training (and before torchrun starts workers,
    whose errors would end in its traceback): the base checkpoint, the data, the tracking store.
    Returns the base payload, the data splits and the MLflow experiment id."""
    base_payload = None
    if base is not None:
        base_payload = load_checkpoint(base)
        if "model_config" not in base_payload or "model_state" not in base_payload:
            raise UserError(f"--base {base}: not a model checkpoint (it holds no model config and weights)")
        differences = model_config_differences(base_payload["model_config"], params.model)
        if differences:
            raise UserError(f"--base {base} has another model config than params: {'; '.join(differences)}")
    splits = {name: read_split(params.paths.data, name) for name in SPLITS}
    return base_payload, splits, tracking.connect(params.mlflow.experiment)


def run_training(params: Params, base: Path | None = None) -> Path:
    """The train stage: fresh, resumed or continued (`base`) training, logged to MLflow; returns the model path."""
    dist_info = init_distributed(params.train.device)
    device = select_device(params.train.device, dist_info.local_rank)
    base_payload, splits, experiment_id = preflight(params, base)

    resume_path = Path(params.paths.resume) / "last.pt"
    trajectory = {key: value for key, value in params.flat().items()
                  if key.split(".")[0] in ("seed", "model", "loss", "train")}
    fingerprint = run_fingerprint(trajectory, [split_path(params.paths.data, name) for name in ("train", "val")], base)
    state, why = load_resume_state(resume_path, fingerprint)

    trainer = Trainer(params.model, params.loss, params.train, params.seed, splits["train"]["text"].tolist(),
                      splits["val"]["text"].tolist(), device, dist_info)
    if state is not None:
        trainer.restore(state)
    elif base_payload is not None:
        why = f"continuing from --base {base}: {trainer.load_base(base_payload)}"
    run_id = state.get("mlflow_run_id") if state else None

    def on_eval(row: dict[str, float]) -> None:
        tracking.log_metrics({k: v for k, v in row.items() if k != "step" and math.isfinite(v)}, step=int(row["step"]))
        if not sys.stderr.isatty():
            print(f"step {int(row['step'])}/{params.train.steps}  loss {row['loss']:.4f}  "
                  f"val_loss {row['val_loss']:.4f}  val_exact_match {row['val_exact_match']:.4f}  "
                  f"{row['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)

    def on_checkpoint(state: dict) -> None:
        save_resume_state(resume_path, state, fingerprint, run_id)

    if dist_info.is_main:
        print(why, file=sys.stderr)
        if run_id is not None and not tracking.run_exists(run_id):
            print(f"the resumed run's MLflow run {run_id} is not in the store; logging to a new run", file=sys.stderr)
            run_id = None
        resumed = run_id is not None
        run_id = tracking.start_run(experiment_id, run_id=run_id, tags=tracking.run_tags(params.flat()))
    try:
        if dist_info.is_main:
            tracking.log_params(params.flat())
            if not resumed:
                for name, frame in splits.items():
                    tracking.log_dataset(frame, split_path(params.paths.data, name), name)
                on_checkpoint(trainer.state())  # the run id is on disk from the start: a kill resumes this run
        with StopSignals() as stop:
            result = trainer.fit(on_eval, on_checkpoint, stop)
    except TrainingInterrupted as interrupted:
        if dist_info.is_main:
            tracking.end_run(status="KILLED")
            print(f"{interrupted}: checkpoint written to {resume_path}; run again to resume", file=sys.stderr)
        raise SystemExit(128 + interrupted.signum) from None
    except TrainingDiverged as error:
        if dist_info.is_main:
            tracking.end_run(status="FAILED")
        raise TrainingDiverged(f"{error}; the last good checkpoint is kept at {resume_path}") from None
    except BaseException:  # anything else: the run did not finish (MLflow's exit hook would say FINISHED)
        if dist_info.is_main:
            tracking.end_run(status="FAILED")
        raise

    model_path = Path(params.paths.model)
    if dist_info.is_main:
        metrics_dir = Path(params.paths.metrics)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        curve_path = metrics_dir / "train_curve.csv"
        result.curve.to_csv(curve_path, index=False)
        save_checkpoint(model_path, {**model_payload(result.model), "optimizer": trainer.optimizer.state_dict(),
                                     "vocab": tokenizer.VOCAB, "params": params.flat(), "mlflow_run_id": run_id,
                                     "steps": trainer.step})
        tracking.log_artifact(str(curve_path))
        tracking.log_artifact(str(model_path), artifact_path="checkpoint")
        tracking.end_run()
        resume_path.unlink(missing_ok=True)  # finished: the next run of this stage starts fresh
    if dist_info.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return model_path

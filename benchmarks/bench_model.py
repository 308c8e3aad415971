"""Model benchmarks: the cost of the extra losses in a training step, and KV-cache decoding.

    python benchmarks/bench_model.py [--device cpu|cuda] [--repeats 5]

Prints one JSON object. Every number is the median of `repeats` timed blocks after a warm-up;
CUDA is synchronised around each block and runs under bf16 autocast, as training does. The
functions are importable (`bench_train_steps`, `bench_decoding`, `run`) for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from language_entropy.batches import encode_batch  # noqa: E402
from language_entropy.data import with_text  # noqa: E402
from language_entropy.generation import generate  # noqa: E402
from language_entropy.losses import compute_losses  # noqa: E402
from language_entropy.model import ArithmeticDecoder  # noqa: E402
from language_entropy.params import DigitRange, LossConfig, ModelConfig  # noqa: E402
from language_entropy.problems import draw_problems  # noqa: E402
from language_entropy.tokenizer import EOS_ID, PAD_ID, encode  # noqa: E402

ALL_LOSSES = LossConfig(entropy_weight=0.01, continuity_weight=0.1, entropy_mask="drop_high")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` runs, `device` synchronised
    after each (every benchmark here times this way)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_texts(n: int, seed: int = 0) -> list[str]:
    """Additions and subtractions of 1-3 digit numbers, answers reversed, as the default data: ~12-14 tokens."""
    problems = draw_problems(np.random.default_rng(seed), ("add", "sub"), DigitRange(1, 3), n)
    return with_text(problems, reverse=True)["text"].tolist()


def training_batch(batch_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    return encode_batch(training_texts(batch_size, seed), device)


def bench_train_steps(device: str | torch.device = "cpu", batch_size: int = 128, steps: int = 10,
                      repeats: int = 5, model_config: ModelConfig | None = None) -> dict[str, float]:
    """Seconds per training step (forward, losses, backward, clip, AdamW) with CE only and with
    every loss on (continuity + entropy penalty + drop_high entropy mask); both measured in
    alternating blocks so drift hits them alike."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = ArithmeticDecoder(model_config or ModelConfig()).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = training_batch(batch_size, device)
    tokens = batch["tokens"]

    def step(config: LossConfig) -> None:
        coefficient = config.entropy_weight
        with _autocast(device):
            if config.continuity_weight > 0:
                logits, hidden = model(tokens[:, :-1], return_hidden=True)
            else:
                logits, hidden = model(tokens[:, :-1]), None
            terms = compute_losses(logits, hidden, tokens[:, 1:], batch["answer_mask"], batch["valid_mask"],
                                   config, coefficient)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def block(config):
        return lambda: [step(config) for _ in range(steps)]

    ce_only, all_on = LossConfig(), ALL_LOSSES
    for config in (ce_only, all_on):  # warm-up both paths
        block(config)()
    ce_times, all_times = [], []
    for _ in range(repeats):
        ce_times.append(median_seconds(block(ce_only), device, 1, warmup=0) / steps)
        all_times.append(median_seconds(block(all_on), device, 1, warmup=0) / steps)
    ce_s, all_s = statistics.median(ce_times), statistics.median(all_times)
    return {"train_step_ce_only_ms": 1e3 * ce_s, "train_step_all_losses_ms": 1e3 * all_s,
            "train_step_ratio": all_s / ce_s, "train_batch_size": batch_size,
            "train_tokens_per_row": tokens.shape[1]}


@torch.no_grad()
def greedy_by_recomputation(model: ArithmeticDecoder, prompts: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The no-cache baseline: the whole sequence through the model again for every new token."""
    seq = prompts
    finished = torch.zeros(prompts.shape[0], dtype=torch.bool, device=prompts.device)
    new = []
    for _ in range(max_new_tokens):
        token = model(seq)[:, -1].argmax(dim=-1)
        token = torch.where(finished, torch.full_like(token, PAD_ID), token)
        new.append(token)
        finished |= token == EOS_ID
        if bool(finished.all()):
            break
        seq = torch.cat([seq, token[:, None]], dim=1)
    return torch.stack(new, dim=1)


def bench_decoding(device: str | torch.device = "cpu", batch_size: int = 512, answer_tokens: int = 12,
                   repeats: int = 5, model_config: ModelConfig | None = None, autocast: bool = True,
                   graphed: bool = False) -> dict[str, float]:
    """Greedy decoding of `answer_tokens` new tokens after `^abc+def=` prompts: the KV cache
    against recomputing the full sequence every step. tokens/s counts generated tokens. `autocast`:
    bf16 on CUDA (as training's validation is not: evaluation runs fp32); `graphed`: the KV-cache
    loop through `CapturedGeneration` (CUDA; the warm-up call captures it)."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = ArithmeticDecoder(model_config or ModelConfig()).to(device).eval()
    model.graphed_generation = graphed
    rng = random.Random(1)
    prompts = torch.tensor([encode(f"^{rng.randint(100, 999)}+{rng.randint(100, 999)}=") for _ in range(batch_size)],
                           device=device)
    with _autocast(device) if autocast else contextlib.nullcontext():
        cached = generate(model, prompts, answer_tokens).tokens
        recomputed = greedy_by_recomputation(model, prompts, answer_tokens)
        steps = cached.shape[1]  # an untrained model never ends every row early, but count what ran
        cache_s = median_seconds(lambda: generate(model, prompts, answer_tokens), device, repeats)
        full_s = median_seconds(lambda: greedy_by_recomputation(model, prompts, answer_tokens), device, repeats)
    return {"decode_batch_size": batch_size, "decode_new_tokens": steps,
            "decode_kv_cache_tokens_per_s": batch_size * steps / cache_s,
            "decode_recompute_tokens_per_s": batch_size * recomputed.shape[1] / full_s,
            "decode_speedup": full_s / cache_s * steps / recomputed.shape[1],
            "decode_same_tokens": bool(torch.equal(cached, recomputed))}


def run(device: str | torch.device = "cpu", repeats: int = 5) -> dict[str, float]:
    device = torch.device(device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch_threads": torch.get_num_threads()}
    result.update(bench_train_steps(device, repeats=repeats))
    result.update(bench_decoding(device, repeats=repeats))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.device, args.repeats), indent=2))


if __name__ == "__main__":
    main()

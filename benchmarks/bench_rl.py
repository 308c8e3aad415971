"""The cost of one RL fine-tuning step against one supervised training step, both at the shipped params.yaml.

    python benchmarks/bench_rl.py [--repeats 5] [--smoke]

An RL step (`rl.FineTuner.train_step`: sample rl.prompts_per_step x rl.samples_per_prompt answers with the
KV cache, reward, advantages, one scoring forward and backward with the replay term's, AdamW) of the trained
default model at models/model.pt when there is one (else an untrained default-size model, whose answers run to
the length budget: an upper bound), against a training step of the default `Trainer` (batch train.batch_size of
1-3 digit problems). Both are timed in alternating blocks of steps, median over `repeats`, in one process on this
machine's threads. Prints one JSON object: rl_step_ms, train_step_ms, rl_step_vs_train_step (the issue's
bound: at most 3) and which model the RL step ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_model  # noqa: E402

from language_entropy.checkpoint import load_model  # noqa: E402
from language_entropy.data import with_text  # noqa: E402
from language_entropy.model import ArithmeticDecoder  # noqa: E402
from language_entropy.params import load_params  # noqa: E402
from language_entropy.problems import draw_problems  # noqa: E402
from language_entropy.rl import FineTuner  # noqa: E402
from language_entropy.training import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def bench_rl_step(repeats: int = 5, block: int = 5, smoke: bool = False) -> dict[str, object]:
    params = load_params(ROOT / "params.yaml")
    checkpoint = ROOT / "models" / "model.pt"
    if checkpoint.exists():
        model, which = load_model(checkpoint), "trained models/model.pt"
    else:
        model, which = ArithmeticDecoder(params.model).eval(), "untrained default-size model"
    prompts = with_text(draw_problems(np.random.default_rng(0), params.data.operations, params.rl.digits, 2000),
                        params.data.reverse_answer)["text"].tolist()
    steps = 2 if smoke else block
    rl_config = dataclasses.replace(params.rl, steps=10**9)  # the schedule never ends inside the benchmark
    texts = bench_model.training_texts(20_000)
    tuner = FineTuner(model, rl_config, prompts, prompts[:10], CPU, texts)  # the step replays texts (rl.replay_*)
    trainer = Trainer(params.model, params.loss, params.train, params.seed, texts, texts[:10], CPU)

    def rl_block() -> None:
        for _ in range(steps):
            tuner.train_step()

    def train_block() -> None:
        for _ in range(steps):
            trainer.train_step()
        trainer.flush_log()  # the loss terms wait on the device until read: read them, as the loop does

    rl_times, train_times = [], []
    for _ in range(repeats):  # alternating blocks: drift on a shared machine hits both alike
        rl_times.append(bench_model.median_seconds(rl_block, CPU, 1, warmup=0 if rl_times else 1))
        train_times.append(bench_model.median_seconds(train_block, CPU, 1, warmup=0 if train_times else 1))
    rl_ms, train_ms = 1e3 * float(np.median(rl_times)) / steps, 1e3 * float(np.median(train_times)) / steps
    return {"rl_step_ms": rl_ms, "train_step_ms": train_ms, "rl_step_vs_train_step": rl_ms / train_ms,
            "rl_step_model": which, "rl_step_samples": params.rl.prompts_per_step * params.rl.samples_per_prompt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a few steps: check the path, not the speed")
    args = parser.parse_args()
    print(json.dumps(bench_rl_step(1 if args.smoke else args.repeats, smoke=args.smoke), indent=2))


if __name__ == "__main__":
    main()

"""minGPT's adder (karpathy/minGPT, projects/adder) on 3-digit addition, timed to 99% held-out exact match.

    python benchmarks/bench_mingpt.py --mingpt DIR [--eval-every 100]

Nothing of minGPT is in this repository: DIR is a checkout of it outside the repository (or set
MINGPT_DIR). Its own configuration runs unchanged, as adder.py builds it (`get_config()`: gpt-nano,
learning rate 5e-4, batch 64, 4 loader workers, seed 3407; its AdditionDataset with ndigit=3: all
10^6 problems, 500 held out), only `data.ndigit` set to 3. adder.py scores the held-out problems by
greedy generation every 500 iterations; here the same scoring (all 500, greedy, the answer's digits
reversed back and compared as a number) runs every `--eval-every` iterations, and the clock (which
includes that scoring, as this project's own time-to-99 does) stops at >= 99%.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader


def load_adder(mingpt_dir: Path):
    """minGPT's adder.py as a module (its training runs only under __main__, so importing defines, not runs)."""
    sys.path.insert(0, str(mingpt_dir))
    spec = importlib.util.spec_from_file_location("mingpt_adder", mingpt_dir / "projects" / "adder" / "adder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def held_out_exact_match(model, dataset, ndigit: int) -> float:
    """adder.py's eval_split on the whole held-out split: greedy answer digits against a + b."""
    model.eval()
    factors = torch.tensor([[10**i for i in range(ndigit + 1)][::-1]])
    right = []
    for x, _ in DataLoader(dataset, batch_size=100, num_workers=0, drop_last=False):
        d1d2 = x[:, :ndigit * 2]
        d3 = model.generate(d1d2, ndigit + 1, do_sample=False)[:, -(ndigit + 1):].flip(1)
        a, b = (d1d2[:, :ndigit] * factors[:, 1:]).sum(1), (d1d2[:, ndigit:] * factors[:, 1:]).sum(1)
        right.append((d3 * factors).sum(1) == a + b)
    model.train()
    return float(torch.cat(right).float().mean())


def time_to_99(mingpt_dir: Path, eval_every: int = 100, max_iters: int = 30_000) -> dict[str, float | None]:
    adder = load_adder(mingpt_dir)
    from mingpt.model import GPT
    from mingpt.trainer import Trainer
    from mingpt.utils import set_seed

    config = adder.get_config()
    config.data.ndigit = 3
    config.trainer.max_iters = max_iters
    set_seed(config.system.seed)
    train, test = adder.AdditionDataset(config.data, "train"), adder.AdditionDataset(config.data, "test")
    config.model.vocab_size, config.model.block_size = train.get_vocab_size(), train.get_block_size()
    trainer = Trainer(config.trainer, GPT(config.model), train)
    reached: dict[str, float | None] = {"mingpt_add3_time_to_99_s": None, "mingpt_add3_iters": None,
                                        "mingpt_add3_final_exact_match": 0.0}
    start = time.perf_counter()

    def on_batch_end(trainer) -> None:
        if (trainer.iter_num + 1) % eval_every:
            return
        exact = held_out_exact_match(trainer.model, test, config.data.ndigit)
        reached.update(mingpt_add3_iters=trainer.iter_num + 1, mingpt_add3_final_exact_match=exact)
        if exact >= 0.99:
            reached["mingpt_add3_time_to_99_s"] = time.perf_counter() - start
            trainer.config.max_iters = trainer.iter_num + 1  # the loop stops after this iteration

    trainer.set_callback("on_batch_end", on_batch_end)
    trainer.run()
    return reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mingpt", type=Path, default=os.environ.get("MINGPT_DIR"), help="a minGPT checkout")
    parser.add_argument("--eval-every", type=int, default=100)
    args = parser.parse_args()
    if args.mingpt is None or not (Path(args.mingpt) / "mingpt" / "model.py").is_file():
        sys.exit("error: --mingpt DIR (or MINGPT_DIR) must name a checkout of karpathy/minGPT")
    print(json.dumps(time_to_99(Path(args.mingpt), args.eval_every), indent=2))


if __name__ == "__main__":
    main()

"""How much memory each stage would need, estimated from the params before anything runs.

`check_memory` refuses, naming the params key that makes it large and the estimate, a configuration whose
stage would need more than the limit (`resources.memory_limit_gb`, else $LANGUAGE_ENTROPY_MEMORY_LIMIT_GB,
else half the machine). The estimates come from the shapes (the model's own feed-forward width,
`ModelConfig.ffn_width`), calibrated on this project's CPU runs (2026-11): a stage's peak is about
start-up + data + model (+ optimizer) + one batch. Generous rather than tight: a configuration near the
limit is refused, one a hundred times over it never starts (it would fill the memory within seconds).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from language_entropy.errors import ParamsError
from language_entropy.tokenizer import VOCAB_SIZE

if TYPE_CHECKING:  # params imports this module to check what it loads
    from language_entropy.params import Params, ResourcesConfig

MEMORY_LIMIT_ENV = "LANGUAGE_ENTROPY_MEMORY_LIMIT_GB"


def longest_sequence(operation: str, digits: int) -> int:
    """Tokens of the longest problem with `digits`-digit operands: bos, both operands, operator, '=',
    the longest answer (a sign or carry adds one; a product doubles the digits), eos, one spare step."""
    answer = {"add": digits + 1, "sub": digits + 1, "mul": 2 * digits, "div": digits}[operation]
    return 1 + 2 * digits + 2 + answer + 2


GB = 1024**3
STARTUP_BYTES = GB // 2  # the interpreter with torch, pandas and MLflow imported
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
        if not (math.isfinite(value) and value > 0):
            raise ParamsError(f"${MEMORY_LIMIT_ENV} must be a number of GB > 0 (got {os.environ[MEMORY_LIMIT_ENV]!r})")
        return value * GB, f"${MEMORY_LIMIT_ENV}"
    total = machine_memory()
    return (total / 2 if total else None), f"half this machine's memory; set resources.memory_limit_gb or " \
                                          f"${MEMORY_LIMIT_ENV} to change it"


def _blame(ratios: dict[str, float]) -> str:
    """The key that grew most against its default, of those a term scales with."""
    return max(ratios, key=lambda key: ratios[key])


def memory_estimate(params: Params) -> dict[str, dict[str, tuple[float, str]]]:
    """Per stage, its terms: name -> (bytes, the params key that most makes it large)."""
    m, d, t, e, r = params.model, params.data, params.train, params.eval, params.rl
    model0, train0, eval0, rl0 = type(m)(), type(t)(), type(e)(), type(r)()  # defaults: a term blames what grew most
    C, L, H = m.n_embd, m.n_layer, m.n_head
    hidden = m.ffn_width
    train_len = max(longest_sequence(op, d.digits.max) for op in d.operations)
    eval_len = max(longest_sequence(op, digits.max) for op in d.operations for digits in (d.digits, d.ood_digits))
    rl_len = max(longest_sequence(op, r.digits.max) for op in d.operations)
    table_rows = {"learned": m.max_seq_len, "abacus": m.max_seq_len + m.abacus_max_offset + 1}.get(m.pos_encoding, 0)
    table = table_rows * C + (m.max_seq_len * C // H if m.pos_encoding == "rope" else 0)  # rope: cos/sin buffers
    layers = L * (4 * C * C + 3 * C * hidden + 2 * C) + (VOCAB_SIZE + 1) * C
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
        "generate-data": {"data": (rows(d.train_size + d.val_size + d.test_size + d.ood_size + r.prompt_size
                                        + r.val_size, max(eval_len, rl_len)),
                                   _blame({**{f"data.{k}": getattr(d, k) for k in ("train_size", "val_size",
                                                                                   "test_size", "ood_size")},
                                           "rl.prompt_size": r.prompt_size, "rl.val_size": r.val_size}))},
        "train": {
            "data": (rows(d.train_size + d.val_size, train_len),
                     "data.train_size" if d.train_size >= d.val_size else "data.val_size"),
            "model and optimizer": (16 * (table + layers), model_key),
            "one batch's activations": (
                t.batch_size / t.nproc_per_node * train_len * (L * layer_floats(train_len) + 8 * VOCAB_SIZE) * 4,
                _blame({"train.batch_size": t.batch_size / train0.batch_size, **width})),
        },
        "finetune": {
            "data": (rows(r.prompt_size + r.val_size, rl_len),
                     "rl.prompt_size" if r.prompt_size >= r.val_size else "rl.val_size"),
            "policy, optimizer and reference": (20 * (table + layers), model_key),
            "one update's samples": (  # autograd over one minibatch; the step's log-probabilities and entropies
                r.prompts_per_step * r.samples_per_prompt * rl_len * 4
                * ((L * layer_floats(rl_len) + 8 * VOCAB_SIZE) / r.minibatches + 4 * VOCAB_SIZE),
                _blame({"rl.prompts_per_step": r.prompts_per_step / rl0.prompts_per_step,
                        "rl.samples_per_prompt": r.samples_per_prompt / rl0.samples_per_prompt, **width})),
        },
        "evaluate": {
            "data": (rows(n_eval, eval_len) + outputs, eval_key),
            "model": model_only,
            "one evaluation batch": (  # no autograd: one layer at a time, and the KV cache of every layer
                eval_rows * eval_len * 4 * (layer_floats(eval_len) + 8 * VOCAB_SIZE + 2 * L * C),
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


def check_memory(params: Params) -> None:
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

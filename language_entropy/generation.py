"""Decoding the ArithmeticDecoder: KV-cache generation, sampling, and the whole loop in one CUDA graph.

`generate` continues a batch of equal-length prompts token by token, each step feeding only the new token
and attending to the cached keys and values; `generate_batched` / `generate_batches` run prompts of any
length in batches grouped by length. On CUDA with ``model.graphed_generation`` set, the loop is captured
once per shape and option set and replayed (`CapturedGeneration`).

Shapes: B batch, T0 prompt length, N generated steps, C n_embd, V vocab, L n_layer.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from language_entropy.batches import place_value_positions
from language_entropy.model import ArithmeticDecoder, LayerCache
from language_entropy.tokenizer import EOS_ID, EQUALS_ID, PAD_ID


@dataclass
class Generation:
    """What `generate` returns. N = the steps taken (<= max_new_tokens: the loop ends early once
    every row has emitted EOS). Positions after a row's EOS hold PAD in `tokens`; their `probs`
    and `hidden` are whatever the model computed for that padding and must be masked out
    (``tokens != PAD_ID`` keeps the EOS step itself)."""

    tokens: torch.Tensor  # (B, N) generated ids
    probs: torch.Tensor | None = None  # (B, N, V) full next-token distribution at each step
    hidden: list[torch.Tensor] | None = None  # L+1 tensors (B, N, C): the state that produced each token


@torch.no_grad()
def generate(model: ArithmeticDecoder, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, return_probs: bool = False,
             return_hidden: bool = False) -> Generation:
    """Continue `prompts` (B, T0) with a KV cache; returns a `Generation`.

    Every row has the same length (callers group prompts by length; see `generate_batched`),
    starts with BOS and ends with '='. Runs without autograd; calling ``model.eval()`` first is
    the caller's job (dropout would stay on otherwise). Works under bf16 autocast.

    PAD and BOS are never generated: their logits are set to -inf first (``model.never_generated``),
    so neither can appear inside an answer, greedy or sampled. Below, `logits` are these masked
    logits. temperature 0 is greedy (argmax). Otherwise the next token is sampled from
    softmax(logits / temperature), restricted to the `top_k` most likely tokens and then to the
    nucleus of mass `top_p`, using `generator` (any device; one uniform per row and step, all
    max_new_tokens x B drawn before the first step, so a seeded generator reproduces the samples
    and advances by the same amount however early the rows end; None = the global RNG).

    `probs` are the full distribution softmax(logits / temperature) before top-k/top-p
    filtering: the model's distribution renormalised over the tokens other than PAD and BOS
    (which get probability 0); at temperature 0 they are softmax(logits).
    `hidden[l][:, s]` is layer l's state at the position whose logits chose token s (the '='
    for s = 0). A row that emits EOS gets PAD afterwards; the loop stops when every row has
    ended or after `max_new_tokens` steps. The prompt is prefilled in one causal pass, then
    each step feeds only the new token and attends to the cache.

    With `graphed_generation` set and the prompts on a CUDA device, the whole call (prefill and
    every step) is one CUDA graph, captured on the first call of each shape and option set and
    replayed after: the same kernels, so the same tokens, probs and hidden states as the eager
    loop (`CapturedGeneration`).
    """
    B, T0 = prompts.shape
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    model.check_length(T0 + max_new_tokens, "prompt length + max_new_tokens")
    if model.config.pos_encoding == "abacus" and not bool((prompts == EQUALS_ID).any(dim=1).all()):
        raise ValueError("abacus generation needs every prompt to contain '=' (answer digits count from it)")
    uniforms = None
    if temperature != 0:  # (N, B, 1): step s samples with uniforms[s]
        device = generator.device if generator is not None else prompts.device
        uniforms = torch.rand((max_new_tokens, B, 1), generator=generator, device=device).to(prompts.device)
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   return_probs=return_probs, return_hidden=return_hidden)
    if model.graphed_generation and prompts.is_cuda:
        if model not in _CAPTURED:
            _CAPTURED[model] = CapturedGeneration(model)
        return _CAPTURED[model](prompts, uniforms, **options)
    return _decode(model, prompts, uniforms, stop_early=True, **options)

def _decode(model: ArithmeticDecoder, prompts: torch.Tensor, uniforms: torch.Tensor | None, *, max_new_tokens: int,
            temperature: float, top_k: int | None, top_p: float | None, return_probs: bool,
            return_hidden: bool, stop_early: bool) -> Generation:
    """`generate`'s loop. `stop_early`: end once every row has emitted EOS (one host sync per step);
    without it every step runs (the rows that ended emit PAD), so a CUDA graph can capture it."""
    B, T0 = prompts.shape
    abacus = model.config.pos_encoding == "abacus"
    place = run = None
    if abacus:
        place = place_value_positions(prompts)  # (B, T0); never offset: generation is evaluation
        run = place[:, -1]  # length of the digit run the prompt ends with (0 after '=')

    caches = [LayerCache(T0 + max_new_tokens) for _ in model.blocks]
    x, hidden = model.trunk(prompts, 0, place, caches, collect=return_hidden)  # prefill
    finished = torch.zeros(B, dtype=torch.bool, device=prompts.device)
    pad = torch.full_like(finished, PAD_ID, dtype=torch.long)
    tokens, probs, states = [], [], defaultdict(list)
    for step in range(max_new_tokens):
        logits = model.lm_head(model.norm_f(x[:, -1]))  # (B, V): only the last position matters
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32 to sample
        logits = logits.masked_fill(model.never_generated, float("-inf"))  # (B, V): PAD, BOS never answer
        if return_hidden:
            for layer, h in enumerate(hidden):
                states[layer].append(h[:, -1])  # (B, C)
        token, dist = _choose(logits, temperature, top_k, top_p, uniforms[step] if uniforms is not None else None,
                              return_probs)
        token = torch.where(finished, pad, token)  # (B,) ended rows only pad
        tokens.append(token)
        if return_probs:
            probs.append(dist)
        finished = finished | (token == EOS_ID)
        if step == max_new_tokens - 1 or (stop_early and bool(finished.all())):  # one host sync per step
            break
        if abacus:
            # place_value_positions on the full sequence, one token at a time: answer digits
            # count 1, 2, 3.. along a run of digits; sign, EOS and PAD are 0 and end the run
            run = (run + 1) * model.is_digit_id[token]  # a table look-up: fewer kernels per step
            place = run[:, None]  # (B, 1)
        x, hidden = model.trunk(token[:, None], T0 + step, place, caches, collect=return_hidden)

    return Generation(
        tokens=torch.stack(tokens, dim=1),  # (B, N)
        probs=torch.stack(probs, dim=1) if return_probs else None,  # (B, N, V)
        hidden=[torch.stack(states[layer], dim=1) for layer in range(len(model.blocks) + 1)]
        if return_hidden else None,  # L+1 x (B, N, C)
    )


def _choose(logits, temperature, top_k, top_p, uniform, return_probs):
    """Next token (B,) from logits (B, V) float32, and the distribution to report (or None).
    `uniform` (B, 1) in [0, 1): this step's draw when sampling (None when greedy)."""
    if temperature == 0:
        return logits.argmax(dim=-1), (F.softmax(logits, dim=-1) if return_probs else None)
    probs = F.softmax(logits / temperature, dim=-1)  # (B, V)
    keep = probs
    if top_k is not None:
        kth = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        keep = torch.where(probs >= kth, keep, torch.zeros_like(keep))
    if top_p is not None:
        sorted_p, order = torch.sort(keep, dim=-1, descending=True)
        sorted_p = sorted_p / sorted_p.sum(dim=-1, keepdim=True)
        # keep a token while the mass before it is below top_p: the smallest set reaching top_p
        inside = (sorted_p.cumsum(dim=-1) - sorted_p) < top_p
        keep = torch.where(inside.scatter(-1, order, inside), keep, torch.zeros_like(keep))
    # inverse-CDF sampling with the step's uniform draw
    cdf = keep.cumsum(dim=-1)  # (B, V), unnormalised
    u = (1.0 - uniform) * cdf[:, -1:]  # in (0, total]: the first index with cdf >= u has mass > 0
    token = (cdf < u).sum(dim=-1).clamp_max(logits.shape[-1] - 1)
    return token, (probs if return_probs else None)


# ----------------------------------------------------------------------------------------------
# Generation in one CUDA graph

_CAPTURED: weakref.WeakKeyDictionary[ArithmeticDecoder, CapturedGeneration] = weakref.WeakKeyDictionary()


class CapturedGeneration:
    """`_decode` captured in CUDA graphs, one per (batch shape, options, autocast state).

    On this small model a decode step is a few dozen tiny kernels, so the GPU waits for the host's
    launches; a graph launches the whole call (prefill and every step, without the early stop's
    per-step host sync) at once. The first call of a key runs the loop eagerly on a side stream
    (warming up cuBLAS and the allocator, and giving that call's result), then captures it; later
    calls copy the prompts and uniforms into the graph's input buffers and replay it. The graph
    reads the weights' memory, so in-place updates (an optimizer step, ``load_state_dict``) are
    seen; moving the model to another device is not: make a new model. Autocast's weight cache is
    off while capturing (a cached cast would be freed when the caller's autocast ends).
    """

    def __init__(self, model: ArithmeticDecoder):
        self.model = model
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor | None, Generation]] = {}

    def __call__(self, prompts: torch.Tensor, uniforms: torch.Tensor | None, **options) -> Generation:
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        key = (tuple(prompts.shape), prompts.device, autocast, *sorted(options.items()))
        with torch.autocast("cuda", enabled=autocast[0], dtype=autocast[1], cache_enabled=False):
            if key not in self.graphs:
                return self._warm_up_and_capture(key, prompts, uniforms, options)
            graph, static_prompts, static_uniforms, out = self.graphs[key]
            static_prompts.copy_(prompts)
            if static_uniforms is not None:
                static_uniforms.copy_(uniforms)
            graph.replay()
        return _trimmed(out)

    def _warm_up_and_capture(self, key, prompts, uniforms, options) -> Generation:
        static_prompts = prompts.clone()
        static_uniforms = uniforms.clone() if uniforms is not None else None
        side = torch.cuda.Stream(prompts.device)
        side.wait_stream(torch.cuda.current_stream(prompts.device))
        with torch.cuda.stream(side):
            result = _trimmed(_decode(self.model, static_prompts, static_uniforms, stop_early=False, **options))
        torch.cuda.current_stream(prompts.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _decode(self.model, static_prompts, static_uniforms, stop_early=False, **options)
        self.graphs[key] = (graph, static_prompts, static_uniforms, out)
        return result


def _trimmed(out: Generation) -> Generation:
    """A copy of `out` without the trailing steps at which every row had already ended (all PAD): what
    the eager loop, which stops there, returns. The copy outlives the graph's next replay."""
    steps = int((out.tokens != PAD_ID).any(dim=0).sum())  # a row that has not ended never emits PAD
    return Generation(tokens=out.tokens[:, :steps].clone(),
                      probs=out.probs[:, :steps].clone() if out.probs is not None else None,
                      hidden=[h[:, :steps].clone() for h in out.hidden] if out.hidden is not None else None)


def generate_batched(model: ArithmeticDecoder, prompt_ids: list[list[int]], batch_size: int, *,
                     max_new_tokens: int, **generate_kwargs) -> Generation:
    """`generate` over prompts of any lengths; results in the original order, on the CPU.

    Prompts are grouped by length (shortest first) and run `batch_size` rows at a time, so no
    padding or attention mask is needed. Returns one `Generation` whose tensors have a row per
    prompt, in the order given, and exactly `max_new_tokens` columns: batches that ended early are
    padded with PAD tokens, zero probs and zero hidden states. With a `generator` the samples are
    reproducible for the same prompts, order and batch_size. Runs on the model's device.
    """
    n = len(prompt_ids)
    tokens = torch.full((n, max_new_tokens), PAD_ID, dtype=torch.long)
    probs = hidden = None
    for rows, out in generate_batches(model, prompt_ids, batch_size, max_new_tokens=max_new_tokens,
                                      **generate_kwargs):
        tokens[rows] = out.tokens
        if out.probs is not None:
            if probs is None:
                probs = torch.zeros(n, max_new_tokens, out.probs.shape[-1])
            probs[rows] = out.probs
        if out.hidden is not None:
            if hidden is None:
                hidden = [torch.zeros(n, max_new_tokens, h.shape[-1]) for h in out.hidden]
            for layer, h in enumerate(out.hidden):
                hidden[layer][rows] = h
    return Generation(tokens=tokens, probs=probs, hidden=hidden)


def generate_batches(model: ArithmeticDecoder, prompt_ids: list[list[int]], batch_size: int, *,
                     max_new_tokens: int, **generate_kwargs) -> Iterator[tuple[torch.Tensor, Generation]]:
    """`generate_batched` one batch at a time: (the batch's row indices into `prompt_ids`, its `Generation`
    on the CPU, padded to `max_new_tokens` columns), in the same order and with the same random draws, so
    a caller that reduces each batch holds one batch of probabilities or hidden states, never all of them."""
    device = next(model.parameters()).device
    by_length = defaultdict(list)
    for row, ids in enumerate(prompt_ids):
        by_length[len(ids)].append(row)
    for length in sorted(by_length):
        rows = by_length[length]
        for begin in range(0, len(rows), batch_size):
            chunk = rows[begin:begin + batch_size]
            prompts = torch.tensor([prompt_ids[r] for r in chunk], dtype=torch.long, device=device)
            out = generate(model, prompts, max_new_tokens, **generate_kwargs)
            steps = out.tokens.shape[1]
            tokens = torch.full((len(chunk), max_new_tokens), PAD_ID, dtype=torch.long)
            tokens[:, :steps] = out.tokens.cpu()
            probs = hidden = None
            if out.probs is not None:
                probs = torch.zeros(len(chunk), max_new_tokens, out.probs.shape[-1])
                probs[:, :steps] = out.probs.float().cpu()
            if out.hidden is not None:
                hidden = [torch.zeros(len(chunk), max_new_tokens, h.shape[-1]) for h in out.hidden]
                for layer, h in enumerate(out.hidden):
                    hidden[layer][:, :steps] = h.float().cpu()
            yield torch.tensor(chunk), Generation(tokens=tokens, probs=probs, hidden=hidden)

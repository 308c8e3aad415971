"""A small decoder-only transformer for arithmetic, with KV-cache generation.

Reads top to bottom like nanoGPT's model.py: attention, feed-forward, block, the model, then
generation. Pre-norm blocks (RMSNorm), SwiGLU feed-forward, causal multi-head attention through
`F.scaled_dot_product_attention`, input and output embeddings tied, no biases.

Positional information (`ModelConfig.pos_encoding`):
- ``learned``: an absolute position table of max_seq_len rows added to the token embeddings.
- ``rope``: rotary embeddings on queries and keys, nothing added to the embeddings.
- ``abacus`` (McLeish et al. 2024): a learned table indexed by each digit's place value
  (`batches.place_value_positions`, 0 for non-digits). Nothing else says where a token is:
  the causal mask alone gives the order. In training every sequence's non-zero indices are
  shifted by one random offset in [0, abacus_max_offset], so the rows beyond the trained lengths
  are trained too and longer numbers than seen still line up digit by digit.

Shapes: B batch, T sequence, C n_embd, H n_head, D head size, V vocab, L n_layer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from language_entropy.batches import emits_first_answer_digit, is_digit, place_value_positions
from language_entropy.params import ModelConfig
from language_entropy.tokenizer import BOS_ID, EOS_ID, EQUALS_ID, PAD_ID, VOCAB_SIZE

# ----------------------------------------------------------------------------------------------
# Rotary position embedding


class Rotary(nn.Module):
    """cos/sin tables of rotary embeddings (Su et al. 2021) for positions 0..max_seq_len-1."""

    def __init__(self, head_size: int, max_seq_len: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        # not persistent: recomputed from the config, so checkpoints hold only learned weights
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[start:start + length], self.sin[start:start + length]  # (T, D/2) each


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x1, x2) pair of `x` (B, H, T, D) by its position's angle ("rotate half" layout)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep q, k and v in one dtype under autocast
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ----------------------------------------------------------------------------------------------
# Attention, feed-forward, block


class LayerCache:
    """Keys and values of one layer for generation, preallocated for the whole sequence."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, D) at positions start.. and return every cached position so far."""
        if self.k is None:  # allocated on first use: the dtype is whatever autocast produced
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.k = k.new_empty(shape)
            self.v = v.new_empty(shape)
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj.residual = True  # scaled init, see ArithmeticDecoder._init_weights
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, cache: LayerCache | None = None, start: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            # generation: either the prefill (start 0, a causal square) or one new query that may
            # attend to every cached key, so no mask at all. SDPA's is_causal aligns the mask to the
            # top-left corner, which would be wrong for several queries after a prefix.
            assert start == 0 or T == 1, "the cache takes a prefill at 0 or one token at a time"
            k, v = cache.update(k, v, start)  # (B, H, start+T, D)
        if cache is not None and T == 1 and q.is_cuda:
            # one query against the cache: two small batched products. SDPA's fused kernels tile for long
            # sequences; on an H100 its fp32 kernel took 86 us a call here, 60% of a whole decode step.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, 1, start+1)
            y = att.softmax(dim=-1) @ v  # (B, H, 1, D)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=T > 1, dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class SwiGLU(nn.Module):
    """silu(x W_gate) * (x W_value), then W_out; hidden width ~8/3 C keeps the parameters of a 4C MLP."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = 32 * math.ceil(8 * config.n_embd / 3 / 32)  # 256 for C = 96
        self.w_in = nn.Linear(config.n_embd, 2 * hidden, bias=False)  # gate and value in one matmul
        self.w_out = nn.Linear(hidden, config.n_embd, bias=False)
        self.w_out.residual = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate, value = self.w_in(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.w_out(F.silu(gate) * value))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm: the residual stream itself is never normalised, only what each branch reads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm_attn = nn.RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.norm_mlp = nn.RMSNorm(config.n_embd)
        self.mlp = SwiGLU(config)

    def forward(self, x, rope=None, cache: LayerCache | None = None, start: int = 0):
        x = x + self.attn(self.norm_attn(x), rope, cache, start)  # (B, T, C)
        return x + self.mlp(self.norm_mlp(x))  # (B, T, C)


# ----------------------------------------------------------------------------------------------
# The model

NEVER_GENERATED = [PAD_ID, BOS_ID]  # generation masks their logits: padding and a sequence start are no answer


@dataclass
class Generation:
    """What `generate` returns. N = the steps taken (<= max_new_tokens: the loop ends early once
    every row has emitted EOS). Positions after a row's EOS hold PAD in `tokens`; their `probs`
    and `hidden` are whatever the model computed for that padding and must be masked out
    (``tokens != PAD_ID`` keeps the EOS step itself)."""

    tokens: torch.Tensor  # (B, N) generated ids
    probs: torch.Tensor | None = None  # (B, N, V) full next-token distribution at each step
    hidden: list[torch.Tensor] | None = None  # L+1 tensors (B, N, C): the state that produced each token


class ArithmeticDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.tok_emb = nn.Embedding(VOCAB_SIZE, C)
        if config.pos_encoding == "learned":
            self.pos_emb = nn.Embedding(config.max_seq_len, C)
        elif config.pos_encoding == "abacus":
            # row 0 = not a digit; place values reach at most max_seq_len, plus the training offset
            self.pos_emb = nn.Embedding(config.max_seq_len + config.abacus_max_offset + 1, C)
        else:
            self.rotary = Rotary(C // config.n_head, config.max_seq_len)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = nn.RMSNorm(C)
        self.lm_head = nn.Linear(C, VOCAB_SIZE, bias=False)
        self.tok_emb.weight = self.lm_head.weight  # tied: one table reads and writes tokens
        self.apply(self._init_weights)
        never_generated = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
        never_generated[NEVER_GENERATED] = True
        self.register_buffer("never_generated", never_generated, persistent=False)  # (V,): a mask, not a list
        self.register_buffer("is_digit_id", is_digit(torch.arange(VOCAB_SIZE)).long(), persistent=False)  # (V,) 0/1
        # a run-time switch like train()/eval(): generate() on CUDA through CapturedGeneration
        self.graphed_generation = False
        self._captured_generation: CapturedGeneration | None = None

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            # GPT-2: residual projections are scaled down so the stream's variance does not grow with depth
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() counts the tied table once

    # -- positions -----------------------------------------------------------------------------

    def abacus_indices(self, idx: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of the abacus table for `idx` (B, T): place values, shifted in training.

        One offset per sequence, added to every digit's index and, with `abacus_offset_equals`, to the
        answer's tokens before its first digit ('=' and a negative answer's '-': row 0 + offset, the
        answer's place 0). Without it those tokens cannot tell the offset, so the query that emits the
        first answer digit must find the units digits (whose rows move with the offset) some other way:
        trained on 3-digit additions alone, the model can then stall near 10% with that digit wrong 90%
        of the time. Other non-digits keep row 0. The trainer passes `offset` (B,) drawn for the whole
        global batch, so that N DDP ranks shift their rows exactly as one process would; without it,
        training draws from the global torch RNG. At eval (not self.training) no offset.
        """
        place = place_value_positions(idx)  # (B, T)
        max_offset = self.config.abacus_max_offset
        if self.training and max_offset > 0:
            if offset is None:
                offset = torch.randint(0, max_offset + 1, (idx.shape[0],), device=idx.device)
            shifted = place > 0
            if self.config.abacus_offset_equals:
                shifted = shifted | emits_first_answer_digit(idx)
            place = torch.where(shifted, place + offset.to(idx.device)[:, None], place)  # (B, T)
        return place

    def _embed(self, idx: torch.Tensor, start: int, place: torch.Tensor | None) -> torch.Tensor:
        x = self.tok_emb(idx)  # (B, T, C)
        if self.config.pos_encoding == "learned":
            x = x + self.pos_emb(torch.arange(start, start + idx.shape[1], device=idx.device))
        elif self.config.pos_encoding == "abacus":
            x = x + self.pos_emb(place)
        return x

    def _trunk(self, idx, start=0, place=None, caches=None, collect=False):
        """Embeddings through every block: the residual stream (B, T, C) before the final norm,
        and when `collect` the list [embeddings, block 1 output, ..., block L output]."""
        x = self._embed(idx, start, place)
        hidden = [x] if collect else None  # hidden[0] is taken before the embedding dropout
        x = self.drop(x)
        rope = self.rotary(start, idx.shape[1]) if self.config.pos_encoding == "rope" else None
        for i, block in enumerate(self.blocks):
            x = block(x, rope, caches[i] if caches is not None else None, start)
            if collect:
                hidden.append(x)
        return x, hidden

    def _check_length(self, length: int, what: str) -> None:
        if length > self.config.max_seq_len:
            raise ValueError(f"{what} {length} exceeds model.max_seq_len ({self.config.max_seq_len})")

    # -- training / scoring --------------------------------------------------------------------

    def forward(self, idx: torch.Tensor, return_hidden: bool = False, abacus_offset: torch.Tensor | None = None):
        """Logits (B, T, V) for input ids `idx` (B, T); with `return_hidden`, ``(logits, hidden)``.
        `abacus_offset` (B,): the training offsets of the abacus positions (see `abacus_indices`).

        hidden: L+1 tensors (B, T, C). hidden[0] = token (+ learned or abacus) embedding, before
        dropout; hidden[i] = the residual stream after block i, so hidden[-1] is the last block's
        output *before* the final RMSNorm (the norm only rescales it for the output head). They are
        the very tensors of this pass, so a loss on them costs no second forward.
        """
        self._check_length(idx.shape[1], "sequence length")
        place = self.abacus_indices(idx, abacus_offset) if self.config.pos_encoding == "abacus" else None
        x, hidden = self._trunk(idx, place=place, collect=return_hidden)  # (B, T, C)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        return (logits, hidden) if return_hidden else logits

    # -- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, return_probs: bool = False,
                 return_hidden: bool = False) -> Generation:
        """Continue `prompts` (B, T0) with a KV cache; returns a `Generation`.

        Every row has the same length (callers group prompts by length; see `generate_batched`),
        starts with BOS and ends with '='. Runs without autograd; calling ``model.eval()`` first is
        the caller's job (dropout would stay on otherwise). Works under bf16 autocast.

        PAD and BOS are never generated: their logits are set to -inf first (`NEVER_GENERATED`),
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
        self._check_length(T0 + max_new_tokens, "prompt length + max_new_tokens")
        if self.config.pos_encoding == "abacus" and not bool((prompts == EQUALS_ID).any(dim=1).all()):
            raise ValueError("abacus generation needs every prompt to contain '=' (answer digits count from it)")
        uniforms = None
        if temperature != 0:  # (N, B, 1): step s samples with uniforms[s]
            device = generator.device if generator is not None else prompts.device
            uniforms = torch.rand((max_new_tokens, B, 1), generator=generator, device=device).to(prompts.device)
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       return_probs=return_probs, return_hidden=return_hidden)
        if self.graphed_generation and prompts.is_cuda:
            if self._captured_generation is None:
                self._captured_generation = CapturedGeneration(self)
            return self._captured_generation(prompts, uniforms, **options)
        return self._decode(prompts, uniforms, stop_early=True, **options)

    def _decode(self, prompts: torch.Tensor, uniforms: torch.Tensor | None, *, max_new_tokens: int,
                temperature: float, top_k: int | None, top_p: float | None, return_probs: bool,
                return_hidden: bool, stop_early: bool) -> Generation:
        """`generate`'s loop. `stop_early`: end once every row has emitted EOS (one host sync per step);
        without it every step runs (the rows that ended emit PAD), so a CUDA graph can capture it."""
        B, T0 = prompts.shape
        abacus = self.config.pos_encoding == "abacus"
        place = run = None
        if abacus:
            place = place_value_positions(prompts)  # (B, T0); never offset: generation is evaluation
            run = place[:, -1]  # length of the digit run the prompt ends with (0 after '=')

        caches = [LayerCache(T0 + max_new_tokens) for _ in self.blocks]
        x, hidden = self._trunk(prompts, 0, place, caches, collect=return_hidden)  # prefill
        finished = torch.zeros(B, dtype=torch.bool, device=prompts.device)
        pad = torch.full_like(finished, PAD_ID, dtype=torch.long)
        tokens, probs, states = [], [], defaultdict(list)
        for step in range(max_new_tokens):
            logits = self.lm_head(self.norm_f(x[:, -1]))  # (B, V): only the last position matters
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32 to sample
            logits = logits.masked_fill(self.never_generated, float("-inf"))  # (B, V): PAD, BOS never answer
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
                run = (run + 1) * self.is_digit_id[token]  # a table look-up: fewer kernels per step
                place = run[:, None]  # (B, 1)
            x, hidden = self._trunk(token[:, None], T0 + step, place, caches, collect=return_hidden)

        return Generation(
            tokens=torch.stack(tokens, dim=1),  # (B, N)
            probs=torch.stack(probs, dim=1) if return_probs else None,  # (B, N, V)
            hidden=[torch.stack(states[layer], dim=1) for layer in range(len(self.blocks) + 1)]
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


class CapturedGeneration:
    """`ArithmeticDecoder._decode` captured in CUDA graphs, one per (batch shape, options, autocast state).

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
            result = _trimmed(self.model._decode(static_prompts, static_uniforms, stop_early=False, **options))
        torch.cuda.current_stream(prompts.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model._decode(static_prompts, static_uniforms, stop_early=False, **options)
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
    """`model.generate` over prompts of any lengths; results in the original order, on the CPU.

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
            out = model.generate(prompts, max_new_tokens, **generate_kwargs)
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

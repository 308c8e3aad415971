"""A small decoder-only transformer for arithmetic; decoding it lives in `generation.py`.

Reads top to bottom like nanoGPT's model.py: positions, attention, feed-forward, block, the model.
Pre-norm blocks (RMSNorm), SwiGLU feed-forward, causal multi-head attention through
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

import torch
import torch.nn as nn
import torch.nn.functional as F

from language_entropy.batches import emits_first_answer_digit, is_digit, place_value_positions
from language_entropy.params import ModelConfig
from language_entropy.tokenizer import BOS_ID, PAD_ID, VOCAB_SIZE

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
        hidden = config.ffn_width  # 256 for C = 96
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
        never_generated[[PAD_ID, BOS_ID]] = True  # generation masks their logits: padding and a start are no answer
        self.register_buffer("never_generated", never_generated, persistent=False)  # (V,): a mask, not a list
        self.register_buffer("is_digit_id", is_digit(torch.arange(VOCAB_SIZE)).long(), persistent=False)  # (V,) 0/1
        # a run-time switch like train()/eval(): generation.generate on CUDA through CapturedGeneration
        self.graphed_generation = False

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

    def trunk(self, idx, start=0, place=None, caches=None, collect=False):
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

    def check_length(self, length: int, what: str) -> None:
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
        self.check_length(idx.shape[1], "sequence length")
        place = self.abacus_indices(idx, abacus_offset) if self.config.pos_encoding == "abacus" else None
        x, hidden = self.trunk(idx, place=place, collect=return_hidden)  # (B, T, C)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        return (logits, hidden) if return_hidden else logits

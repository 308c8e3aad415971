"""Every entropy helper: nats inside torch computations, bits in every report (`to_bits`).

`entropy_from_log_probs`, `entropy_from_logits` and `entropy_bits_from_probs` work on torch tensors
(the losses and the model's measurements); `entropy_bits` on numpy distributions (the theory).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

NATS_TO_BITS = 1.0 / math.log(2.0)


def to_bits(nats):
    """Nats -> bits, for a float or a tensor."""
    return nats * NATS_TO_BITS


def entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats from log-probabilities over the last dim: -sum(p log p), finite even where
    p underflows to 0 (log p stays finite, p log p -> 0). Differentiable."""
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def entropy_bits_from_probs(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of distributions given as probabilities (..., V); a zero probability adds 0."""
    return entropy_from_log_probs(probs.clamp_min(1e-30).log()) * NATS_TO_BITS


def entropy_bits(p: np.ndarray) -> np.ndarray:
    """Entropy in bits along the last axis of numpy distributions (0 log 0 = 0), never negative."""
    positive = p > 0
    terms = np.where(positive, p * np.log2(np.where(positive, p, 1.0)), 0.0)
    return np.clip(-terms.sum(axis=-1), 0.0, None) + 0.0  # + 0.0 turns -0.0 into 0.0


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 4096, temperature: float = 1.0) -> torch.Tensor:
    """Entropy in nats of softmax(logits / temperature) over the last dim; shape logits.shape[:-1].

    Like TRL's `entropy_from_logits`: the leading dims are flattened and processed `chunk_size`
    rows at a time in float32, so the softmax temporaries of a huge batch stay bounded (under
    no_grad; with autograd each chunk's graph is kept, as the backward needs it). Differentiable.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    chunks = []
    for chunk in flat.split(chunk_size, dim=0):
        z = chunk.float() / temperature if temperature != 1.0 else chunk.float()
        chunks.append(entropy_from_log_probs(F.log_softmax(z, dim=-1)))
    if not chunks:  # no rows at all
        return flat.new_zeros(logits.shape[:-1], dtype=torch.float32)
    entropy = chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # one chunk: no copy
    return entropy.reshape(logits.shape[:-1])

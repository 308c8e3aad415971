"""Choosing the torch device: `auto` takes cuda, then mps, then cpu."""

import torch

from language_entropy.errors import UserError


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """The device named in params (`auto`, `cpu`, `cuda`, `mps`); a named device that is missing is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device is 'mps' but MPS is not available")
    return torch.device(name)

"""Token tensors for the model: texts as right-padded id batches with the masks the losses need, and the
abacus place value of every token. (`tokenizer` is the vocabulary and plain strings, without torch, so the
data stage never loads it.)"""

from __future__ import annotations

import torch

from language_entropy import tokenizer


def encode_batch(texts: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tokens (BOS + text, right-padded) and the masks the losses need.

    tokens: (B, T); answer_mask: (B, T-1) targets after '=' (answer digits, sign and EOS);
    valid_mask: (B, T-1) input positions that are not padding.
    """
    encoded = [[tokenizer.BOS_ID, *tokenizer.encode(text)] for text in texts]
    width = max(len(ids) for ids in encoded)
    tokens = torch.full((len(encoded), width), tokenizer.PAD_ID, dtype=torch.long)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids)
    return batch_from_tokens(tokens.to(device))


def batch_from_tokens(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The masks the losses need, for right-padded tokens (B, T)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    return {"tokens": tokens, "answer_mask": from_equals(inputs) & (targets != tokenizer.PAD_ID),
            "valid_mask": inputs != tokenizer.PAD_ID}


def is_digit(ids: torch.Tensor) -> torch.Tensor:
    return (ids >= tokenizer.DIGIT_IDS.start) & (ids < tokenizer.DIGIT_IDS.stop)


def from_equals(ids: torch.Tensor) -> torch.Tensor:
    """True at '=' and every token after it: the answer side of each row (B, T) -> (B, T) bool."""
    return torch.cumsum(ids == tokenizer.EQUALS_ID, dim=1) > 0


def place_value_positions(ids: torch.Tensor) -> torch.Tensor:
    """Abacus position of every token (McLeish et al. 2024), 0 for non-digits.

    In an operand (before '=') a digit's index counts from the operand's last digit (units = 1),
    so digits of equal place value share an index. In the answer (after '=') it counts from the
    answer's first emitted digit, the only order a causal model can know while generating; with
    reversed answers that is again the units digit. ids: (B, T) -> (B, T) long.
    """
    digit = is_digit(ids)
    return torch.where(from_equals(ids), _run_index(digit), _run_index(digit.flip(1)).flip(1)) * digit


def emits_first_answer_digit(ids: torch.Tensor) -> torch.Tensor:
    """True at the answer's tokens before its first digit: '=' and a leading '-' (B, T) -> (B, T) bool.

    The last of them is the query that predicts the first answer digit (the units, when reversed).
    """
    answer = from_equals(ids)
    answer_digits_so_far = torch.cumsum(is_digit(ids) & answer, dim=1)
    return answer & (answer_digits_so_far == 0)


def _run_index(mask: torch.Tensor) -> torch.Tensor:
    """1, 2, 3 ... along each run of True in `mask` (B, T), 0 elsewhere."""
    count = torch.cumsum(mask.long(), dim=1)
    count_at_breaks = torch.where(mask, torch.zeros_like(count), count)
    return count - torch.cummax(count_at_breaks, dim=1).values

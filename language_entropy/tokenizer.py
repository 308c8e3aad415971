"""A fixed character vocabulary: one token per character, special tokens included.

Special tokens have printable characters so that a whole training sequence is a plain string:
``^`` begins a sequence, ``$`` ends it and ``_`` pads, e.g. ``^123+45=861$`` (answer reversed).
"""

from __future__ import annotations

PAD, BOS, EOS = "_", "^", "$"
DIGITS = "0123456789"
OPERATOR_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
EQUALS = "="
VOCAB = PAD + BOS + EOS + DIGITS + "+-*/" + EQUALS
STOI = {ch: i for i, ch in enumerate(VOCAB)}

VOCAB_SIZE = len(VOCAB)
PAD_ID, BOS_ID, EOS_ID, EQUALS_ID = STOI[PAD], STOI[BOS], STOI[EOS], STOI[EQUALS]
DIGIT_IDS = range(STOI["0"], STOI["9"] + 1)  # contiguous, so "is a digit" is one range check


def encode(text: str) -> list[int]:
    """Token ids of `text`; an unknown character raises ValueError naming it and its position."""
    try:
        return [STOI[ch] for ch in text]
    except KeyError:
        position = next(i for i, ch in enumerate(text) if ch not in STOI)
        raise ValueError(f"unknown character {text[position]!r} at position {position} in {text!r}") from None


def decode(ids) -> str:
    """The text of token ids (any iterable of ints, or a 1-D tensor or array)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    try:
        return "".join(VOCAB[i] for i in ids)
    except IndexError:
        bad = next(i for i in ids if not 0 <= i < VOCAB_SIZE)
        raise ValueError(f"token id {bad} is outside the vocabulary (0..{VOCAB_SIZE - 1})") from None


def emitted_answer(ids) -> str:
    """The generated answer text in emitted order: everything before EOS (or padding)."""
    return decode(ids).split(EOS)[0].split(PAD)[0]

"""Measuring a model on problem texts: teacher-forced token statistics and generated answers.

Shared by training (validation on `training.validation_due`'s schedule), evaluation and visualization, so
none of them imports another: this module knows the model, the data format and entropy, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from language_entropy import tokenizer
from language_entropy.batches import encode_batch
from language_entropy.data import prompt_of
from language_entropy.entropy import NATS_TO_BITS, entropy_bits_from_probs, entropy_from_logits
from language_entropy.generation import generate_batches
from language_entropy.losses import continuity_distance, continuity_pair_mask, select_hidden
from language_entropy.model import ArithmeticDecoder


@dataclass(frozen=True)
class TeacherForcedStats:
    tokens: pd.DataFrame  # one row per answer token: row, step, nll_nats, entropy_bits, confidence, correct

    @property
    def ce_nats(self) -> float:
        return float(self.tokens["nll_nats"].mean())

    @property
    def entropy_bits_by_step(self) -> list[float]:
        return self.tokens.groupby("step")["entropy_bits"].mean().tolist()


@torch.no_grad()
def teacher_forced_stats(model: ArithmeticDecoder, texts: list[str], device: torch.device,
                         batch_size: int = 512) -> TeacherForcedStats:
    """Per answer token (digits, sign and EOS): NLL, entropy, top-1 probability and whether top-1 is right."""
    model.eval()
    frames = []
    for start in range(0, len(texts), batch_size):
        batch = encode_batch(texts[start: start + batch_size], device)
        tokens, mask = batch["tokens"], batch["answer_mask"]
        logits = model(tokens[:, :-1]).float()  # (B, T-1, V)
        targets = tokens[:, 1:]
        log_probs = torch.log_softmax(logits, dim=-1)
        nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        confidence, top1 = log_probs.exp().max(dim=-1)
        step = torch.cumsum(mask.long(), dim=1) - 1  # index of each answer token within its answer
        rows = torch.arange(start, start + len(tokens), device=device).unsqueeze(1).expand_as(mask)
        entropy_bits = entropy_from_logits(logits) * NATS_TO_BITS
        columns = {"row": rows, "step": step, "nll_nats": nll, "entropy_bits": entropy_bits,
                   "confidence": confidence, "correct": top1 == targets}
        frames.append(pd.DataFrame({name: values[mask].cpu().numpy() for name, values in columns.items()}))
    return TeacherForcedStats(pd.concat(frames, ignore_index=True))


@torch.no_grad()
def continuity_stats(model: ArithmeticDecoder, texts: list[str], device: torch.device,
                     continuity_on: str | int = "final", positions: str = "answer",
                     batch_size: int = 512) -> dict[str, float]:
    """The representation the continuity loss acts on, measured under teacher forcing.

    The representation is `losses.select_hidden(hidden, continuity_on)`, the pairs those of
    `losses.continuity_pair_mask(..., positions)`, exactly as training's loss sees them (but in
    eval mode). Returns ``hidden_norm``: the mean l2 norm ||h_t|| over the positions in at least
    one counted pair; ``continuity_l2`` and ``continuity_cosine``: the mean `continuity_distance`
    of each metric over the counted pairs. Plain means over all `texts` (no process group), so
    rank 0 can call it alone.
    """
    model.eval()
    norm_sum = l2_sum = cosine_sum = 0.0
    n_positions = n_pairs = 0
    for start in range(0, len(texts), batch_size):
        batch = encode_batch(texts[start: start + batch_size], device)
        tokens = batch["tokens"]
        _, hidden = model(tokens[:, :-1], return_hidden=True)
        states = select_hidden(hidden, continuity_on).float()  # (B, T-1, C)
        pairs = continuity_pair_mask(batch["answer_mask"], batch["valid_mask"], tokens[:, 1:], positions)  # (B, T-2)
        member = torch.zeros_like(batch["answer_mask"])  # (B, T-1): positions in a counted pair
        member[:, :-1] |= pairs
        member[:, 1:] |= pairs
        norm_sum += float(states.norm(dim=-1)[member].sum())
        l2_sum += float(continuity_distance(states, "l2")[pairs].sum())
        cosine_sum += float(continuity_distance(states, "cosine")[pairs].sum())
        n_positions += int(member.sum())
        n_pairs += int(pairs.sum())
    if n_pairs == 0:
        raise ValueError("continuity_stats needs at least one pair of counted positions")
    return {"hidden_norm": norm_sum / n_positions, "continuity_l2": l2_sum / n_pairs,
            "continuity_cosine": cosine_sum / n_pairs}


def expected_answers(texts: list[str]) -> list[str]:
    """The answer part of each text as the model emits it (after '=', without EOS)."""
    return [text[len(prompt_of(text)):].removesuffix(tokenizer.EOS) for text in texts]


def generation_prompts(texts: list[str]) -> tuple[list[list[int]], int]:
    """Prompt ids (BOS + up to '=') and a generation budget: the longest expected answer, EOS, one spare."""
    prompts = [[tokenizer.BOS_ID, *tokenizer.encode(prompt_of(text))] for text in texts]
    return prompts, max(len(answer) for answer in expected_answers(texts)) + 2


def greedy_right(model: ArithmeticDecoder, texts: list[str], batch_size: int = 512) -> np.ndarray:
    """Whether the greedy answer to each problem is exactly right, (N,) bool."""
    answers = sample_sequences(model, texts, batch_size)["answer"].to_numpy()
    return np.equal(answers, np.asarray(expected_answers(texts)))


def greedy_exact_match(model: ArithmeticDecoder, texts: list[str], batch_size: int = 512) -> float:
    return float(greedy_right(model, texts, batch_size).mean())


@torch.no_grad()
def sample_sequences(model: ArithmeticDecoder, texts: list[str], batch_size: int, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, repeats: int = 1,
                     generator: torch.Generator | None = None) -> pd.DataFrame:
    """Generate `repeats` answers per problem; one row per sequence with its score.

    Columns: problem (index into `texts`), answer (as emitted), logprob (nats, of the emitted tokens
    incl. EOS under softmax(logits / temperature), the model's own distribution when greedy, before
    any top-k/top-p filtering), length (tokens incl. EOS), eos_logprob (nats, the EOS's share of
    logprob; 0 where the sequence ran out of budget without one), ended (whether it ended with an EOS),
    mean_entropy_bits (mean over the emitted tokens of the entropy of that same distribution).
    """
    model.eval()
    problems = np.repeat(np.arange(len(texts)), repeats)
    prompts, budget = generation_prompts(texts)
    answers = np.empty(len(problems), dtype=object)
    logprob, eos_logprob, mean_entropy = (np.zeros(len(problems), dtype=np.float32) for _ in range(3))
    length = np.zeros(len(problems), dtype=np.int64)
    ended = np.zeros(len(problems), dtype=bool)
    # one batch of probabilities at a time (N x steps x vocab for every sequence would be unbounded)
    for rows, out in generate_batches(model, [prompts[i] for i in problems], batch_size, max_new_tokens=budget,
                                      temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                                      return_probs=True):
        emitted = out.tokens != tokenizer.PAD_ID  # (B, S): PAD after EOS
        chosen = out.probs.gather(-1, out.tokens.unsqueeze(-1)).squeeze(-1).clamp_min(1e-30)
        entropy = entropy_bits_from_probs(out.probs)  # (B, S)
        lengths = emitted.sum(1)
        index = rows.numpy()
        answers[index] = [tokenizer.emitted_answer(row) for row in out.tokens]
        logprob[index] = (chosen.log() * emitted).sum(1).numpy()
        eos = out.tokens == tokenizer.EOS_ID  # (B, S): at most one per row, PAD follows it
        eos_logprob[index] = (chosen.log() * eos).sum(1).numpy()
        ended[index] = eos.any(1).numpy()
        length[index] = lengths.numpy()
        mean_entropy[index] = ((entropy * emitted).sum(1) / lengths.clamp_min(1)).numpy()
    return pd.DataFrame({"problem": problems, "answer": answers.tolist(), "logprob": logprob, "length": length,
                         "eos_logprob": eos_logprob, "ended": ended, "mean_entropy_bits": mean_entropy})

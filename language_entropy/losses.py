"""Every training loss, outside `model.forward`, shared by training and evaluation.

One rule normalises every per-token mean (CE, entropy, continuity): `masked_mean` divides the
local sum by the token count summed over all ranks. Answers differ in length, so ranks hold
different token counts, and a per-rank mean would weigh a short-answer rank's tokens more. DDP
averages gradients over ranks, so the value for backward is multiplied by world_size: then 2 ranks
give exactly the gradient of 1 process on their concatenated batch. That backward value is what
`LossTerms` holds; `LossTerms.logged()` averages it over ranks, which is the true global mean
(sum_r local_sum_r / count * W / W). With no process group both are the plain mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from language_entropy.entropy import entropy_from_log_probs, entropy_from_logits, to_bits
from language_entropy.errors import UserError
from language_entropy.params import LossConfig, RLConfig
from language_entropy.tokenizer import PAD_ID

# ----------------------------------------------------------------------------------------------
# Normalisation across ranks


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def global_counts(*masks: torch.Tensor) -> list[torch.Tensor]:
    """The number of True entries of each mask summed over all ranks: one all_reduce for all."""
    counts = torch.stack([mask.sum(dtype=torch.float32) for mask in masks])  # (M,)
    if _distributed():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return list(counts.unbind())


def masked_mean(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | None = None) -> torch.Tensor:
    """local sum of `values` over `mask` / global count * world_size: the value for backward.

    `count` is the global count when the caller already has it (`global_counts`). No process
    group: the plain mean over `mask`. No token anywhere: 0 (still connected to the graph).
    """
    if count is None:
        (count,) = global_counts(mask)
    local_sum = torch.where(mask, values, 0.0).sum()  # where, not a product: a NaN off the mask stays out
    mean = local_sum / count.clamp_min(1.0)
    return mean * world_size() if _distributed() else mean  # few ops: a step is launch-bound on a GPU


def global_average(values: torch.Tensor) -> torch.Tensor:
    """Average a (detached) tensor over ranks: turns backward values into reported global means."""
    values = values.detach().clone()
    if _distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


# ----------------------------------------------------------------------------------------------
# The losses




def continuity_pair_mask(answer_mask: torch.Tensor, valid_mask: torch.Tensor, targets: torch.Tensor,
                         positions: str) -> torch.Tensor:
    """Which adjacent position pairs (t, t+1) of the (B, T) model positions count: (B, T-1).

    A position counts when it predicts a real token (its target is not PAD), so the EOS input
    position, whose target is padding and which generation never computes, is always left out.
    Judging by the input alone would count it for every row but the widest of the batch (whose EOS
    is never an input), making the loss depend on how a batch was padded or split across ranks.
    "answer": both positions predict an answer token (the '=' through the last answer digit: the
    states generation visits). "all": both predict any token.
    """
    if positions == "answer":
        position = answer_mask
    elif positions == "all":
        position = valid_mask & (targets != PAD_ID)
    else:
        raise ValueError(f"continuity positions must be 'answer' or 'all' (got {positions!r})")
    return position[:, :-1] & position[:, 1:]


def continuity_distance(hidden: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Distance between adjacent hidden states (B, T, C): (B, T-1), pair (t, t+1) at index t.

    "l2": sqrt(sum((h_t - h_{t+1})**2) + 1e-8) (the original design; the 1e-8 keeps the gradient
    finite at equal states). "cosine": 1 - cos(h_t, h_{t+1}). The l2 distance scales with the
    norm of the states, the cosine one does not: read an l2 value beside the states' norm.
    """
    a, b = hidden[:, :-1].float(), hidden[:, 1:].float()  # (B, T-1, C)
    if metric == "l2":
        return torch.sqrt(((a - b) ** 2).sum(dim=-1) + 1e-8)
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    raise ValueError(f"continuity metric must be 'l2' or 'cosine' (got {metric!r})")


def continuity_loss(hidden: torch.Tensor, pair_mask: torch.Tensor, metric: str = "l2",
                    count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean `continuity_distance` of the hidden states (B, T, C) over `pair_mask` (B, T-1)."""
    return masked_mean(continuity_distance(hidden, metric), pair_mask, count)  # (B, T-1) -> ()


def select_hidden(hidden: list[torch.Tensor], continuity_on: str | int) -> torch.Tensor:
    """hidden[0] for "embedding", hidden[-1] (last block, before the final norm) for "final", else hidden[i]."""
    if continuity_on == "embedding":
        return hidden[0]
    if continuity_on == "final":
        return hidden[-1]
    if not 0 <= continuity_on < len(hidden):
        raise UserError(f"loss.continuity_on must be a layer index <= model.n_layer ({len(hidden) - 1}) "
                        f"(got {continuity_on})")
    return hidden[continuity_on]




def _quantile_threshold(values: torch.Tensor, valid: torch.Tensor, quantile: float) -> torch.Tensor:
    """A threshold t such that ``values >= t`` picks exactly the valid values at or above
    torch.quantile(values[valid], quantile) (linear interpolation), float rounding of the
    interpolation aside. The interpolated quantile lies in (s[floor r], s[ceil r]] of the sorted
    valid values s at rank r = quantile * (n - 1) (or equals s[r] when r is whole), so s[ceil r]
    selects the same values and needs no interpolation. The count n stays a device tensor: no
    host sync (boolean indexing would wait for the GPU). 1-D inputs; no valid value gives inf."""
    ordered = torch.sort(torch.where(valid, values, math.inf)).values  # invalid entries sort last
    rank = (valid.sum(dtype=torch.float32) - 1.0).clamp_min(0.0) * quantile
    return ordered.gather(0, rank.ceil().long().view(1))  # (1,); gather, as a 0-d tensor index would sync


def high_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """Tokens whose entropy is at or above the `quantile` of the valid tokens of all ranks (B, T) bool.

    As TRL GRPO's `get_high_entropy_mask`: under torch.distributed each rank's valid entropies are
    padded to the longest rank's count with a sentinel (NaN here), all-gathered, the sentinels
    dropped, and one threshold taken over the lot, so every rank uses the same threshold.
    """
    entropies = entropies.detach().float()
    if not _distributed():  # one process: the mask itself says which values count (fewer kernels in a step)
        values, valid = entropies.flatten(), mask.flatten()
    else:
        values = torch.where(mask, entropies, math.nan).flatten()  # NaN = not a token
        sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([values.numel()], device=values.device))
        longest = int(torch.cat(sizes).max())
        padded = torch.full((longest,), math.nan, device=values.device)
        padded[:values.numel()] = values
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        values = torch.cat(gathered)
        valid = ~values.isnan()
    if values.numel() == 0:
        return torch.zeros_like(mask)
    threshold = _quantile_threshold(values, valid, quantile)  # no valid token: inf, nothing high
    return (entropies >= threshold) & mask


# ----------------------------------------------------------------------------------------------
# The adaptive entropy coefficient


class AdaptiveEntropyCoefficient(nn.Module):
    """SAC-style learned entropy bonus: coefficient = -exp(log_alpha), trained by its own optimizer.

    Its loss log_alpha * (mean_entropy_bits - target) raises alpha (a larger bonus) while the
    entropy is below the target and lowers it above. Pass the *global* mean answer entropy in bits
    (``terms.logged()["entropy_bits"]``): identical on every rank, so log_alpha stays in sync
    without DDP. Keep it out of the model's optimizer; `configure_optimizer()` gives its own Adam
    (lr loss.entropy_coef_lr). `state_dict()` (log_alpha) is weights_only-safe, as is the
    optimizer's. `config` is the supervised loss's section or RL's (`rl.entropy_target`, `rl.entropy_coef_init`,
    `rl.entropy_coef_lr`: the same keys), whose entropy is that of the sampled answers' tokens.
    """

    def __init__(self, config: LossConfig | RLConfig):
        super().__init__()
        if config.entropy_target is None:
            raise ValueError("AdaptiveEntropyCoefficient needs loss.entropy_target")
        self.target = float(config.entropy_target)
        self.lr = config.entropy_coef_lr
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.entropy_coef_init)))

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def coefficient(self) -> torch.Tensor:
        """-exp(log_alpha), detached: the model's loss must not train alpha."""
        return -self.log_alpha.detach().exp()

    def loss(self, mean_entropy_bits) -> torch.Tensor:
        entropy = torch.as_tensor(mean_entropy_bits, dtype=torch.float32, device=self.log_alpha.device)
        return self.log_alpha * (entropy.detach() - self.target)


def entropy_coefficient(config: LossConfig | RLConfig, adaptive: AdaptiveEntropyCoefficient | None = None):
    """The coefficient of the entropy term (`compute_losses`, the RL objective): the adaptive one when there is
    one, else the section's entropy_weight."""
    return adaptive.coefficient() if adaptive is not None else config.entropy_weight


# ----------------------------------------------------------------------------------------------
# All terms together


@dataclass
class LossTerms:
    """Backward values (local sum / global count * world_size); `logged()` gives global means.

    `continuity` is None when its weight is 0 and `entropy` is None when the entropy coefficient is
    0: those terms were not computed at all.
    """

    total: torch.Tensor
    ce: torch.Tensor
    continuity: torch.Tensor | None
    entropy: torch.Tensor | None  # mean answer-token entropy, nats (at loss.entropy_temperature)
    entropy_coef: float | torch.Tensor  # a float, or the adaptive coefficient's detached tensor
    ce_tokens: torch.Tensor  # global number of tokens in the CE (fewer than answer tokens under entropy_mask)

    def as_vector(self) -> torch.Tensor:
        """This rank's values of `VECTOR_TERMS` as one detached float32 tensor (6,) on the loss's device,
        made without a host sync (a CUDA graph can capture it; a training loop keeps a window of them
        and reads them all at once). Backward values: `logged_terms` turns them into global means."""
        device = self.ce.device

        def scalar(value) -> torch.Tensor:
            if value is None:  # a term that is off
                return torch.zeros((), device=device)
            if isinstance(value, torch.Tensor):
                return value.detach().float().reshape(())
            return torch.full((), float(value), device=device)  # a fill, not a host-to-device copy

        return torch.stack([scalar(getattr(self, name)) for name in VECTOR_TERMS])

    def logged(self) -> dict[str, float]:
        """The true global means as floats (`logged_terms`). Under torch.distributed this is one
        all_reduce, so every rank must call it at the same step."""
        return logged_terms(global_average(self.as_vector()).tolist())


VECTOR_TERMS = ("total", "ce", "continuity", "entropy", "entropy_coef", "ce_tokens")


def logged_terms(values: list[float]) -> dict[str, float]:
    """`LossTerms.as_vector()` averaged over ranks, as named floats: loss, ce_loss, continuity_loss,
    entropy_loss (nats), entropy_bits, entropy_coef, ce_tokens. A term that is off logs 0.0."""
    total, ce, continuity, entropy, coefficient, ce_tokens = values
    return {"loss": total, "ce_loss": ce, "continuity_loss": continuity, "entropy_loss": entropy,
            "entropy_bits": to_bits(entropy), "entropy_coef": coefficient, "ce_tokens": ce_tokens}


def _is_on(coefficient) -> bool:
    return isinstance(coefficient, torch.Tensor) or coefficient != 0


def compute_losses(logits: torch.Tensor, hidden: list[torch.Tensor] | None, targets: torch.Tensor,
                   answer_mask: torch.Tensor, valid_mask: torch.Tensor, config: LossConfig,
                   entropy_coef: float | torch.Tensor) -> LossTerms:
    """total = ce + continuity_weight * continuity + entropy_coef * entropy, each term also returned.

    ce is the cross-entropy, label-smoothed when loss.label_smoothing = eps > 0: per token
    (1 - eps) * nll + eps * mean over the vocabulary of -log p (the smoothed value is what `ce`
    and the logged ce_loss hold).

    logits (B, T, V) and hidden (the model's `return_hidden` list; None when continuity is off)
    come from one forward pass; targets, answer_mask, valid_mask (B, T). A fixed coefficient is
    loss.entropy_weight (> 0 penalises entropy, < 0 rewards it); the adaptive one comes from
    `AdaptiveEntropyCoefficient.coefficient()`. A term whose weight is 0 is never computed.
    """
    entropy_on = _is_on(entropy_coef)
    continuity_on = config.continuity_weight > 0

    # One log_softmax serves the CE, the entropy at temperature 1 and the entropy mask: on a GPU a
    # step of this small model is bound by kernel launches, so every op saved shows. Its memory is
    # the CE's own; the chunked `entropy_from_logits` is used only at another temperature.
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    token_entropy = None
    if entropy_on:
        if config.entropy_temperature == 1.0:
            token_entropy = entropy_from_log_probs(log_probs)  # (B, T)
        else:
            token_entropy = entropy_from_logits(logits, config.entropy_chunk_size, config.entropy_temperature)

    ce_mask = answer_mask
    if config.entropy_mask != "none":
        # which tokens are uncertain is judged on the model's own distribution (temperature 1)
        if token_entropy is not None and config.entropy_temperature == 1.0:
            plain_entropy = token_entropy.detach()
        else:
            with torch.no_grad():
                plain_entropy = entropy_from_log_probs(log_probs.detach())
        high = high_entropy_mask(plain_entropy, answer_mask, config.entropy_mask_quantile)
        ce_mask = answer_mask & ~high if config.entropy_mask == "drop_high" else high

    masks = [ce_mask]
    if entropy_on:
        masks.append(answer_mask)
    if continuity_on:
        if hidden is None:
            raise ValueError("continuity loss needs the hidden states: call the model with return_hidden=True")
        pair_mask = continuity_pair_mask(answer_mask, valid_mask, targets, config.continuity_positions)
        masks.append(pair_mask)
    counts = global_counts(*masks)  # one all_reduce for every term

    token_ce = F.nll_loss(log_probs.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    if config.label_smoothing > 0:  # eps = 0 keeps the plain path above, bit for bit
        eps = config.label_smoothing  # as F.cross_entropy(label_smoothing=eps): target (1 - eps) one-hot + eps uniform
        token_ce = (1.0 - eps) * token_ce - eps * log_probs.mean(dim=-1)
    ce = masked_mean(token_ce, ce_mask, counts[0])
    total = ce
    entropy = continuity = None
    if entropy_on:
        entropy = masked_mean(token_entropy, answer_mask, counts[1])
        total = total + entropy_coef * entropy
    if continuity_on:
        continuity = continuity_loss(select_hidden(hidden, config.continuity_on), pair_mask,
                                     config.continuity_metric, counts[-1])
        total = total + config.continuity_weight * continuity
    return LossTerms(total=total, ce=ce, continuity=continuity, entropy=entropy,
                     entropy_coef=entropy_coef, ce_tokens=counts[0])

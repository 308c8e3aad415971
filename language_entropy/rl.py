"""Policy-gradient fine-tuning with a verifiable reward: rollouts, rewards, advantages, the clipped objective and
the entropy controls of RL on language models, as components (no files, no MLflow, no signals).

One step (`FineTuner.train_step`): draw P prompts, sample G answers to each with the KV-cache generator at
`rl.temperature`, reward each answer (`answer_rewards`), take group-relative advantages
(`group_advantages`), and update the policy on the PPO-clipped objective (`clipped_objective`) aggregated as
TRL's `loss_type` (`aggregate`), `rl.ppo_epochs` passes of `rl.minibatches` updates each. The policy is the
model in eval mode (no dropout, no abacus offsets: exactly the distribution generation samples from) at the
sampling temperature, with PAD and BOS never generated (`policy_scores`).

Per token i of the sampled answers (advantage A_i is its answer's, r_i = pi(y_i) / pi_old(y_i)):
    pg_i   = -min(r_i A_i, clip(r_i, 1 - clip_low, 1 + clip_high) A_i)              (DAPO's clip-higher)
             (KL-Cov, as verl's compute_policy_loss_kl_cov: the unclipped -r_i A_i instead, no PPO clip)
    loss_i = pg_i * keep_i [token mask] + kl_coef * k3_i [KL to the reference]
             (+ Clip-Cov: pg_i detached on picked tokens where the clip does not bind;
              KL-Cov: + kl_cov_coef |log r_i| on picked tokens)
    loss   = aggregate(loss_i) + entropy_coef * mean H_i over the tokens the token mask keeps (every token with
             rl.entropy_tokens: all) + replay_weight * CE(replay batch)
entropy_coef follows `loss.entropy_weight`'s sign convention (> 0 penalises entropy, < 0 is a bonus), or is the
adaptive SAC-style bonus of `losses.AdaptiveEntropyCoefficient`. The replay term is the supervised cross-entropy
of the answers of `rl.replay_batch_size` problems of the train split (the lengths the model was trained on, where
the policy gradient has no signal: every sampled answer is right). docs/rl.md has every formula and its source.

Shapes: N = P * G sampled answers, S = the generation budget (answer steps), T0 the prompt length, V vocab.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from language_entropy import tokenizer
from language_entropy.batches import batch_from_tokens, encode_batch
from language_entropy.entropy import entropy_from_log_probs, to_bits
from language_entropy.errors import UserError
from language_entropy.generation import generate_batches
from language_entropy.losses import AdaptiveEntropyCoefficient, entropy_coefficient, high_entropy_mask
from language_entropy.measure import expected_answers, generation_prompts, greedy_exact_match
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import RLConfig
from language_entropy.training import BatchSampler, seeded_generator

NEVER_LOGIT = -1e9  # PAD and BOS in the policy's logits: exp underflows to exactly 0 and 0 * log p stays finite

# ----------------------------------------------------------------------------------------------
# Rewards


def answer_targets(texts: list[str], width: int) -> torch.Tensor:
    """The tokens a right answer emits, EOS included, PAD after: (N, width)."""
    targets = torch.full((len(texts), width), tokenizer.PAD_ID, dtype=torch.long)
    for row, answer in enumerate(expected_answers(texts)):
        ids = tokenizer.encode(answer + tokenizer.EOS)[:width]
        targets[row, :len(ids)] = torch.tensor(ids)
    return targets


def ended_at_eos(completions: torch.Tensor) -> torch.Tensor:
    """The completions (N, S) with every token after the first EOS set to PAD: an answer ends at its EOS
    (generation stops a row there; anything after is not part of it)."""
    after = (torch.cumsum(completions == tokenizer.EOS_ID, dim=1) - (completions == tokenizer.EOS_ID).long()) > 0
    return completions.masked_fill(after, tokenizer.PAD_ID)


def answer_rewards(completions: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Reward of each sampled answer (N,) float32, from its tokens (N, S) and the right answer's (N, S').

    "exact": 1 when the answer up to its first EOS is exactly the right digits (and sign) followed by EOS,
    else 0 (a wrong digit, a missing EOS, a PAD inside the answer, a token too many or too few).
    "digits": partial credit, the positions k where the answer's token equals the right one (EOS counts as a
    position) divided by the longer of the two lengths (each up to and including its EOS; without an EOS, up
    to its last token), so a longer or shorter answer loses credit and only the exact answer scores 1.
    """
    width = max(completions.shape[1], targets.shape[1])
    answer = F.pad(ended_at_eos(completions), (0, width - completions.shape[1]), value=tokenizer.PAD_ID)
    right = F.pad(targets, (0, width - targets.shape[1]), value=tokenizer.PAD_ID)
    if kind == "exact":
        return (answer == right).all(dim=1).float()
    if kind != "digits":
        raise ValueError(f"reward must be 'exact' or 'digits' (got {kind!r})")
    positions = torch.arange(1, width + 1)  # (W,) length up to and including each position
    answer_length = torch.where(answer != tokenizer.PAD_ID, positions, 0).amax(dim=1)  # PAD inside still counts
    right_length = (right != tokenizer.PAD_ID).sum(dim=1)
    matches = ((answer == right) & (right != tokenizer.PAD_ID)).sum(dim=1)
    return matches.float() / torch.maximum(answer_length, right_length).clamp_min(1).float()


# ----------------------------------------------------------------------------------------------
# Advantages, the clipped objective, the aggregations, the KL estimate


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool, eps: float = 1e-4) -> torch.Tensor:
    """Reward minus its group's mean (N,) for rewards (N,) in groups of `group_size` consecutive answers;
    with `scale` divided by the group's standard deviation (unbiased, + eps, as TRL's GRPO)."""
    groups = rewards.view(-1, group_size)  # (P, G)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    return advantages.flatten()


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                      clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token with separate ranges: -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A),
    r = exp(logp - old_logp). logp, old_logp (N, S), advantages (N,). Returns the loss per token (N, S) and
    where the clip binds (the clipped term is the smaller one, so its gradient is zero) (N, S) bool."""
    ratio = torch.exp(logp - old_logp)
    advantage = advantages[:, None]  # (N, 1)
    plain = ratio * advantage
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantage
    return -torch.minimum(plain, clipped), clipped < plain


def unclipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """The plain importance-weighted surrogate per token, -r A with r = exp(logp - old_logp): KL-Cov's objective
    (Cui et al. 2025, verl's compute_policy_loss_kl_cov), which has no PPO clip. Shapes as `clipped_objective`."""
    return -torch.exp(logp - old_logp) * advantages[:, None]


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, max_length: int) -> torch.Tensor:
    """One number from per-token values (N, S) over `mask`, as TRL's `loss_type`:
    grpo: each answer's token mean, then the mean over answers (a short answer's tokens weigh more);
    dapo: the sum over every token / the number of tokens (each token weighs the same);
    dr_grpo: the sum over every token / (answers x max_length), a constant (Liu et al. 2025: no length bias)."""
    masked = torch.where(mask, token_loss, 0.0)
    if loss_type == "grpo":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp_min(1)).mean()
    if loss_type == "dapo":
        return masked.sum() / mask.sum().clamp_min(1)
    if loss_type == "dr_grpo":
        return masked.sum() / (mask.shape[0] * max_length)
    raise ValueError(f"loss_type must be one of grpo, dapo, dr_grpo (got {loss_type!r})")


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(pi || ref) per sampled token: exp(ref - logp) - (ref - logp) - 1 >= 0,
    unbiased (its mean under pi is the KL) and never negative."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


# ----------------------------------------------------------------------------------------------
# The entropy controls: token masks by entropy, Clip-Cov and KL-Cov


def entropy_token_mask(entropy: torch.Tensor, mask: torch.Tensor, kind: str, quantile: float) -> torch.Tensor:
    """The tokens (N, S) bool the policy gradient keeps. "top_entropy": those at or above the (1 - quantile)
    quantile of the entropies over `mask` (Wang et al. 2025; TRL's top_entropy_quantile: 0.2 keeps the top
    20%, more when entropies tie at the threshold); "bottom_entropy": the other tokens of `mask`; "none": mask."""
    if kind == "none":
        return mask
    high = high_entropy_mask(entropy, mask, 1.0 - quantile)
    if kind == "top_entropy":
        return high
    if kind == "bottom_entropy":
        return mask & ~high
    raise ValueError(f"token_mask must be one of none, top_entropy, bottom_entropy (got {kind!r})")


def token_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cui et al. 2025's per-token covariance term (N, S): (log pi(y_i) - mean log pi) (A_i - mean A), both means
    over the tokens of `mask` (the batch); 0 off the mask. Its mean over the mask is the batch covariance of
    log-probability and advantage, which drives the entropy change of a policy-gradient step (dH ~ -Cov)."""
    logp = logp.detach()
    advantage = advantages[:, None].expand_as(logp)  # (N, S): an answer's advantage on each of its tokens
    centred = (logp - masked_mean(logp, mask)) * (advantage - masked_mean(advantage, mask))
    return torch.where(mask, centred, 0.0)


def pick_count(ratio: float, tokens: int) -> int:
    """floor(ratio x tokens), at least 1 while there is a token: the paper's r x N, and the authors' code keeps one
    token when that rounds to 0, so a ratio set for long answers is not silently off on short ones."""
    return max(int(ratio * tokens), 1) if tokens else 0


def clip_cov_tokens(covariance: torch.Tensor, mask: torch.Tensor, clipped: torch.Tensor, ratio: float, low: float,
                    high: float, generator: torch.Generator) -> torch.Tensor:
    """Clip-Cov's tokens (N, S) bool: pick_count(ratio, tokens of `mask`) drawn uniformly without replacement among
    the tokens of `mask` where the PPO clip does not bind (`clipped` False: a clipped token's gradient is already
    zero) and whose covariance lies strictly inside (low, high); all of them when fewer. As verl's
    compute_policy_loss_clip_cov (its cov_all set to -inf where clip_by_origin, then low < cov < high)."""
    band = mask & ~clipped & (covariance > low) & (covariance < high)
    candidates = torch.nonzero(band.flatten()).flatten().cpu()  # (K,)
    count = min(pick_count(ratio, int(mask.sum())), len(candidates))
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
    picked = torch.zeros(band.numel(), dtype=torch.bool)
    picked[chosen] = True
    return picked.view_as(band).to(mask.device)


def kl_cov_tokens(covariance: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """KL-Cov's tokens (N, S) bool: the pick_count(ratio, tokens) tokens of `mask` with the largest covariance
    (ties broken by position, first first)."""
    count = pick_count(ratio, int(mask.sum()))
    ranked = torch.where(mask, covariance, -math.inf).flatten()
    order = torch.sort(ranked, descending=True, stable=True).indices[:count]
    picked = torch.zeros_like(ranked, dtype=torch.bool)
    picked[order] = True
    return picked.view_as(mask)


# ----------------------------------------------------------------------------------------------
# Rollouts and the policy's scores


@dataclass
class Rollout:
    """One step's samples: N = P x G answers, group g of P = rows g*G .. g*G + G - 1."""

    tokens: torch.Tensor  # (N, W) prompt + answer, right-padded: the policy's input
    prompt_lengths: torch.Tensor  # (N,) BOS + prompt tokens
    completions: torch.Tensor  # (N, S) the sampled answer tokens, PAD after EOS
    mask: torch.Tensor  # (N, S) the answer's tokens, EOS included

    @property
    def answer_lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


@torch.no_grad()
def sample_answers(model: ArithmeticDecoder, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float,
                   generator: torch.Generator) -> Rollout:
    """Sample one answer per prompt (repeat a prompt G times for a group) with the KV-cache generator at
    `temperature` (captured in a CUDA graph where the model's `graphed_generation` is set), all rows at once
    per prompt length; a seeded `generator` reproduces the samples."""
    model.eval()
    n = len(prompt_ids)
    completions = torch.full((n, max_new_tokens), tokenizer.PAD_ID, dtype=torch.long)
    for rows, out in generate_batches(model, prompt_ids, n, max_new_tokens=max_new_tokens, temperature=temperature,
                                      generator=generator):
        completions[rows] = out.tokens
    prompt_lengths = torch.tensor([len(ids) for ids in prompt_ids])
    tokens = torch.full((n, int(prompt_lengths.max()) + max_new_tokens), tokenizer.PAD_ID, dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        tokens[row, :len(ids)] = torch.tensor(ids)
        tokens[row, len(ids):len(ids) + max_new_tokens] = completions[row]
    return Rollout(tokens, prompt_lengths, completions, completions != tokenizer.PAD_ID)


def policy_scores(model: ArithmeticDecoder, rollout: Rollout, temperature: float,
                  rows: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each sampled answer token and the entropy (nats) of the distribution it was drawn from,
    both (n, S), for `rows` of the rollout, in one teacher-forced pass (differentiable; wrap in no_grad to
    read). The policy is what `generate` samples from: softmax(logits / temperature) with PAD and BOS removed."""
    device = next(model.parameters()).device
    tokens = rollout.tokens[rows].to(device)
    logits = model(tokens[:, :-1]).float()  # (n, W-1, V)
    steps = rollout.completions.shape[1]
    # the logits that chose answer token k sit at input position prompt_length - 1 + k
    where = (rollout.prompt_lengths[rows].to(device)[:, None] - 1 + torch.arange(steps, device=device))  # (n, S)
    logits = logits.gather(1, where[:, :, None].expand(-1, -1, logits.shape[-1]))  # (n, S, V)
    logits = (logits / temperature).masked_fill(model.never_generated, NEVER_LOGIT)
    log_probs = F.log_softmax(logits, dim=-1)
    chosen = rollout.completions[rows].to(device)
    logp = log_probs.gather(-1, chosen[:, :, None]).squeeze(-1)  # (n, S); PAD positions are masked out later
    return logp, entropy_from_log_probs(log_probs)


# ----------------------------------------------------------------------------------------------
# Entropy against performance (Cui et al. 2025)


def fit_entropy_ceiling(entropy_nats, accuracy) -> dict[str, float]:
    """Least-squares fit of R = -a exp(H) + b over (H, R) points (H in nats, as the paper); linear in (a, b), so
    solved in closed form on x = exp(H). Returns a, b, the predicted ceiling b - a (R at H = 0), R^2 and the
    number of points; NaN where fewer than two distinct entropies leave it undetermined."""
    h, r = np.asarray(entropy_nats, dtype=float), np.asarray(accuracy, dtype=float)
    keep = np.isfinite(h) & np.isfinite(r)
    h, r = h[keep], r[keep]
    result = {"a": math.nan, "b": math.nan, "ceiling": math.nan, "r2": math.nan, "points": float(len(h))}
    if len(np.unique(h)) < 2:
        return result
    design = np.column_stack([-np.exp(h), np.ones_like(h)])  # R = a * (-exp H) + b * 1
    (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
    residual = r - design @ np.array([a, b])
    spread = float(((r - r.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread > 0 else math.nan
    return {**result, "a": float(a), "b": float(b), "ceiling": float(b - a), "r2": r2}


EARLY_FRACTION = 0.15  # Cui et al. predict the final score from the first ~15% of the steps


def entropy_ceiling_fits(curve: pd.DataFrame, steps: int, early_fraction: float = EARLY_FRACTION) -> dict[str, float]:
    """The fit of R = -a exp(H) + b over every validated point of a fine-tuning curve (``step``, ``entropy_bits``,
    ``val_exact_match``), and the same fit over the points of the first `early_fraction` of `steps` used as a
    forecast of the last validation's exact match (``final``, at ``final_entropy_bits``):
    ``early_ceiling`` (the early fit at H = 0, the paper's forecast: where accuracy goes once entropy is spent),
    ``early_at_final`` (the early fit at the final entropy, which a forecast cannot know in advance) and their
    errors against the final exact match in points (100 x (forecast - final)); ``early_points`` counts the
    points the early fit saw (NaN forecasts below 3: two points always fit exactly)."""
    points = curve.dropna(subset=["val_exact_match", "entropy_bits"]) if {"val_exact_match", "entropy_bits"} <= \
        set(curve) else pd.DataFrame(columns=["step", "entropy_bits", "val_exact_match"])
    nats = points["entropy_bits"].to_numpy(dtype=float) / to_bits(1.0)
    accuracy = points["val_exact_match"].to_numpy(dtype=float)
    fit = fit_entropy_ceiling(nats, accuracy)
    early = points["step"].to_numpy(dtype=float) <= early_fraction * steps
    forecast = fit_entropy_ceiling(nats[early], accuracy[early]) if early.sum() >= 3 else \
        {"a": math.nan, "b": math.nan, "ceiling": math.nan}
    final = float(accuracy[-1]) if len(accuracy) else math.nan
    final_nats = float(nats[-1]) if len(nats) else math.nan
    at_final = forecast["b"] - forecast["a"] * math.exp(final_nats) if len(nats) else math.nan
    return {**fit, "final": final, "final_entropy_bits": float(points["entropy_bits"].iloc[-1]) if len(nats)
            else math.nan, "early_points": float(early.sum()), "early_a": forecast["a"], "early_b": forecast["b"],
            "early_ceiling": forecast["ceiling"], "early_at_final": at_final,
            "early_ceiling_error_points": 100 * (forecast["ceiling"] - final),
            "early_at_final_error_points": 100 * (at_final - final)}


# ----------------------------------------------------------------------------------------------
# The fine-tuner


class FineTuneDiverged(UserError):
    """The policy's scores became NaN or infinite."""


@dataclass
class FineTuneResult:
    model: ArithmeticDecoder
    curve: pd.DataFrame
    fit: dict[str, float]


class FineTuner:
    """The policy (a copy of the trained model), its AdamW, the frozen reference (the trained model, for the KL
    term and reading), the adaptive entropy coefficient, and the step count and curve; `fit` runs to rl.steps.

    Every random choice is a function of (rl.seed, purpose, step) (`training.seeded_generator`): the prompts
    of a step, its samples and Clip-Cov's picks. With the state of `state()` a restored run therefore takes
    the very steps an uninterrupted one takes.
    """

    def __init__(self, model: ArithmeticDecoder, config: RLConfig, prompt_texts: list[str], val_texts: list[str],
                 device: torch.device, replay_texts: list[str] | None = None):
        self.config, self.device = config, device
        self.policy = copy.deepcopy(model).to(device).eval()
        self.reference = copy.deepcopy(model).to(device).eval().requires_grad_(False)
        # Adam without weight decay: decay would pull the weights toward 0, away from the trained model
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=config.lr, weight_decay=0.0)
        self.adaptive = None
        if config.entropy_target is not None:
            self.adaptive = AdaptiveEntropyCoefficient(config).to(device)
            self.adaptive_optimizer = self.adaptive.configure_optimizer()
        self.prompts, self.max_new_tokens = generation_prompts(prompt_texts)
        self.targets = answer_targets(prompt_texts, self.max_new_tokens)  # (prompts, S)
        self.val_texts = val_texts
        self.sampler = BatchSampler(len(prompt_texts), config.prompts_per_step, config.seed)
        self.replay_tokens = self.replay_sampler = None
        if config.replay_weight > 0:
            if not replay_texts:
                raise UserError("rl.replay_weight > 0 needs the train split's problems to replay")
            self.replay_tokens = encode_batch(replay_texts)["tokens"]  # (R, T) right-padded, on the CPU
            self.replay_sampler = BatchSampler(len(replay_texts), config.replay_batch_size, config.seed, "rl replay")
        self.step = 0
        self.elapsed_s = 0.0
        self.curve: list[dict[str, float]] = []

    # --- state for checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        state = {"step": self.step, "elapsed_s": self.elapsed_s, "curve": self.curve,
                 "model_state": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.adaptive is not None:
            state["adaptive"] = self.adaptive.state_dict()
            state["adaptive_optimizer"] = self.adaptive_optimizer.state_dict()
        return state

    def restore(self, state: dict) -> None:
        self.policy.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.adaptive is not None:
            self.adaptive.load_state_dict(state["adaptive"])
            self.adaptive_optimizer.load_state_dict(state["adaptive_optimizer"])
        self.step, self.elapsed_s, self.curve = state["step"], state["elapsed_s"], list(state["curve"])

    # --- one step ----------------------------------------------------------------------------------------
    def entropy_coef(self):
        return entropy_coefficient(self.config, self.adaptive)

    def train_step(self, update: bool = True) -> dict[str, float]:
        """Sample, reward, update (or, with `update` False, only measure: the step count stays); returns the step's
        readings (floats): reward, sample_exact_match, entropy_bits (mean over the sampled tokens, before the
        update), entropy_step_<k> (per answer step), covariance (Cui et al.'s term: the batch covariance of
        log-probability and advantage), clip_fraction, kl (k3 to the reference), no_signal_groups (groups whose
        rewards are all equal), masked_fraction (tokens the token mask or Clip-Cov takes out of the policy
        gradient), entropy_coef, answer_length, step_ms. Raises `FineTuneDiverged` when the policy went
        non-finite."""
        config, G = self.config, self.config.samples_per_prompt
        started = time.perf_counter()
        rows = self.sampler.indices(self.step)  # (P,) prompt indices
        repeated = rows.repeat_interleave(G)  # (N,): each prompt G times, one group after another
        rollout = sample_answers(self.policy, [self.prompts[i] for i in repeated.tolist()], self.max_new_tokens,
                                 config.temperature, seeded_generator(config.seed, "rl samples", self.step))
        rewards = answer_rewards(rollout.completions, self.targets[repeated], config.reward)  # (N,)
        exact = rewards if config.reward == "exact" else answer_rewards(rollout.completions, self.targets[repeated],
                                                                         "exact")
        advantages = group_advantages(rewards, G, config.scale_rewards).to(self.device)
        mask = rollout.mask.to(self.device)  # (N, S)

        updates = config.ppo_epochs * config.minibatches if update else 0
        old_logp = old_entropy = None
        if updates != 1:  # the policy that sampled, before any update of this step
            with torch.no_grad():
                old_logp, old_entropy = policy_scores(self.policy, rollout, config.temperature)
        ref_logp = None
        if config.kl_coef > 0 or self.logged_after(self.step + int(update)):  # else only for the reading
            with torch.no_grad():
                ref_logp, _ = policy_scores(self.reference, rollout, config.temperature)
        coefficient = self.entropy_coef()
        clip_count = masked_count = torch.zeros((), device=self.device)  # tokens, over every update
        replay = self.replay_batch() if update and self.replay_tokens is not None else None
        replay_ce = math.nan
        per_batch = len(rows) // config.minibatches * G  # answers per minibatch: whole groups
        for epoch in range(config.ppo_epochs if update else 0):
            for first in range(0, len(repeated), per_batch):
                part = slice(first, first + per_batch)
                logp, entropy = policy_scores(self.policy, rollout, config.temperature, part)
                if old_logp is None:  # one update per step: the pass before it is the sampling policy
                    old_logp, old_entropy = logp.detach(), entropy.detach()
                loss, clipped, kept = self._loss(logp, entropy, old_logp[part], advantages[part], mask[part],
                                                 None if ref_logp is None else ref_logp[part], coefficient,
                                                 seeded_generator(config.seed, f"clip-cov {epoch} {first}", self.step))
                if replay is not None:
                    ce = self.replay_loss(replay)
                    loss = loss + config.replay_weight * ce
                    replay_ce = float(ce.detach())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), config.grad_clip)
                self.optimizer.step()
                clip_count = clip_count + (clipped & mask[part]).sum()
                masked_count = masked_count + (mask[part] & ~kept).sum()

        entropy_bits = to_bits(masked_mean(old_entropy, mask))
        if self.adaptive is not None and update:  # toward the target: the mean entropy of the sampled tokens, in bits
            self.adaptive_optimizer.zero_grad(set_to_none=True)
            self.adaptive.loss(entropy_bits).backward()
            self.adaptive_optimizer.step()
        tokens = float(mask.sum())
        steps = mask.sum(dim=0).clamp_min(1)  # (S,) answers still running at each step
        by_step = to_bits(torch.where(mask, old_entropy, 0.0).sum(dim=0) / steps)
        groups = rewards.view(-1, G)
        readings = {
            "reward": float(rewards.mean()), "sample_exact_match": float(exact.mean()),
            "entropy_bits": float(entropy_bits),
            "covariance": float(masked_mean(token_covariance(old_logp, advantages, mask), mask)),
            "clip_fraction": float(clip_count) / (tokens * config.ppo_epochs),  # 0 when only measured
            "kl": float(masked_mean(k3_kl(old_logp, ref_logp), mask)) if ref_logp is not None else math.nan,
            "no_signal_groups": float((groups == groups[:, :1]).all(dim=1).float().mean()),
            "masked_fraction": float(masked_count) / (tokens * config.ppo_epochs),
            "entropy_coef": float(coefficient), "answer_length": tokens / len(repeated), "replay_ce": replay_ce,
            **{f"entropy_step_{k}": float(bits) if mask[:, k].any() else math.nan for k, bits in enumerate(by_step)},
        }
        if not math.isfinite(readings["entropy_bits"]):
            raise FineTuneDiverged(f"the policy's entropy became {readings['entropy_bits']} at rl step {self.step}: "
                                   "lower rl.lr")
        self.step += int(update)
        readings["step_ms"] = 1000 * (time.perf_counter() - started)
        return readings

    def replay_batch(self) -> torch.Tensor:
        """This step's replay problems: tokens (R, W) on the device, W the batch's longest row."""
        rows = self.replay_sampler.indices(self.step)
        tokens = self.replay_tokens[rows]
        width = int((tokens != tokenizer.PAD_ID).sum(dim=1).max())
        return tokens[:, :width].to(self.device)

    def replay_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (nats, mean over answer tokens) of the policy's model on replay problems (R, W), at
        temperature 1 and without abacus offsets (eval mode: the distribution greedy evaluation reads)."""
        batch = batch_from_tokens(tokens)
        logits = self.policy(tokens[:, :-1]).float()  # (R, W-1, V)
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")  # (R, W-1)
        return masked_mean(nll, batch["answer_mask"])

    def _loss(self, logp, entropy, old_logp, advantages, mask, ref_logp, coefficient, generator):
        """The objective of one update (see the module's docstring), where the clip binds, and the tokens the
        policy gradient keeps (token mask and Clip-Cov)."""
        config = self.config
        token_loss, clipped = clipped_objective(logp, old_logp, advantages, config.clip_low, config.clip_high)
        if config.cov_control == "kl_cov":  # the paper's KL-Cov has no PPO clip: nothing binds
            token_loss, clipped = unclipped_objective(logp, old_logp, advantages), torch.zeros_like(clipped)
        kept = entropy_token_mask(entropy.detach(), mask, config.token_mask, config.token_mask_quantile)
        entropy_tokens = kept if config.entropy_tokens == "masked" else mask  # before Clip-Cov's picks
        token_loss = torch.where(kept, token_loss, 0.0)  # the mask restricts the policy gradient (not the KL)
        if config.cov_control != "none":
            covariance = token_covariance(logp, advantages, mask)
            if config.cov_control == "clip_cov":
                picked = clip_cov_tokens(covariance, mask, clipped, config.clip_cov_ratio, config.clip_cov_low,
                                         config.clip_cov_high, generator)
                token_loss = torch.where(picked, token_loss.detach(), token_loss)
                kept = kept & ~picked
            else:  # kl_cov (unclipped) or kl_cov_clipped (the PPO clip kept)
                picked = kl_cov_tokens(covariance, mask, config.kl_cov_ratio)
                token_loss = token_loss + torch.where(picked, config.kl_cov_coef * (logp - old_logp).abs(), 0.0)
        if config.kl_coef > 0:
            token_loss = token_loss + config.kl_coef * k3_kl(logp, ref_logp)
        loss = aggregate(token_loss, mask, config.loss_type, self.max_new_tokens)
        if isinstance(coefficient, torch.Tensor) or coefficient != 0:
            loss = loss + coefficient * masked_mean(entropy, entropy_tokens)
        return loss, clipped, kept

    # --- validation and the loop ---------------------------------------------------------------------------
    def logged_after(self, step: int) -> bool:
        """Whether the curve gets a row after `step` steps: every rl.log_every and rl.eval_every, and the last."""
        config = self.config
        return step % config.log_every == 0 or step % config.eval_every == 0 or step == config.steps

    def validate(self) -> float:
        """Greedy exact match on the RL validation split."""
        return greedy_exact_match(self.policy, self.val_texts, batch_size=512)

    def fit(self, on_log: Callable[[dict[str, float]], None], on_checkpoint: Callable[[dict], None],
            stop_requested: Callable[[], int | None]) -> FineTuneResult:
        """Fine-tune from the current step to rl.steps. Every rl.log_every steps (and at the last) a curve row of
        the step's readings goes to `on_log`; every rl.eval_every steps it also holds val_exact_match. Step 0 is
        the trained model, measured on step 0's samples without an update. `on_checkpoint(state)` every
        rl.checkpoint_every steps and when `stop_requested()` returns a signal number, after which `fit` returns
        early (the caller checks `self.step`)."""
        config = self.config
        clock = time.perf_counter()

        def record(row: dict[str, float]) -> None:
            nonlocal clock
            if self.step % config.eval_every == 0 or self.step == config.steps:
                row["val_exact_match"] = self.validate()
            self.elapsed_s += time.perf_counter() - clock
            clock = time.perf_counter()
            row = {"step": self.step, "wall_time_s": self.elapsed_s, **row}
            self.curve.append(row)
            on_log(row)

        if self.step == 0 and not self.curve:
            record(self.train_step(update=False))  # the trained model's readings: the curve's first point
        while self.step < config.steps:
            readings = self.train_step()
            if self.logged_after(self.step):
                record(readings)
            signum = stop_requested()
            if self.step % config.checkpoint_every == 0 or signum is not None:
                on_checkpoint(self.state())
            if signum is not None:
                break
        curve = pd.DataFrame(self.curve)
        return FineTuneResult(self.policy, curve, entropy_ceiling_fits(curve, config.steps))

"""RL fine-tuning components: rewards, advantages, the clipped objective and its aggregations, the KL estimate,
the entropy controls against brute force, the entropy-ceiling fit, and a short run on a tiny model."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from language_entropy import rl, tokenizer
from language_entropy.checkpoint import load_checkpoint, save_checkpoint
from language_entropy.data import with_text
from language_entropy.errors import ParamsError, UserError
from language_entropy.losses import AdaptiveEntropyCoefficient
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import DigitRange, ModelConfig, Params, RLConfig
from language_entropy.problems import draw_problems


def ids(*answers: str) -> torch.Tensor:
    """Answer token rows, right-padded with PAD: '_' in a string is a PAD inside the answer."""
    width = max(len(answer) for answer in answers)
    return torch.tensor([tokenizer.encode(answer.ljust(width, tokenizer.PAD)) for answer in answers])


# --- rewards ----------------------------------------------------------------------------------------------


def test_exact_reward_needs_the_right_tokens_then_eos():
    targets = rl.answer_targets(["123+200=323$"] * 6, width=5)  # the text's answer: "323" then EOS
    assert tokenizer.decode(targets[0]) == "323$_"
    completions = ids("323$", "324$", "323", "3233$", "3_23$", "323$17")  # right, wrong digit, no EOS, a token
    # too many, PAD inside, tokens after EOS (not part of the answer: generation ends a row at its EOS)
    assert rl.answer_rewards(completions, targets, "exact").tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_digit_reward_is_partial_credit_per_position():
    targets = rl.answer_targets(["12+309=123$"] * 7, width=6)  # "123$": 4 positions
    completions = ids("123$", "193$", "12$", "1234$", "123", "1_3$", "123$9")
    # matches / max(len(answer), len(right)): 4/4, 3/4, 2/4, 3/5, 3/4 (no EOS), 3/4 (PAD inside), 4/4
    assert rl.answer_rewards(completions, targets, "digits").tolist() == pytest.approx(
        [1.0, 0.75, 0.5, 0.6, 0.75, 0.75, 1.0])


# --- advantages, the clipped objective, the aggregations ---------------------------------------------------

# Two groups of two answers, clip range [0.8, 1.3]. Rewards (1, 0) and (0, 1): advantages +-0.5.
# ratio per token; loss = -min(r A, clip(r) A):
#   answer 0, A = +0.5: r 1.5 -> -min(0.75, 0.65) = -0.65 (high side binds); r 1.0 -> -0.5
#   answer 1, A = -0.5: r 0.5 -> -min(-0.25, -0.40) = 0.40 (low side binds)
#   answer 2, A = -0.5: r 1.5 -> -min(-0.75, -0.65) = 0.75 (A < 0: no upper clip); r 0.9 -> 0.45
#   answer 3, A = +0.5: r 0.7 -> -min(0.35, 0.40) = -0.35 (A > 0: no lower clip)
RATIOS = torch.tensor([[1.5, 1.0], [0.5, 1.0], [1.5, 0.9], [0.7, 1.0]])
MASK = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
TOKEN_LOSS = [[-0.65, -0.5], [0.40, 0.0], [0.75, 0.45], [-0.35, 0.0]]


def test_group_advantages_plain_and_scaled():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert rl.group_advantages(rewards, 2, scale=False).tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0]
    std = math.sqrt(0.5)  # unbiased std of (1, 0)
    assert rl.group_advantages(rewards, 2, scale=True).tolist() == pytest.approx(
        [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 0.0, 0.0])


def test_clipped_objective_binds_on_both_sides_and_its_gradient_stops_there():
    advantages = rl.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, scale=False)
    logp = RATIOS.log().requires_grad_(True)
    loss, clipped = rl.clipped_objective(logp, torch.zeros(4, 2), advantages, clip_low=0.2, clip_high=0.3)
    assert torch.allclose(torch.where(MASK, loss, 0.0), torch.tensor(TOKEN_LOSS))
    assert (clipped & MASK).tolist() == [[True, False], [True, False], [False, False], [False, False]]
    torch.where(MASK, loss, 0.0).sum().backward()
    assert logp.grad[0, 0] == 0 and logp.grad[1, 0] == 0  # clipped: no gradient
    assert logp.grad[0, 1] == pytest.approx(-0.5) and logp.grad[2, 0] == pytest.approx(0.75)  # d(-r A)/dlogp = -r A


def test_the_three_aggregations_by_hand():
    loss = torch.tensor(TOKEN_LOSS)
    # grpo: answer means -0.575, 0.40, 0.60, -0.35, then their mean
    assert float(rl.aggregate(loss, MASK, "grpo", max_length=3)) == pytest.approx(0.075 / 4)
    # dapo: the sum 0.10 over the 6 tokens; dr_grpo: the sum over 4 answers x 3 (the generation budget)
    assert float(rl.aggregate(loss, MASK, "dapo", max_length=3)) == pytest.approx(0.10 / 6)
    assert float(rl.aggregate(loss, MASK, "dr_grpo", max_length=3)) == pytest.approx(0.10 / 12)
    with pytest.raises(ValueError, match="loss_type"):
        rl.aggregate(loss, MASK, "ppo", 3)


def test_k3_kl_estimate_by_hand_and_its_mean_is_the_closed_form_kl():
    assert float(rl.k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25)))) == pytest.approx(
        0.5 - math.log(0.5) - 1)
    g = torch.Generator().manual_seed(0)
    policy, reference = (F.log_softmax(torch.randn(5, 7, generator=g) * 2, dim=-1) for _ in range(2))
    expected_k3 = (policy.exp() * rl.k3_kl(policy, reference)).sum(dim=-1)  # E_{x ~ pi}[k3(x)], exactly
    closed_form = (policy.exp() * (policy - reference)).sum(dim=-1)  # KL(pi || ref)
    assert torch.allclose(expected_k3, closed_form, atol=1e-5)
    assert torch.allclose(closed_form, F.kl_div(reference, policy, log_target=True, reduction="none").sum(-1),
                          atol=1e-6)
    assert (rl.k3_kl(policy, reference) >= 0).all()


# --- the entropy controls ------------------------------------------------------------------------------------


def test_token_mask_keeps_the_top_quantile_ties_included_or_its_complement():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.5, 0.2, 0.9, 0.3], [0.5, 0.5, 0.9, 9.0]])
    mask = torch.tensor([[True, True, True, False], [True] * 4, [True, True, True, False]])
    # ten valid entropies 0.1 0.2 0.3 0.5 0.5 0.5 0.5 0.9 0.9 0.9: the 0.8 quantile is 0.9, so the top-20% mask
    # keeps all three tied 0.9s (30%); the padded 7.0 and 9.0 never count
    top = rl.entropy_token_mask(entropy, mask, "top_entropy", 0.2)
    assert top.tolist() == [[False, True, False, False], [False, False, True, False], [False, False, True, False]]
    bottom = rl.entropy_token_mask(entropy, mask, "bottom_entropy", 0.2)
    assert torch.equal(bottom, mask & ~top)
    # no ties at the threshold: exactly the top 40% (the 0.6 quantile of 0..9 is 5.4: 6, 7, 8, 9)
    values = torch.arange(10.0).view(2, 5)
    assert rl.entropy_token_mask(values, torch.ones(2, 5, dtype=torch.bool), "top_entropy", 0.4).sum() == 4
    assert torch.equal(rl.entropy_token_mask(entropy, mask, "top_entropy", 1.0), mask)  # quantile 1: every token
    assert torch.equal(rl.entropy_token_mask(entropy, mask, "none", 0.2), mask)


def brute_force_covariance(logp, advantages, mask) -> dict[tuple[int, int], float]:
    cells = [(i, k) for i in range(mask.shape[0]) for k in range(mask.shape[1]) if mask[i, k]]
    mean_logp = sum(float(logp[i, k]) for i, k in cells) / len(cells)
    mean_advantage = sum(float(advantages[i]) for i, _ in cells) / len(cells)
    return {(i, k): (float(logp[i, k]) - mean_logp) * (float(advantages[i]) - mean_advantage) for i, k in cells}


def test_covariance_and_the_tokens_kl_cov_and_clip_cov_pick_match_brute_force():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(6, 5, generator=g) * 4
    advantages = torch.randn(6, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.25
    covariance = rl.token_covariance(logp, advantages, mask)
    brute = brute_force_covariance(logp, advantages, mask)
    for (i, k), value in brute.items():
        assert float(covariance[i, k]) == pytest.approx(value, abs=1e-6)
    assert (covariance[~mask] == 0).all()

    ranked = sorted(brute, key=lambda cell: -brute[cell])
    for ratio in (0.05, 0.2, 0.5):
        count = max(int(ratio * len(brute)), 1)
        picked = rl.kl_cov_tokens(covariance, mask, ratio)
        assert {tuple(cell) for cell in picked.nonzero().tolist()} == set(ranked[:count])

    low, high = -0.2, 0.4
    band = {cell for cell, value in brute.items() if low < value < high}
    assert 3 < len(band) < len(brute)
    unclipped = torch.zeros_like(mask)
    everything = rl.clip_cov_tokens(covariance, mask, unclipped, 1.0, low, high, torch.Generator().manual_seed(0))
    assert {tuple(cell) for cell in everything.nonzero().tolist()} == band  # the ratio allows more than the band
    some = rl.clip_cov_tokens(covariance, mask, unclipped, 0.1, low, high, torch.Generator().manual_seed(0))
    chosen = {tuple(cell) for cell in some.nonzero().tolist()}
    assert chosen <= band and len(chosen) == int(0.1 * len(brute))
    again = rl.clip_cov_tokens(covariance, mask, unclipped, 0.1, low, high, torch.Generator().manual_seed(0))
    assert torch.equal(some, again)  # a seeded draw


def second_update_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two answers of two tokens, A = (+1, -1), as at a step's second update: token (0, 0) has r = 1.5 with A > 0
    and token (1, 1) r = 0.5 with A < 0, so the clip [0.8, 1.28] binds on both; (0, 1) and (1, 0) have r = 1.
    log pi = (-0.05, -2.0) and (-0.1, -2.0) (mean -1.0375): the covariances are +0.9875 and +0.9625 on the two
    clipped tokens, -0.9625 and -0.9375 on the others."""
    logp = torch.tensor([[-0.05, -2.0], [-0.1, -2.0]])
    old_logp = logp - torch.log(torch.tensor([[1.5, 1.0], [1.0, 0.5]]))
    return logp, old_logp, torch.tensor([1.0, -1.0]), torch.ones(2, 2, dtype=torch.bool)


def test_clip_cov_skips_the_tokens_where_the_clip_binds_and_its_band_is_open():
    logp, old_logp, advantages, mask = second_update_batch()
    _, clipped = rl.clipped_objective(logp, old_logp, advantages, 0.2, 0.28)
    assert clipped.tolist() == [[True, False], [False, True]]
    covariance = rl.token_covariance(logp, advantages, mask)
    assert covariance.flatten().tolist() == pytest.approx([0.9875, -0.9625, -0.9375, 0.9625])
    generator = torch.Generator().manual_seed(0)
    # the band (0.5, 5) holds only the two high-covariance tokens, and the clip already silences both: no pick
    # (drawing from the band alone, as before, detached both)
    assert not rl.clip_cov_tokens(covariance, mask, clipped, 1.0, 0.5, 5.0, generator).any()
    # a band holding every token: only the two where the clip does not bind are candidates
    wide = rl.clip_cov_tokens(covariance, mask, clipped, 1.0, -5.0, 5.0, generator)
    assert wide.tolist() == [[False, True], [True, False]]
    # the band is open, as verl's low < cov < high: covariances on its edges are not candidates
    edges = torch.tensor([[1.0, 5.0, 3.0]])
    picked = rl.clip_cov_tokens(edges, torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool), 1.0,
                                1.0, 5.0, generator)
    assert picked.tolist() == [[False, False, True]]


def loss_gradients(tuner: rl.FineTuner, logp, entropy, old_logp, advantages, mask, coefficient=0.0):
    """d loss / d logp and d loss / d entropy of one update's objective (`FineTuner._loss`)."""
    logp, entropy = logp.clone().requires_grad_(True), entropy.clone().requires_grad_(True)
    loss, _, _ = tuner._loss(logp, entropy, old_logp, advantages, mask, None, coefficient, torch.Generator())
    return torch.autograd.grad(loss, [logp, entropy], allow_unused=True)


def test_kl_cov_is_unclipped_at_a_second_update_and_kl_cov_clipped_keeps_the_clip():
    logp, old_logp, advantages, mask = second_update_batch()
    entropy = torch.ones(2, 2)
    # kl_cov_ratio 0.25 of 4 tokens: one pick, the largest covariance, (0, 0);
    # its |log r| term adds kl_cov_coef * sign(log r) = +1 to its gradient. DAPO: every token / 4.
    unclipped, _ = loss_gradients(tiny_tuner(cov_control="kl_cov", kl_cov_ratio=0.25), logp, entropy, old_logp,
                                  advantages, mask)
    # -r A on every token: d/dlogp = -r A, so (0, 0): (-1.5 + 1) / 4, (1, 1): +0.5 / 4
    assert unclipped.flatten().tolist() == pytest.approx([-0.125, -0.25, 0.25, 0.125])
    clipped, _ = loss_gradients(tiny_tuner(cov_control="kl_cov_clipped", kl_cov_ratio=0.25), logp, entropy,
                                old_logp, advantages, mask)
    # the clip silences the policy gradient of (0, 0) and (1, 1): (0, 0) keeps only its |log r| term
    assert clipped.flatten().tolist() == pytest.approx([0.25, -0.25, 0.25, 0.0])


def test_the_entropy_term_under_a_top_entropy_mask_acts_on_the_tokens_the_mask_keeps():
    logp = torch.full((2, 2), -1.0)
    entropy = torch.tensor([[0.1, 0.9], [0.5, 0.2]])  # top 25%: (0, 1) alone (the 0.75 quantile is 0.6)
    mask, advantages = torch.ones(2, 2, dtype=torch.bool), torch.zeros(2)
    values = {"token_mask": "top_entropy", "token_mask_quantile": 0.25}
    _, masked = loss_gradients(tiny_tuner(**values), logp, entropy, logp, advantages, mask, coefficient=-0.1)
    assert masked.flatten().tolist() == pytest.approx([0.0, -0.1, 0.0, 0.0])  # the mean over the one kept token
    _, every = loss_gradients(tiny_tuner(**values, entropy_tokens="all"), logp, entropy, logp, advantages, mask,
                              coefficient=-0.1)
    assert every.flatten().tolist() == pytest.approx([-0.025] * 4)  # the mean over all 4 tokens


@pytest.mark.parametrize("entropy_bits, direction", [(0.1, "grows"), (3.0, "shrinks")])
def test_adaptive_coefficient_moves_toward_its_target_in_both_directions(entropy_bits, direction):
    config = RLConfig(entropy_target=1.0, entropy_coef_init=0.05, entropy_coef_lr=0.1)
    adaptive = AdaptiveEntropyCoefficient(config)
    optimizer = adaptive.configure_optimizer()
    bonus = [-float(adaptive.coefficient())]
    for _ in range(3):
        optimizer.zero_grad()
        adaptive.loss(entropy_bits).backward()
        optimizer.step()
        bonus.append(-float(adaptive.coefficient()))
    assert bonus[0] == pytest.approx(0.05)
    steps = np.diff(bonus)
    assert (steps > 0).all() if direction == "grows" else (steps < 0).all()


# --- the entropy-performance fit -----------------------------------------------------------------------------


def test_entropy_ceiling_fit_recovers_the_curve_and_matches_a_linear_fit_in_exp_h():
    entropy = np.array([0.05, 0.1, 0.2, 0.3, 0.5])
    exact = -0.3 * np.exp(entropy) + 0.9
    fit = rl.fit_entropy_ceiling(entropy, exact)
    assert fit["a"] == pytest.approx(0.3) and fit["b"] == pytest.approx(0.9)
    assert fit["ceiling"] == pytest.approx(0.6) and fit["r2"] == pytest.approx(1.0) and fit["points"] == 5
    noisy = exact + np.array([0.01, -0.02, 0.015, 0.0, -0.01])
    slope, intercept = np.polyfit(np.exp(entropy), noisy, 1)  # R = slope * exp(H) + intercept
    fit = rl.fit_entropy_ceiling(entropy, noisy)
    assert fit["a"] == pytest.approx(-slope) and fit["b"] == pytest.approx(intercept)
    assert 0 < fit["r2"] < 1
    assert math.isnan(rl.fit_entropy_ceiling([0.2, 0.2, math.nan], [0.5, 0.6, 0.7])["ceiling"])  # one entropy


def test_the_early_fit_forecasts_from_the_first_15_percent_of_steps_and_scores_itself_in_points():
    # 100 steps validated every 5: steps 0..15 (<= 15% of 100) are the early points; they lie on
    # R = -0.2 exp(H) + 0.95 (H in nats); the later ones do not, and the last validation reads 0.70
    steps = np.arange(0, 101, 5)
    nats = np.linspace(0.6, 0.1, len(steps))
    exact = -0.2 * np.exp(nats) + 0.95
    exact[4:] = np.linspace(0.62, 0.70, len(steps) - 4)
    curve = pd.DataFrame({"step": steps, "entropy_bits": nats / math.log(2), "val_exact_match": exact})
    curve.loc[1, "val_exact_match"] = math.nan  # a logged step without validation is not a point
    fits = rl.entropy_ceiling_fits(curve, steps=100)
    assert fits["early_points"] == 3  # steps 0, 10, 15
    assert fits["early_a"] == pytest.approx(0.2) and fits["early_b"] == pytest.approx(0.95)
    assert fits["early_ceiling"] == pytest.approx(0.75) and fits["final"] == pytest.approx(0.70)
    assert fits["early_ceiling_error_points"] == pytest.approx(5.0)  # 100 x (0.75 - 0.70)
    at_final = -0.2 * math.exp(0.1) + 0.95
    assert fits["early_at_final"] == pytest.approx(at_final)
    assert fits["early_at_final_error_points"] == pytest.approx(100 * (at_final - 0.70))
    points = curve.dropna()  # the whole-curve fit is `fit_entropy_ceiling` over every validated point
    slope, intercept = np.polyfit(np.exp(points["entropy_bits"] * math.log(2)), points["val_exact_match"], 1)
    assert fits["a"] == pytest.approx(-slope) and fits["b"] == pytest.approx(intercept) and fits["points"] == 20
    assert fits["final_entropy_bits"] == pytest.approx(0.1 / math.log(2))
    short = rl.entropy_ceiling_fits(curve, steps=1000)  # 15% of 1000 covers every point: the forecast sees them all
    assert short["early_points"] == 20 and short["early_a"] == pytest.approx(fits["a"])
    few = rl.entropy_ceiling_fits(curve.drop(index=3), steps=100)  # without step 15, 2 early points: no forecast
    assert few["early_points"] == 2 and math.isnan(few["early_ceiling"])
    assert math.isnan(few["early_at_final_error_points"]) and few["final"] == pytest.approx(0.70)


# --- params -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ({"samples_per_prompt": 1}, "samples_per_prompt must be >= 2"),
    ({"token_mask_quantile": 0.0}, "token_mask_quantile must be in (0, 1] (got 0.0)"),
    ({"token_mask_quantile": 1.5}, "token_mask_quantile must be in (0, 1] (got 1.5)"),
    ({"clip_low": -0.1}, "clip_low must be in [0, 1) (got -0.1)"),
    ({"clip_high": -0.2}, "clip_high must be >= 0 (got -0.2)"),
    ({"reward": "partial"}, "reward must be one of ['exact', 'digits'] (got 'partial')"),
    ({"loss_type": "bnpo"}, "loss_type must be one of ['grpo', 'dapo', 'dr_grpo'] (got 'bnpo')"),
    ({"token_mask": "high"}, "token_mask must be one of"),
    ({"entropy_tokens": "kept"}, "entropy_tokens must be one of ['masked', 'all'] (got 'kept')"),
    ({"cov_control": "kl"}, "cov_control must be one of ['none', 'clip_cov', 'kl_cov', 'kl_cov_clipped']"),
    ({"minibatches": 3}, "minibatches must divide rl.prompts_per_step (16)"),
])
def test_bad_rl_params_are_one_line_naming_the_key(values, message):
    with pytest.raises(ParamsError) as caught:
        RLConfig(**values)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_rl_digits_must_fit_the_model_positions():
    assert Params(model=ModelConfig(max_seq_len=32), rl=RLConfig(digits=DigitRange(8, 8))).rl.digits.max == 8
    with pytest.raises(ParamsError, match=r"^rl.digits.max must fit the model's positions: sub of 9-digit operands "
                                          r"needs 33 tokens, above model.max_seq_len \(32\) \(got 9\)$"):
        Params(model=ModelConfig(max_seq_len=32), rl=RLConfig(digits=DigitRange(9, 9)))


# --- a short run on a tiny model -----------------------------------------------------------------------------

TINY_MODEL = ModelConfig(n_layer=1, n_head=2, n_embd=32, max_seq_len=32)
TEXTS = with_text(draw_problems(np.random.default_rng(0), ("add",), DigitRange(1, 1), 64), True)["text"].tolist()


def tiny_tuner(**values) -> rl.FineTuner:
    """A tiny model's tuner; the replay term off unless `values` turn it on (then it replays TEXTS)."""
    torch.manual_seed(0)
    config = RLConfig(**{"prompts_per_step": 8, "samples_per_prompt": 4, "lr": 1e-2, "reward": "digits",
                         "temperature": 1.0, "scale_rewards": False, "log_every": 1, "eval_every": 100,
                         "replay_weight": 0.0, "replay_batch_size": 16, **values})
    return rl.FineTuner(ArithmeticDecoder(TINY_MODEL), config, TEXTS, TEXTS[:8], torch.device("cpu"), TEXTS)


def mean_rewards(tuner: rl.FineTuner, steps: int) -> list[float]:
    return [tuner.train_step()["reward"] for _ in range(steps)]


@pytest.mark.parametrize("lr", [1e-2, 0.0])
def test_a_short_run_raises_the_reward_on_its_prompts_and_not_at_learning_rate_0(lr):
    tuner = tiny_tuner()  # partial credit: an untrained model earns some, so every group has a signal
    for group in tuner.optimizer.param_groups:
        group["lr"] = lr  # params refuse lr 0: set on the optimizer, the control run of the same samples
    rewards = mean_rewards(tuner, 40)
    first, last = np.mean(rewards[:10]), np.mean(rewards[-10:])
    if lr > 0:
        assert last > first + 0.1, rewards
    else:
        assert abs(last - first) < 0.05, rewards
        assert tuner.train_step()["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is still the reference


def test_readings_of_a_step_are_in_their_ranges():
    tuner = tiny_tuner(token_mask="top_entropy", kl_coef=0.1, entropy_weight=-0.01, minibatches=2, ppo_epochs=2)
    readings = tuner.train_step()
    for name in ("reward", "sample_exact_match", "clip_fraction", "no_signal_groups", "masked_fraction"):
        assert 0.0 <= readings[name] <= 1.0, name
    assert 0.7 <= readings["masked_fraction"] <= 0.8  # the top 20% kept: 80% masked, a little less for ties
    assert readings["entropy_coef"] == -0.01 and readings["kl"] == pytest.approx(0.0, abs=1e-6)  # before any update
    assert 0 < readings["entropy_bits"] <= math.log2(tokenizer.VOCAB_SIZE - 2)  # PAD and BOS are never sampled
    assert readings["entropy_step_0"] > 0 and readings["step_ms"] > 0


def test_adaptive_coefficient_in_a_run_grows_the_bonus_below_its_target():
    tuner = tiny_tuner(entropy_target=8.0, entropy_coef_lr=0.1)  # above any entropy of 19 tokens
    coefficients = [tuner.train_step()["entropy_coef"] for _ in range(3)]
    assert coefficients[0] == pytest.approx(-0.01) and coefficients[2] < coefficients[1] < coefficients[0]


def test_restored_state_continues_bit_exactly(tmp_path):
    values = {"token_mask": "bottom_entropy", "cov_control": "clip_cov", "clip_cov_low": -10.0, "minibatches": 2,
              "ppo_epochs": 2, "entropy_target": 3.0, "kl_coef": 0.05, "replay_weight": 0.5}
    straight = tiny_tuner(**values)
    mean_rewards(straight, 6)

    first = tiny_tuner(**values)
    mean_rewards(first, 3)
    save_checkpoint(tmp_path / "state.pt", first.state())  # through the weights_only checkpoint format
    resumed = tiny_tuner(**values)
    resumed.restore(load_checkpoint(tmp_path / "state.pt"))
    mean_rewards(resumed, 3)
    expected, got = straight.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert torch.equal(straight.adaptive.log_alpha.detach(), resumed.adaptive.log_alpha.detach())


def test_the_replay_term_is_the_cross_entropy_of_the_answers_of_its_problems():
    tuner = tiny_tuner(replay_weight=1.0)
    tokens = tuner.replay_batch()  # (16, W): this step's replay problems, trimmed to the longest
    assert tokens.shape[0] == 16 and (tokens[:, -1] != tokenizer.PAD_ID).any()
    # by hand: -log p of each answer token (after '=', EOS included) under the model in eval mode, then the mean
    logits = tuner.policy(tokens[:, :-1]).float()
    total, count = 0.0, 0
    for row in range(tokens.shape[0]):
        ids = tokens[row].tolist()
        equals = ids.index(tokenizer.encode("=")[0])
        for position in range(equals, len(ids) - 1):
            if ids[position + 1] == tokenizer.PAD_ID:
                break
            total -= torch.log_softmax(logits[row, position], dim=-1)[ids[position + 1]].item()
            count += 1
    assert tuner.replay_loss(tokens).item() == pytest.approx(total / count, rel=1e-5)
    readings = tuner.train_step()
    assert readings["replay_ce"] == pytest.approx(total / count, rel=1e-5)  # the first update's term
    assert math.isnan(tiny_tuner().train_step()["replay_ce"])  # off: no reading


def test_replay_without_problems_to_replay_is_refused_in_one_line():
    config = RLConfig(replay_weight=1.0)
    with pytest.raises(UserError, match="^rl.replay_weight > 0 needs the train split's problems to replay$"):
        rl.FineTuner(ArithmeticDecoder(TINY_MODEL), config, TEXTS, TEXTS[:8], torch.device("cpu"))

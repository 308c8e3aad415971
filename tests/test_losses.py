"""Losses and entropy: values checked by hand, masks, the cross-rank normalisation over 2 gloo ranks."""

from __future__ import annotations

import dataclasses
import math
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from language_entropy import losses
from language_entropy.entropy import NATS_TO_BITS, entropy_from_logits, to_bits
from language_entropy.losses import (
    AdaptiveEntropyCoefficient,
    compute_losses,
    continuity_loss,
    continuity_pair_mask,
    high_entropy_mask,
    masked_mean,
)
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import LossConfig, ModelConfig
from language_entropy.tokenizer import EQUALS_ID, PAD_ID, VOCAB_SIZE, encode


def batch_of(texts: list[str]) -> dict[str, torch.Tensor]:
    """tokens (right-padded), inputs, targets, answer_mask and valid_mask as the project defines them."""
    width = max(len(t) for t in texts)
    tokens = torch.tensor([encode(t) + [PAD_ID] * (width - len(t)) for t in texts])
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    after_equals = torch.cumsum(tokens == EQUALS_ID, dim=1)[:, :-1] > 0  # target t sits after '='
    answer_mask = after_equals & (targets != PAD_ID)
    return {"tokens": tokens, "inputs": inputs, "targets": targets, "answer_mask": answer_mask,
            "valid_mask": inputs != PAD_ID}


# --- entropy -------------------------------------------------------------------------------------------


def test_uniform_logits_have_log2_v_bits():
    entropy = entropy_from_logits(torch.zeros(2, 3, VOCAB_SIZE))
    assert entropy.shape == (2, 3)
    assert torch.allclose(to_bits(entropy), torch.full((2, 3), math.log2(VOCAB_SIZE)))
    assert math.isclose(NATS_TO_BITS, 1 / math.log(2))


def test_chunked_entropy_equals_unchunked_and_is_differentiable():
    logits = torch.randn(5, 7, VOCAB_SIZE, requires_grad=True)
    whole = entropy_from_logits(logits, chunk_size=4096)
    chunked = entropy_from_logits(logits, chunk_size=3)
    assert torch.allclose(whole, chunked, atol=1e-6)
    p = torch.softmax(logits, dim=-1)
    direct = -(p * torch.log(p)).sum(-1)
    assert torch.allclose(whole, direct, atol=1e-5)
    (grad,) = torch.autograd.grad(chunked.sum(), logits)
    (want,) = torch.autograd.grad(direct.sum(), logits)
    assert torch.allclose(grad, want, atol=1e-5)
    assert entropy_from_logits(torch.zeros(0, 4, VOCAB_SIZE)).shape == (0, 4)


def test_entropy_temperature():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    # temperature 2 halves the logits: p = (1, sqrt 3) / (1 + sqrt 3)
    p = torch.tensor([1.0, math.sqrt(3.0)]) / (1 + math.sqrt(3.0))
    want = float(-(p * p.log()).sum())
    assert float(entropy_from_logits(logits, temperature=2.0)) == pytest.approx(want, rel=1e-6)


# --- single terms by hand ------------------------------------------------------------------------------


def reference_cross_entropy(logits, targets, mask):
    """Mean token cross-entropy over `mask`, by torch's own cross_entropy: the independent reference."""
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")[mask].mean()


def reference_entropy(logits, mask, temperature=1.0):
    """Mean entropy of softmax(logits / temperature) over `mask`, computed directly."""
    p = torch.softmax(logits / temperature, dim=-1)
    return (-(p * p.log()).sum(-1))[mask].mean()


def only_cross_entropy(logits, targets, mask):
    return compute_losses(logits, None, targets, mask, mask, LossConfig(), 0.0).ce


def test_masked_cross_entropy_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]])  # (1, 3, 2)
    targets = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[True, True, False]])
    # row 0: p = 1/2 -> ln 2; row 1: p(1) = 3/4 -> ln 4/3; row 2 masked out (it would cost ~10)
    want = (math.log(2) + math.log(4 / 3)) / 2
    assert float(only_cross_entropy(logits, targets, mask)) == pytest.approx(want, rel=1e-6)
    assert float(reference_cross_entropy(logits, targets, mask)) == pytest.approx(want, rel=1e-6)


def test_masking_excludes_prompt_and_padding():
    batch = batch_of(["^12+3=51$", "^4+5=9$__"])
    assert batch["answer_mask"].tolist() == [
        [False, False, False, False, False, True, True, True],
        [False, False, False, False, True, True, False, False]]
    torch.manual_seed(0)
    logits = torch.randn(2, 8, VOCAB_SIZE)
    ce = only_cross_entropy(logits, batch["targets"], batch["answer_mask"])
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["targets"], reduction="none")
    assert float(ce) == pytest.approx(float(per_token[batch["answer_mask"]].mean()), rel=1e-6)
    changed = logits.clone()
    changed[~batch["answer_mask"]] = 50 * torch.randn_like(changed[~batch["answer_mask"]])
    assert float(only_cross_entropy(changed, batch["targets"], batch["answer_mask"])) == pytest.approx(float(ce))
    config = LossConfig(entropy_weight=0.1, continuity_weight=0.1)
    hidden = [torch.randn(2, 8, 4)]
    a = compute_losses(logits, hidden, batch["targets"], batch["answer_mask"], batch["valid_mask"], config, 0.1)
    b = compute_losses(changed, hidden, batch["targets"], batch["answer_mask"], batch["valid_mask"], config, 0.1)
    assert float(a.total) == pytest.approx(float(b.total))


def test_continuity_l2_by_hand():
    hidden = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [9.0, 9.0]]])  # (1, 4, 2)
    pairs = torch.tensor([[True, True, False]])  # the jump to (9, 9) is left out
    want = (5.0 + math.sqrt(1e-8)) / 2  # |(3,4)| = 5; equal states cost sqrt(1e-8)
    assert float(continuity_loss(hidden, pairs, "l2")) == pytest.approx(want, rel=1e-6)


def test_continuity_cosine_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])
    pairs = torch.tensor([[True, True]])
    # orthogonal: 1 - 0 = 1; parallel: 1 - 1 = 0
    assert float(continuity_loss(hidden, pairs, "cosine")) == pytest.approx(0.5, abs=1e-6)


def test_continuity_pair_masks():
    batch = batch_of(["^12+3=51$__"])
    # inputs ^ 1 2 + 3 = 5 1 $ _ : positions 5, 6, 7 ('=', '5', '1') predict the answer
    answer = continuity_pair_mask(batch["answer_mask"], batch["valid_mask"], batch["targets"], "answer")
    assert answer[0].nonzero().flatten().tolist() == [5, 6]
    every = continuity_pair_mask(batch["answer_mask"], batch["valid_mask"], batch["targets"], "all")
    # positions 0..7 predict a token; position 8 (input '$', target PAD) does not
    assert every[0].nonzero().flatten().tolist() == list(range(7))


def test_entropy_term_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [0.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    targets = torch.zeros(1, 3, dtype=torch.long)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    terms = compute_losses(logits, None, targets, mask, mask, LossConfig(entropy_weight=0.1), 0.1)
    assert float(terms.entropy) == pytest.approx((math.log(2) + h) / 2, rel=1e-6)


def test_high_entropy_mask_by_hand():
    entropies = torch.tensor([[1.0, 2, 3, 4, 5, 99], [6, 7, 8, 9, 10, 98]])
    mask = torch.tensor([[True] * 5 + [False], [True] * 5 + [False]])
    high = high_entropy_mask(entropies, mask, 0.8)  # quantile of 1..10 at 0.8 = 8.2
    assert high.tolist() == [[False] * 6, [False, False, False, True, True, False]]
    assert not high_entropy_mask(entropies, torch.zeros_like(mask), 0.8).any()


def test_high_entropy_mask_equals_a_torch_quantile_threshold():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 100, 1000):
        values = torch.rand(4, n, generator=g).round(decimals=2)  # ties too
        valid = torch.rand(4, n, generator=g) > 0.3
        valid[0, 0] = True
        for q in (0.01, 0.2, 0.5, 0.8, 0.99):
            want = (values >= torch.quantile(values[valid], q)) & valid
            assert torch.equal(high_entropy_mask(values, valid, q), want), (n, q)


# --- everything together -------------------------------------------------------------------------------


def toy_inputs(seed=0):
    batch = batch_of(["^12+34=64$", "^5+6=11$__", "^99+1=001$"])
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 9, VOCAB_SIZE, generator=g)
    hidden = [torch.randn(3, 9, 8, generator=g) for _ in range(3)]
    return logits, hidden, batch


def test_total_is_the_weighted_sum_of_the_terms():
    logits, hidden, batch = toy_inputs()
    config = LossConfig(entropy_weight=0.3, continuity_weight=0.5, continuity_on=1, continuity_metric="cosine",
                        entropy_temperature=1.5)
    terms = compute_losses(logits, hidden, batch["targets"], batch["answer_mask"], batch["valid_mask"], config, 0.3)
    ce = reference_cross_entropy(logits, batch["targets"], batch["answer_mask"])
    pairs = continuity_pair_mask(batch["answer_mask"], batch["valid_mask"], batch["targets"], "answer")
    continuity = continuity_loss(hidden[1], pairs, "cosine")
    entropy = reference_entropy(logits, batch["answer_mask"], temperature=1.5)
    assert torch.allclose(terms.ce, ce) and torch.allclose(terms.continuity, continuity)
    assert torch.allclose(terms.entropy, entropy)
    assert torch.allclose(terms.total, ce + 0.5 * continuity + 0.3 * entropy)
    logged = terms.logged()
    assert logged["loss"] == pytest.approx(float(terms.total))
    assert logged["entropy_bits"] == pytest.approx(float(entropy) / math.log(2))
    assert logged["entropy_coef"] == pytest.approx(0.3)
    assert logged["ce_tokens"] == float(batch["answer_mask"].sum())


def test_label_smoothing_of_a_one_hot_prediction_is_the_closed_form():
    """Every target logit L, every other logit 0: p(target) = e^L / Z and p(other) = 1 / Z with
    Z = e^L + V - 1, so -log p(target) = log Z - L, and the mean over the vocabulary of -log p is
    log Z - L / V. Smoothed token loss: (1 - eps) (log Z - L) + eps (log Z - L / V), on every answer token."""
    batch = batch_of(["^12+34=64$", "^5+6=11$__", "^99+1=001$"])
    big, eps, vocab = 6.0, 0.1, VOCAB_SIZE
    logits = torch.zeros(*batch["targets"].shape, vocab)
    logits.scatter_(-1, batch["targets"].unsqueeze(-1), big)
    log_z = math.log(math.exp(big) + vocab - 1)
    want = (1 - eps) * (log_z - big) + eps * (log_z - big / vocab)
    terms = compute_losses(logits, None, batch["targets"], batch["answer_mask"], batch["valid_mask"],
                           LossConfig(label_smoothing=eps), 0.0)
    assert float(terms.ce) == pytest.approx(want, rel=1e-6)
    assert float(terms.ce) > log_z - big  # smoothing costs something on a confident, right prediction
    assert torch.equal(terms.total, terms.ce)
    # the same convention as torch's own label smoothing, on random logits
    logits, _, batch = toy_inputs()
    terms = compute_losses(logits, None, batch["targets"], batch["answer_mask"], batch["valid_mask"],
                           LossConfig(label_smoothing=0.3), 0.0)
    torch_ce = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none",
                               label_smoothing=0.3).view_as(batch["targets"])
    assert torch.allclose(terms.ce, masked_mean(torch_ce, batch["answer_mask"]))


def test_label_smoothing_zero_is_bit_identical_to_the_plain_cross_entropy():
    logits, hidden, batch = toy_inputs(seed=3)
    # the cross-entropy as compute_losses computed it before label smoothing existed
    token_ce = F.nll_loss(F.log_softmax(logits.float(), dim=-1).flatten(0, 1), batch["targets"].flatten(),
                          reduction="none").view_as(batch["targets"])
    before = masked_mean(token_ce, batch["answer_mask"])
    for config in (LossConfig(), LossConfig(label_smoothing=0.0)):
        terms = compute_losses(logits, None, batch["targets"], batch["answer_mask"], batch["valid_mask"], config, 0.0)
        assert torch.equal(terms.ce, before) and torch.equal(terms.total, before)
    smoothed = compute_losses(logits, None, batch["targets"], batch["answer_mask"], batch["valid_mask"],
                              LossConfig(label_smoothing=1e-3), 0.0)
    assert not torch.equal(smoothed.ce, before)


def test_weight_zero_costs_nothing(monkeypatch):
    logits, hidden, batch = toy_inputs()

    def forbidden(*args, **kwargs):
        raise AssertionError("entropy computed although its weight is 0")

    monkeypatch.setattr(losses, "entropy_from_logits", forbidden)
    terms = compute_losses(logits, None, batch["targets"], batch["answer_mask"], batch["valid_mask"], LossConfig(), 0.0)
    assert terms.entropy is None and terms.continuity is None
    assert torch.equal(terms.total, terms.ce)
    assert terms.logged()["entropy_loss"] == 0.0


@pytest.mark.parametrize("mode", ["drop_high", "keep_high"])
def test_entropy_mask_selects_the_ce_tokens(mode):
    logits, hidden, batch = toy_inputs()
    config = LossConfig(entropy_mask=mode, entropy_mask_quantile=0.6)
    terms = compute_losses(logits, None, batch["targets"], batch["answer_mask"], batch["valid_mask"], config, 0.0)
    high = high_entropy_mask(entropy_from_logits(logits), batch["answer_mask"], 0.6)
    assert 0 < int(high.sum()) < int(batch["answer_mask"].sum())
    chosen = batch["answer_mask"] & ~high if mode == "drop_high" else high
    assert torch.allclose(terms.ce, reference_cross_entropy(logits, batch["targets"], chosen))
    assert terms.logged()["ce_tokens"] == float(chosen.sum())


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = ArithmeticDecoder(ModelConfig()).train()
    batch = batch_of(["^123+45=861$", "^7+8=51$____", "^99+99=891$_"])
    config = LossConfig(entropy_weight=0.1, continuity_weight=0.1, continuity_on=2, entropy_mask="drop_high",
                        entropy_mask_quantile=0.5)
    logits, hidden = model(batch["inputs"], return_hidden=True)
    terms = compute_losses(logits, hidden, batch["targets"], batch["answer_mask"], batch["valid_mask"], config, 0.1)
    terms.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_adaptive_coefficient_moves_entropy_to_the_target():
    """A toy policy: one distribution over 8 tokens, pulled to a one-hot by CE, pushed up by the bonus."""
    torch.manual_seed(0)
    config = LossConfig(entropy_target=1.5, entropy_coef_init=0.01, entropy_coef_lr=0.02)
    adaptive = AdaptiveEntropyCoefficient(config)
    alpha_optimizer = adaptive.configure_optimizer()
    logits = torch.zeros(1, 1, 8)
    logits[0, 0, 0] = 6.0  # starts far below the target: ~0.1 bits
    logits.requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    targets = torch.zeros(1, 1, dtype=torch.long)
    mask = torch.ones(1, 1, dtype=torch.bool)
    coefficients = []
    for _ in range(500):
        terms = compute_losses(logits, None, targets, mask, mask, config, adaptive.coefficient())
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        alpha_optimizer.zero_grad()
        adaptive.loss(terms.logged()["entropy_bits"]).backward()
        alpha_optimizer.step()
        coefficients.append(float(adaptive.coefficient()))
    bits = float(to_bits(entropy_from_logits(logits.detach())))
    assert bits == pytest.approx(1.5, abs=0.1)
    assert coefficients[0] < 0 and coefficients[100] < coefficients[0]  # the bonus grew while entropy was low
    # above the target the bonus shrinks: one step with entropy 3 bits lowers alpha
    before = float(adaptive.log_alpha.detach())
    alpha_optimizer.zero_grad()
    adaptive.loss(3.0).backward()
    alpha_optimizer.step()
    assert float(adaptive.log_alpha.detach()) < before
    # resumable: the state round-trips
    restored = AdaptiveEntropyCoefficient(config)
    restored.load_state_dict(adaptive.state_dict())
    assert float(restored.coefficient()) == float(adaptive.coefficient())


# --- two gloo ranks ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_TEXTS = [["^123+45=861$", "^7+8=51$", "^99+99=891$", "^5-7=2-$"],  # rank 0: width 12
             ["^1+1=2$", "^12+9=12$", "^3-1=2$"]]  # rank 1: fewer rows, width 9
DDP_CONFIG = LossConfig(entropy_weight=-0.05, continuity_weight=0.2, continuity_positions="all",
                        entropy_mask="drop_high", entropy_mask_quantile=0.7)


def _ddp_inputs(texts, feature_seed=0, width=None):
    """Logits and hidden from shared weights (W_out, W_h) applied to per-token features."""
    torch.manual_seed(feature_seed)
    w_out = torch.randn(6, VOCAB_SIZE, requires_grad=True)
    w_h = torch.randn(6, 4, requires_grad=True)
    all_texts = [t for rank in DDP_TEXTS for t in rank]
    features = torch.randn(len(all_texts), 11, 6)  # one feature row per (problem, position)
    index = [all_texts.index(t) for t in texts]
    batch = batch_of(texts if width is None else [t + "_" * (width - len(t)) for t in texts])
    x = features[index, :batch["inputs"].shape[1]]
    return w_out, w_h, x @ w_out, [x @ w_h], batch


def _ddp_worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        w_out, w_h, logits, hidden, batch = _ddp_inputs(DDP_TEXTS[rank])
        terms = compute_losses(logits, hidden, batch["targets"], batch["answer_mask"], batch["valid_mask"],
                               DDP_CONFIG, DDP_CONFIG.entropy_weight)
        terms.total.backward()
        high = high_entropy_mask(entropy_from_logits(logits.detach()), batch["answer_mask"], 0.5)
        values = torch.arange(batch["valid_mask"].numel(), dtype=torch.float32).view_as(batch["valid_mask"])
        mean = losses.global_average(masked_mean(values, batch["valid_mask"]))
        torch.save({"logged": terms.logged(), "grad_out": w_out.grad, "grad_h": w_h.grad, "high": high,
                    "mean": mean, "values": values}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # one process over the concatenated batch (rank 1 padded to rank 0's width)
    texts = DDP_TEXTS[0] + DDP_TEXTS[1]
    w_out, w_h, logits, hidden, batch = _ddp_inputs(texts, width=12)
    terms = compute_losses(logits, hidden, batch["targets"], batch["answer_mask"], batch["valid_mask"],
                           DDP_CONFIG, DDP_CONFIG.entropy_weight)
    terms.total.backward()
    single = terms.logged()
    for name, value in single.items():
        for r in range(2):
            assert ranks[r]["logged"][name] == pytest.approx(value, rel=1e-5), name
    # DDP averages gradients over ranks: the average must be the one-process gradient
    assert torch.allclose((ranks[0]["grad_out"] + ranks[1]["grad_out"]) / 2, w_out.grad, atol=1e-5)
    assert torch.allclose((ranks[0]["grad_h"] + ranks[1]["grad_h"]) / 2, w_h.grad, atol=1e-5)

    # the high-entropy threshold is taken over the tokens of both ranks
    high = high_entropy_mask(entropy_from_logits(logits.detach()), batch["answer_mask"], 0.5)
    n0 = len(DDP_TEXTS[0])
    assert torch.equal(ranks[0]["high"], high[:n0])
    assert torch.equal(ranks[1]["high"], high[n0:, :ranks[1]["high"].shape[1]])
    assert not high[n0:, ranks[1]["high"].shape[1]:].any()

    # the global-count mean is the mean over every rank's tokens
    valid = [batch_of(t)["valid_mask"] for t in DDP_TEXTS]
    want = torch.cat([ranks[r]["values"][valid[r]] for r in range(2)]).mean()
    assert float(ranks[0]["mean"]) == pytest.approx(float(want)) == pytest.approx(float(ranks[1]["mean"]))


def test_no_process_group_is_the_plain_mean():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, float("nan"), 4.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert float(masked_mean(values, mask)) == pytest.approx(2.5)
    assert float(masked_mean(values, torch.zeros_like(mask))) == 0.0
    assert dataclasses.is_dataclass(LossConfig())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_step_with_every_loss():
    torch.manual_seed(0)
    model = ArithmeticDecoder(ModelConfig()).cuda().train()
    batch = {k: v.cuda() for k, v in batch_of(["^123+45=861$", "^7+8=51$____", "^99+99=891$_"]).items()}
    config = LossConfig(entropy_target=2.0, continuity_weight=0.1, entropy_mask="keep_high")
    adaptive = AdaptiveEntropyCoefficient(config).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, hidden = model(batch["inputs"], return_hidden=True)
        terms = compute_losses(logits, hidden, batch["targets"], batch["answer_mask"], batch["valid_mask"], config,
                               adaptive.coefficient())
    terms.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    adaptive.loss(terms.logged()["entropy_bits"]).backward()
    assert adaptive.log_alpha.grad is not None
    entropies = entropy_from_logits(logits.detach())
    assert torch.equal(high_entropy_mask(entropies, batch["answer_mask"], 0.7).cpu(),
                       high_entropy_mask(entropies.cpu(), batch["answer_mask"].cpu(), 0.7))

"""ArithmeticDecoder: positions, hidden states, KV-cache generation against full recomputation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from language_entropy.batches import place_value_positions
from language_entropy.generation import _choose, generate, generate_batched
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import POS_ENCODINGS, ModelConfig
from language_entropy.tokenizer import (
    BOS_ID,
    EOS_ID,
    EQUALS_ID,
    PAD_ID,
    STOI,
    VOCAB_SIZE,
    encode,
)

SMALL = dict(n_layer=2, n_head=2, n_embd=32, max_seq_len=40)


def chaotic_model(pos_encoding: str, seed: int = 0, **overrides) -> ArithmeticDecoder:
    """A small float64 model with large random weights, so greedy decoding varies from step to step
    (a freshly initialised model only repeats its last token) and no argmax is a near tie."""
    torch.manual_seed(seed)
    model = ArithmeticDecoder(ModelConfig(pos_encoding=pos_encoding, **{**SMALL, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.6)
    return model.double().eval()


def random_prompts(batch: int, a_digits: int, b_digits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        a = "".join(str(d) for d in torch.randint(0, 10, (a_digits,), generator=g).tolist())
        b = "".join(str(d) for d in torch.randint(0, 10, (b_digits,), generator=g).tolist())
        rows.append(encode(f"^{a}+{b}="))
    return torch.tensor(rows)


def force_eos_after_seven(model: ArithmeticDecoder):
    """Make EOS the argmax wherever the model would emit '7': rows then stop at different steps."""
    def hook(module, inputs, logits):
        seven = (logits.argmax(dim=-1, keepdim=True) == STOI["7"]).to(logits.dtype)
        eos = F.one_hot(torch.tensor(EOS_ID, device=logits.device), VOCAB_SIZE).to(logits.dtype)
        return logits + 100.0 * seven * eos
    return model.lm_head.register_forward_hook(hook)


def without_pad_and_bos(logits: torch.Tensor) -> torch.Tensor:
    """Generation's mask, written out independently: PAD and BOS logits (last dim) set to -inf."""
    return logits.index_fill(-1, torch.tensor([PAD_ID, BOS_ID], device=logits.device), float("-inf"))


def greedy_by_recomputation(model, prompts, max_new_tokens):
    """The reference: run the whole sequence again for every new token, no cache."""
    seq, finished = prompts, torch.zeros(len(prompts), dtype=torch.bool, device=prompts.device)
    tokens, probs, hidden = [], [], []
    for _ in range(max_new_tokens):
        logits, states = model(seq, return_hidden=True)
        last = without_pad_and_bos(logits[:, -1])  # (B, V)
        token = torch.where(finished, PAD_ID, last.argmax(-1))
        tokens.append(token)
        probs.append(F.softmax(last, dim=-1))
        hidden.append([h[:, -1] for h in states])
        finished |= token == EOS_ID
        if finished.all():
            break
        seq = torch.cat([seq, token[:, None]], dim=1)
    return torch.stack(tokens, 1), torch.stack(probs, 1), [torch.stack(h, 1) for h in zip(*hidden, strict=True)]


# --- forward -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_forward_shapes_and_hidden(pos_encoding):
    torch.manual_seed(0)
    config = ModelConfig(pos_encoding=pos_encoding)
    model = ArithmeticDecoder(config).eval()
    idx = random_prompts(5, 3, 2, seed=1)
    logits, hidden = model(idx, return_hidden=True)
    assert logits.shape == (5, idx.shape[1], VOCAB_SIZE)
    assert len(hidden) == config.n_layer + 1
    assert all(h.shape == (5, idx.shape[1], config.n_embd) for h in hidden)
    # hidden[-1] is the last block's output before the final norm; the head reads its norm
    assert torch.allclose(model.lm_head(model.norm_f(hidden[-1])), logits, atol=1e-6)
    assert torch.equal(model(idx), logits)
    assert model.tok_emb.weight is model.lm_head.weight  # tied


def test_sequence_longer_than_max_seq_len_is_refused():
    model = ArithmeticDecoder(ModelConfig(**SMALL)).eval()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.full((1, 41), BOS_ID))
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, random_prompts(1, 3, 3, seed=0), max_new_tokens=40)


def test_abacus_indices_follow_place_values():
    model = ArithmeticDecoder(ModelConfig(pos_encoding="abacus")).eval()
    idx = torch.tensor([encode("^123+4567=")])
    expected = torch.tensor([[0, 3, 2, 1, 0, 4, 3, 2, 1, 0]])
    assert torch.equal(model.abacus_indices(idx), expected)
    _, hidden = model(idx, return_hidden=True)
    assert torch.allclose(hidden[0], model.tok_emb(idx) + model.pos_emb(expected))


def test_abacus_training_offset_is_one_per_sequence_and_seeded():
    config = ModelConfig(pos_encoding="abacus", abacus_max_offset=4, abacus_offset_equals=True)
    model = ArithmeticDecoder(config).train()
    idx = torch.tensor([encode("^123+4567=")] * 200)
    base = place_value_positions(idx)
    torch.manual_seed(3)
    shifted = model.abacus_indices(idx)
    offset = shifted - base
    moved = (base > 0) | (idx == EQUALS_ID)  # digits, and '=' as the answer's place 0
    assert torch.equal(offset[~moved], torch.zeros_like(offset[~moved]))  # BOS and operators keep row 0
    per_row = offset[:, 1]
    assert torch.equal(offset * moved, per_row[:, None] * moved)  # one offset for the whole sequence
    assert torch.equal(shifted[:, -1], per_row)  # '=' sits at row 0 + offset
    assert set(per_row.tolist()) == {0, 1, 2, 3, 4}
    torch.manual_seed(3)
    assert torch.equal(model.abacus_indices(idx), shifted)  # the global RNG reproduces it
    assert int(shifted.max()) < model.pos_emb.num_embeddings


def test_by_default_only_digits_take_the_offset():
    model = ArithmeticDecoder(ModelConfig(pos_encoding="abacus")).train()
    idx = torch.tensor([encode("^123+4567=")] * 2)
    shifted = model.abacus_indices(idx, offset=torch.tensor([0, 3]))
    assert shifted.tolist() == [[0, 3, 2, 1, 0, 4, 3, 2, 1, 0], [0, 6, 5, 4, 0, 7, 6, 5, 4, 0]]
    with_equals = ArithmeticDecoder(ModelConfig(pos_encoding="abacus", abacus_offset_equals=True)).train()
    assert with_equals.abacus_indices(idx, offset=torch.tensor([0, 3]))[:, -1].tolist() == [0, 3]
    # A negative answer's first digit is emitted at its '-', which then takes the offset too
    negative = torch.tensor([encode("^7-12=-5$")])
    assert with_equals.abacus_indices(negative, offset=torch.tensor([2])).tolist() == [[0, 3, 0, 4, 3, 2, 2, 3, 0]]


def test_abacus_generation_uses_place_values_of_the_full_sequence():
    model = chaotic_model("abacus", seed=4)
    prompts = random_prompts(16, 3, 2, seed=5)
    seen = []
    hook = model.pos_emb.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    out = generate(model, prompts, max_new_tokens=12)
    hook.remove()
    fed = torch.cat([prompts, out.tokens[:, :-1]], dim=1)  # every token the model read
    assert torch.equal(torch.cat(seen, dim=1), place_value_positions(fed))
    assert (place_value_positions(fed)[:, prompts.shape[1]:] > 1).any()  # answer digits were counted


def test_dropout_is_active_only_in_training():
    model = ArithmeticDecoder(ModelConfig(dropout=0.3, **SMALL))
    idx = random_prompts(4, 3, 3, seed=0)
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


def test_bf16_autocast_forward_and_generate():
    torch.manual_seed(0)
    model = ArithmeticDecoder(ModelConfig(pos_encoding="rope", **SMALL)).eval()
    prompts = random_prompts(3, 2, 2, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, hidden = model(prompts, return_hidden=True)
        out = generate(model, prompts, max_new_tokens=5, temperature=1.0, return_probs=True, return_hidden=True)
    assert logits.dtype == torch.bfloat16
    assert out.tokens.shape[0] == 3 and torch.isfinite(out.probs).all()


# --- generation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_kv_cache_greedy_equals_full_recomputation(pos_encoding):
    model = chaotic_model(pos_encoding)
    prompts = random_prompts(24, 3, 3, seed=1)
    hook = force_eos_after_seven(model)
    out = generate(model, prompts, max_new_tokens=14, return_probs=True, return_hidden=True)
    tokens, probs, hidden = greedy_by_recomputation(model, prompts, 14)
    hook.remove()
    assert torch.equal(out.tokens, tokens)
    assert torch.allclose(out.probs, probs, atol=1e-10)
    assert len(out.hidden) == model.config.n_layer + 1
    for got, want in zip(out.hidden, hidden, strict=True):
        assert torch.allclose(got, want, atol=1e-10)
    ended = (tokens == EOS_ID).any(dim=1)
    assert ended.any() and not ended.all()  # the case is a real one: some rows stop early, some run on


def test_rows_stop_at_eos_and_loop_ends_when_all_have():
    model = chaotic_model("abacus", seed=2)
    hook = force_eos_after_seven(model)
    out = generate(model, random_prompts(32, 2, 3, seed=3), max_new_tokens=30)
    hook.remove()
    for row in out.tokens.tolist():
        if EOS_ID in row:
            after = row[row.index(EOS_ID) + 1:]
            assert after == [PAD_ID] * len(after)
        else:
            assert PAD_ID not in row
    if (out.tokens == EOS_ID).any(dim=1).all():
        assert out.tokens.shape[1] < 30
        assert (out.tokens[:, -1] == EOS_ID).any()  # the last step is the one where the last row ended


def test_sampling_is_reproducible_with_a_generator():
    model = chaotic_model("rope", seed=1)
    prompts = random_prompts(32, 3, 3, seed=2)

    def sample(seed, **kwargs):
        return generate(model, prompts, 10, temperature=1.0, generator=torch.Generator().manual_seed(seed),
                              **kwargs).tokens

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))
    assert torch.equal(sample(7, top_k=5, top_p=0.9), sample(7, top_k=5, top_p=0.9))


def test_top_k_one_and_tiny_top_p_equal_greedy():
    model = chaotic_model("learned", seed=3)
    prompts = random_prompts(32, 3, 2, seed=4)
    greedy = generate(model, prompts, 10).tokens
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, prompts, 10, temperature=1.3, top_k=1, generator=gen).tokens, greedy)
    assert torch.equal(generate(model, prompts, 10, temperature=1.3, top_p=1e-6, generator=gen).tokens, greedy)


def test_probs_are_before_filtering_and_at_temperature():
    model = chaotic_model("abacus", seed=5)
    prompts = random_prompts(4, 2, 2, seed=0)
    logits = without_pad_and_bos(model(prompts)[:, -1])  # generation never picks PAD or BOS
    out = generate(model, prompts, 1, temperature=2.0, top_k=2, return_probs=True,
                         generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.probs[:, 0], F.softmax(logits / 2.0, dim=-1))
    greedy = generate(model, prompts, 1, return_probs=True)
    assert torch.allclose(greedy.probs[:, 0], F.softmax(logits, dim=-1))  # temperature 0: the model's own


def test_sampler_follows_the_filtered_distribution():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0]).clamp_min(1e-30)).expand(40_000, 5)
    gen = torch.Generator().manual_seed(0)

    def frequencies(**kwargs):
        uniform = torch.rand((len(logits), 1), generator=gen)
        token, _ = _choose(logits, 1.0, kwargs.get("top_k"), kwargs.get("top_p"), uniform, False)
        return torch.bincount(token, minlength=5).float() / len(token)

    assert torch.allclose(frequencies(), torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0]), atol=0.01)
    assert torch.allclose(frequencies(top_k=2), torch.tensor([4 / 7, 3 / 7, 0, 0, 0]), atol=0.01)
    # nucleus 0.75: 0.4 + 0.3 < 0.75, so the third token is needed too
    assert torch.allclose(frequencies(top_p=0.75), torch.tensor([4 / 9, 3 / 9, 2 / 9, 0, 0]), atol=0.01)


def test_generate_batched_keeps_the_original_order():
    model = chaotic_model("abacus", seed=6)
    prompts = [row.tolist() for row in random_prompts(5, 3, 2, seed=1)]
    prompts += [row.tolist() for row in random_prompts(4, 1, 3, seed=2)]
    prompts += [row.tolist() for row in random_prompts(3, 2, 2, seed=3)]
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0)).tolist()
    prompts = [prompts[i] for i in order]
    out = generate_batched(model, prompts, batch_size=2, max_new_tokens=8, return_probs=True, return_hidden=True)
    assert out.tokens.shape == (12, 8) and out.probs.shape == (12, 8, VOCAB_SIZE)
    assert len(out.hidden) == model.config.n_layer + 1
    for row, prompt in enumerate(prompts):
        single = generate(model, torch.tensor([prompt]), 8, return_probs=True, return_hidden=True)
        steps = single.tokens.shape[1]
        assert torch.equal(out.tokens[row, :steps], single.tokens[0])
        assert (out.tokens[row, steps:] == PAD_ID).all()
        assert torch.allclose(out.probs[row, :steps].double(), single.probs[0], atol=1e-6)
        assert torch.allclose(out.hidden[-1][row, :steps].double(), single.hidden[-1][0], atol=1e-5)


def favour_pad_then(model: ArithmeticDecoder, answer: str):
    """Logits hook: PAD (+1000) and then BOS (+900) have by far the largest logits at every step;
    after them, step s favours (+50) the s-th token of `answer` + EOS, cycling, so that every
    `generate` call that reaches the final EOS uses exactly len(answer) + 1 steps."""
    wanted = [*encode(answer), EOS_ID]
    calls = []

    def hook(module, inputs, logits):
        bias = torch.zeros(VOCAB_SIZE, dtype=logits.dtype, device=logits.device)
        bias[wanted[len(calls) % len(wanted)]] = 50.0
        bias[PAD_ID], bias[BOS_ID] = 1000.0, 900.0
        calls.append(None)
        return logits + bias
    return model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0), dict(temperature=1.5, top_k=3, top_p=0.9)],
                         ids=["greedy", "sampled", "top-k-top-p"])
def test_generation_never_emits_pad_or_bos(sampling):
    torch.manual_seed(0)
    model = ArithmeticDecoder(ModelConfig(pos_encoding="abacus", **SMALL)).eval()
    prompts = [row.tolist() for row in random_prompts(5, 3, 2, seed=1)]
    prompts += [row.tolist() for row in random_prompts(3, 1, 1, seed=2)]
    hook = favour_pad_then(model, "407")
    unmasked = model(torch.tensor(prompts[:5]))[:, -1]
    hook.remove()
    assert (unmasked.argmax(-1) == PAD_ID).all()  # the model itself would answer PAD
    assert (unmasked.topk(2).indices[:, 1] == BOS_ID).all()  # and then BOS
    hook = favour_pad_then(model, "407")
    out = generate_batched(model, prompts, batch_size=3, max_new_tokens=6, return_probs=True,
                           generator=torch.Generator().manual_seed(0), **sampling)
    hook.remove()
    answer = encode("407") + [EOS_ID, PAD_ID, PAD_ID]  # digits, EOS, then only the batch padding
    assert out.tokens.tolist() == [answer] * len(prompts)
    emitted = out.probs[:, :4]  # (B, 4, V): the steps that chose 4, 0, 7 and EOS
    assert (emitted[..., [PAD_ID, BOS_ID]] == 0).all()  # the distribution sampled from: PAD and BOS masked
    assert torch.allclose(emitted.sum(-1), torch.ones(len(prompts), 4))


# --- CUDA (skipped without a GPU) ----------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_cuda_kv_cache_greedy_equals_full_recomputation(pos_encoding):
    model = chaotic_model(pos_encoding).cuda()
    prompts = random_prompts(24, 3, 3, seed=1).cuda()
    hook = force_eos_after_seven(model)
    out = generate(model, prompts, max_new_tokens=14, return_probs=True, return_hidden=True)
    with torch.no_grad():
        tokens, probs, _ = greedy_by_recomputation(model, prompts, 14)
    hook.remove()
    assert out.tokens.device.type == "cuda"
    assert torch.equal(out.tokens, tokens)
    assert torch.allclose(out.probs, probs, atol=1e-10)


@needs_cuda
def test_cuda_bf16_sampling_with_any_generator():
    torch.manual_seed(0)
    model = ArithmeticDecoder(ModelConfig()).cuda().eval()
    prompts = random_prompts(64, 3, 3, seed=2).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, hidden = model(prompts, return_hidden=True)
        runs = [generate(model, prompts, 8, temperature=1.0, top_p=0.95, return_probs=True, return_hidden=True,
                               generator=torch.Generator(device=device).manual_seed(1)).tokens
                for device in ("cuda", "cuda", "cpu", "cpu")]
    assert logits.dtype == torch.bfloat16 and len(hidden) == 4
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[2], runs[3])
    out = generate_batched(model, [p.tolist() for p in prompts[:5].cpu()], batch_size=2, max_new_tokens=4)
    assert out.tokens.shape == (5, 4)

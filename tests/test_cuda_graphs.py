"""The GPU fast path: a training step that never waits for the device, captured in a CUDA graph, and
generation captured in one. The CPU tests check what runs everywhere (the deferred divergence check,
padding to one width, the sampler's up-front draws); the CUDA tests skip without a GPU."""

import io
import math

import numpy as np
import pytest
import torch

from language_entropy.batches import batch_from_tokens, encode_batch
from language_entropy.data import with_text
from language_entropy.generation import _CAPTURED, generate
from language_entropy.losses import compute_losses
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import DigitRange, LossConfig, ModelConfig, TrainConfig
from language_entropy.problems import draw_problems
from language_entropy.tokenizer import EQUALS_ID, PAD_ID
from language_entropy.training import Trainer, TrainingDiverged

SMALL_MODEL = ModelConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=24)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def texts(n: int, seed: int = 0, digits: DigitRange | None = None) -> list[str]:
    problems = draw_problems(np.random.default_rng(seed), ("add", "sub"), digits or DigitRange(1, 3), n)
    return with_text(problems, reverse=True)["text"].tolist()


def equal_length_texts(n: int, seed: int = 0) -> list[str]:
    """3-digit additions with 4-digit sums: every row has the same tokens count, so an eager step and a
    captured one (padded to the split's width) see tensors of one shape."""
    problems = draw_problems(np.random.default_rng(seed), ("add",), DigitRange(3, 3), 8 * n)
    rows = [text for text in with_text(problems, reverse=True)["text"] if len(text) == len("865+136=1001$")]
    return rows[:n]


def trainer(device="cpu", loss: LossConfig | None = None, train_texts=None, **train) -> Trainer:
    config = TrainConfig(**{"steps": 40, "batch_size": 16, "warmup_steps": 2, "eval_every": 1000, "log_every": 25,
                            "checkpoint_every": 1000, **train})
    return Trainer(SMALL_MODEL, loss or LossConfig(), config, seed=0, train_texts=train_texts or texts(200),
                   val_texts=texts(20, seed=1), device=torch.device(device))


def poison_after(model: ArithmeticDecoder) -> None:
    with torch.no_grad():
        model.lm_head.weight[3, 0] = math.nan  # every logit row turns NaN from the next forward on


def fit_poisoned_at(trainer: Trainer, poison_step: int) -> TrainingDiverged:
    """Run `fit` and make the weights NaN once `poison_step` steps are done; the error it raises."""
    def stop_requested():  # called after every step: the hook that poisons the model at a known step
        if trainer.step == poison_step:
            poison_after(trainer.model)
        return None

    with pytest.raises(TrainingDiverged) as raised:
        trainer.fit(on_eval=lambda row: None, on_checkpoint=lambda state: None, stop_requested=stop_requested,
                    on_log=lambda step, values: None)
    return raised.value


# --- everywhere ------------------------------------------------------------------------------------------


def test_a_diverged_step_is_named_at_the_next_read_of_the_log():
    run = trainer()
    error = fit_poisoned_at(run, poison_step=7)
    # step 8 is the first taken with NaN weights; the loop reads the log every 25 steps (log_every), so it
    # stops there, having taken steps 8..25 without a host sync, and names step 8 and the CE
    assert str(error) == "ce_loss became nan at step 8"
    assert run.step == 25


def test_flush_log_gives_every_step_since_the_last_read_and_the_terms_of_a_direct_call():
    run = trainer(loss=LossConfig(entropy_weight=0.1))
    for _ in range(3):
        run.train_step()
    rows = run.flush_log()
    assert list(rows) == [1, 2, 3] and run.flush_log() == {}
    # the logged values of a step are its LossTerms' global means: recompute step 4 by hand from a copy
    tokens, offsets = run.local_batch(run.step, run.sampler.indices(run.step))
    copy = Trainer(SMALL_MODEL, run.loss_config, run.config, 0, texts(200), texts(20, seed=1), torch.device("cpu"))
    copy.restore(torch.load(io.BytesIO(saved(run.state())), weights_only=True))
    expected = copy.update(tokens, offsets).logged()
    run.train_step()
    assert run.flush_log()[4] == expected


def saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_padding_a_batch_wider_changes_no_loss_term():
    """The captured step pads every batch to the split's longest row: the terms are those of the batch."""
    torch.manual_seed(0)
    model = ArithmeticDecoder(SMALL_MODEL).eval()
    config = LossConfig(entropy_weight=0.2, continuity_weight=0.3, continuity_positions="all", entropy_mask="drop_high")
    batch = encode_batch(texts(32, seed=3))
    tokens = batch["tokens"]
    wider = torch.cat([tokens, torch.full((len(tokens), 5), PAD_ID)], dim=1)
    values = []
    for ids in (tokens, wider):
        masks = batch_from_tokens(ids)
        logits, hidden = model(ids[:, :-1], return_hidden=True)
        terms = compute_losses(logits, hidden, ids[:, 1:], masks["answer_mask"], masks["valid_mask"], config, 0.2)
        values.append(terms.logged())
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_sampling_draws_every_uniform_before_the_first_step():
    """max_new_tokens x B uniforms, however early the rows end: the generator then moves by as much as
    one torch.rand of that shape, so the eager loop and a captured one draw the same numbers."""
    torch.manual_seed(0)
    model = ArithmeticDecoder(SMALL_MODEL).eval()
    prompts = encode_batch(["12+34=", "56+78="])["tokens"]  # BOS + prompt
    generator = torch.Generator().manual_seed(5)
    generate(model, prompts, 9, temperature=1.0, generator=generator)
    reference = torch.Generator().manual_seed(5)
    torch.rand((9, 2, 1), generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


# --- CUDA ------------------------------------------------------------------------------------------------

LOSS_CONFIGS = {
    "ce": LossConfig(),
    "entropy": LossConfig(entropy_weight=0.1),
    "entropy_bonus_t0.7": LossConfig(entropy_weight=-0.1, entropy_temperature=0.7, entropy_chunk_size=64),
    "continuity_l2_final": LossConfig(continuity_weight=0.1),
    "continuity_cosine_layer1_all": LossConfig(continuity_weight=0.1, continuity_metric="cosine", continuity_on=1,
                                               continuity_positions="all"),
    "drop_high": LossConfig(entropy_weight=0.05, entropy_mask="drop_high"),
    "keep_high": LossConfig(entropy_mask="keep_high", entropy_mask_quantile=0.5),
    "adaptive": LossConfig(entropy_target=1.0),
    "label_smoothing": LossConfig(label_smoothing=0.1),
}


@needs_cuda
@pytest.mark.parametrize("name", LOSS_CONFIGS)
def test_captured_and_eager_steps_agree(name):
    """On CUDA the eager step runs the captured step's kernels (AdamW capturable in both), so the two agree
    to rounding; a high-entropy mask would turn a rounding difference into another set of CE tokens."""
    data = equal_length_texts(200)
    runs = {graphs: trainer("cuda", LOSS_CONFIGS[name], data, cuda_graphs=graphs) for graphs in (True, False)}
    logs = {}
    for graphs, run in runs.items():
        for _ in range(12):
            run.train_step()
        logs[graphs] = run.flush_log()
    assert runs[True]._graph is not None and runs[False]._graph is None
    for step in logs[False]:
        assert logs[True][step] == pytest.approx(logs[False][step], rel=2e-3, abs=1e-5), step
    for name_, weight in runs[False].model.state_dict().items():
        assert torch.allclose(runs[True].model.state_dict()[name_], weight, atol=2e-3), name_


@needs_cuda
def test_captured_resume_is_bit_exact():
    whole = trainer("cuda", LossConfig(entropy_weight=0.1, continuity_weight=0.1))
    for _ in range(6):
        whole.train_step()
    halfway = saved(whole.state())
    for _ in range(6):
        whole.train_step()
    resumed = trainer("cuda", LossConfig(entropy_weight=0.1, continuity_weight=0.1))
    resumed.restore(torch.load(io.BytesIO(halfway), weights_only=True))
    for _ in range(6):
        resumed.train_step()
    assert whole._graph is not None and resumed._graph is not None
    for name, weight in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], weight), name
    assert resumed.flush_log() == {step: row for step, row in whole.flush_log().items() if step > 6}


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False])
def test_training_steps_never_wait_for_the_gpu(graphs):
    run = trainer("cuda", LossConfig(entropy_weight=0.1, entropy_mask="drop_high"), cuda_graphs=graphs)
    run.train_step()  # the capture (and the first allocations) may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            run.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(run.flush_log()) == 6


@needs_cuda
def test_a_diverged_captured_step_is_named():
    run = trainer("cuda")
    assert str(fit_poisoned_at(run, poison_step=7)) == "ce_loss became nan at step 8"


@needs_cuda
@pytest.mark.parametrize("pos_encoding", ["abacus", "rope", "learned"])
def test_captured_generation_emits_the_eager_tokens(pos_encoding):
    torch.manual_seed(0)
    model = ArithmeticDecoder(ModelConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=24,
                                          pos_encoding=pos_encoding)).cuda().eval()
    batches = [encode_batch(texts(64, seed=s, digits=DigitRange(2, 2)))["tokens"] for s in (4, 5)]
    for tokens in batches:  # the second call of a shape replays the graph captured by the first
        prompts = torch.stack([row[: int((row == EQUALS_ID).nonzero()[0]) + 1] for row in tokens
                               if int((row == EQUALS_ID).nonzero()[0]) == 6]).cuda()
        for options in ({}, {"temperature": 1.0, "top_p": 0.9}):
            outs = []
            for graphed in (False, True):
                model.graphed_generation = graphed
                generator = torch.Generator().manual_seed(3)
                outs.append(generate(model, prompts, 6, generator=generator, return_probs=True, return_hidden=True,
                                           **options))
            eager, captured = outs
            assert torch.equal(captured.tokens, eager.tokens)
            assert torch.equal(captured.probs, eager.probs)
            assert all(torch.equal(a, b) for a, b in zip(captured.hidden, eager.hidden, strict=True))
    assert len(_CAPTURED[model].graphs) == 2  # one per option set: the second batch replays them


def test_optimizer_state_saved_on_a_gpu_continues_on_a_cpu():
    """A CUDA run saves AdamW as captured steps need it (capturable, the learning rate and step counts as
    tensors); restored on a CPU it takes torch's default form again and trains on, as the plain state does."""
    run = trainer()
    for _ in range(3):
        run.train_step()
    plain = saved(run.state())
    as_on_gpu = torch.load(io.BytesIO(plain), weights_only=True)
    for group in as_on_gpu["optimizer"]["param_groups"]:
        group.update(capturable=True, lr=torch.tensor(group["lr"]))
    continued = []
    for state in (torch.load(io.BytesIO(plain), weights_only=True), as_on_gpu):
        copy = trainer()
        copy.restore(state)
        groups = copy.optimizer.param_groups
        assert all(not group["capturable"] and isinstance(group["lr"], float) for group in groups)
        for _ in range(3):
            copy.train_step()
        continued.append(copy.model.state_dict())
    for name, weight in continued[0].items():  # the float32 learning rate of one step rounds differently
        assert torch.allclose(continued[1][name], weight, atol=1e-6), name

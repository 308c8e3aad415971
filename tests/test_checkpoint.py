"""Checkpoints: atomic writes, weights_only loading that refuses code, models rebuilt from the file alone."""

from __future__ import annotations

import dataclasses
import os
import pickle

import pytest
import torch

from language_entropy import checkpoint
from language_entropy.checkpoint import load_checkpoint, load_model, model_payload, save_checkpoint
from language_entropy.errors import UserError
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import POS_ENCODINGS, ModelConfig
from language_entropy.tokenizer import encode


class WritesAFile:
    """Unpickling this with plain pickle creates `target`: a stand-in for code in a checkpoint."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_round_trip_reproduces_logits_exactly(tmp_path, pos_encoding):
    torch.manual_seed(0)
    config = ModelConfig(pos_encoding=pos_encoding, n_layer=2, n_embd=48, n_head=4, max_seq_len=32)
    model = ArithmeticDecoder(config).eval()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.tensor([encode("^12+3=51$")])).sum().backward()
    optimizer.step()  # so the optimizer state holds tensors too
    path = tmp_path / "nested" / "dir" / "model.pt"
    save_checkpoint(path, {**model_payload(model), "optimizer": optimizer.state_dict(), "step": 7})
    payload = load_checkpoint(path)
    assert payload["step"] == 7 and payload["model_config"] == dataclasses.asdict(config)
    loaded = load_model(path, "cpu")
    assert loaded.config == config and not loaded.training
    idx = torch.tensor([encode("^123+4567=")])
    assert torch.equal(loaded(idx), model(idx))
    assert torch.equal(load_model(payload)(idx), model(idx))
    torch.optim.AdamW(loaded.parameters()).load_state_dict(payload["optimizer"])
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temp file left behind


def test_model_payload_unwraps_wrappers():
    model = ArithmeticDecoder(ModelConfig(n_layer=1, n_embd=16, n_head=2))
    wrapper = torch.nn.Module()
    wrapper.module = model  # what DistributedDataParallel looks like
    assert list(model_payload(wrapper)["model_state"]) == list(model.state_dict())


@pytest.mark.parametrize("how", ["torch_save", "pickle_protocol_2", "pickle_protocol_5"])
def test_a_pickle_that_carries_code_is_refused(tmp_path, how):
    target = tmp_path / "pwned"
    assert pickle.loads(pickle.dumps(WritesAFile(str(tmp_path / "proof")))) is not None
    assert (tmp_path / "proof").exists()  # plain pickle would run it
    path = tmp_path / "evil.pt"
    if how == "torch_save":
        torch.save({"model_state": {}, "x": WritesAFile(str(target))}, path)
    else:
        path.write_bytes(pickle.dumps(WritesAFile(str(target)), protocol=int(how[-1])))
    # weights_only reads protocol 2 (what torch.save writes) and refuses the call to open; a newer
    # protocol it does not even parse: either way one line naming the file, and nothing runs
    with pytest.raises(UserError, match="refused to load" if how != "pickle_protocol_5" else "evil.pt: "):
        load_checkpoint(path)
    with pytest.raises(UserError, match="evil.pt"):
        load_model(path)
    assert not target.exists()


def test_truncated_file_is_a_user_error(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model_payload(ArithmeticDecoder(ModelConfig(n_layer=1, n_embd=16, n_head=2))))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="model.pt: not a readable checkpoint") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    path.write_bytes(b"")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)
    path.write_text("model: definitely not torch\n")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_payloads_that_do_not_describe_a_model(tmp_path):
    path = tmp_path / "other.pt"
    save_checkpoint(path, {"step": 3})
    with pytest.raises(UserError, match="not a model checkpoint"):
        load_model(path)
    payload = model_payload(ArithmeticDecoder(ModelConfig(n_layer=1, n_embd=16, n_head=2)))
    with pytest.raises(UserError, match="bad model_config"):
        load_model({**payload, "model_config": {**payload["model_config"], "n_head": 3}})
    with pytest.raises(UserError, match="weights do not match"):
        load_model({**payload, "model_config": {**payload["model_config"], "n_layer": 2}})
    torch.save([1, 2], path)
    with pytest.raises(UserError, match="not a dict"):
        load_checkpoint(path)


def test_save_refuses_what_weights_only_would_refuse(tmp_path):
    with pytest.raises(TypeError, match="ModelConfig"):
        save_checkpoint(tmp_path / "bad.pt", {"config": ModelConfig()})
    assert not (tmp_path / "bad.pt").exists()


def test_a_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"step": 1})

    def dies_half_way(obj, file):
        file.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.pt"]
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path) == {"step": 2}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_loads_on_cpu_and_back(tmp_path):
    torch.manual_seed(0)
    model = ArithmeticDecoder(ModelConfig()).cuda().eval()
    save_checkpoint(tmp_path / "m.pt", model_payload(model))
    idx = torch.tensor([encode("^123+4567=")])
    on_cpu = load_model(tmp_path / "m.pt", "cpu")
    on_gpu = load_model(tmp_path / "m.pt", "cuda")
    assert next(on_cpu.parameters()).device.type == "cpu"
    assert torch.equal(on_gpu(idx.cuda()), model(idx.cuda()))
    assert torch.allclose(on_cpu(idx), model(idx.cuda()).cpu(), atol=1e-4)

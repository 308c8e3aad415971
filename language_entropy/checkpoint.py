"""Atomic checkpoints that load without running code, and models rebuilt from them alone.

`save_checkpoint` writes a temp file beside the target, fsyncs it and renames it over the target,
so a kill at any moment leaves either the old or the new checkpoint, never half of one.
`load_checkpoint` reads with ``weights_only=True``: a pickle that carries code is refused before
anything in it runs. Payloads may hold only tensors, dicts, lists, tuples, str, int, float, bool
and None; `save_checkpoint` checks that, so a bad payload fails when written, not when read back.
Every checkpoint of a model carries its `ModelConfig` (`model_payload`), so `load_model` needs
no params.yaml.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from language_entropy.errors import ParamsError, UserError
from language_entropy.model import ArithmeticDecoder
from language_entropy.params import ModelConfig

_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value, where: str = "payload") -> None:
    if isinstance(value, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}, not a plain value")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}: checkpoints hold only tensors, dicts, lists, "
                    "tuples, str, int, float, bool and None (weights_only loading refuses anything else)")


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write `payload` to `path` atomically (temp file in the same directory, fsync, os.replace)."""
    path = Path(path)
    _check_plain(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name tells a later process whether the writer is gone (`stale_temp_files`)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows within one filesystem
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every platform can open a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def stale_temp_files(directory: Path, alive: Callable[[int], bool], writers_gone: bool = False) -> list[Path]:
    """Temp files `save_checkpoint` left in `directory` when its process was killed mid-write: those whose
    pid is not `alive`, and with `writers_gone` (the caller knows no one else writes there) also the
    pid-less ones of older versions."""
    stale = []
    for entry in directory.glob(".*.tmp") if directory.is_dir() else []:
        match = _TEMP.fullmatch(entry.name)
        if match and entry.is_file() and (not alive(int(match.group(1))) if match.group(1) else writers_gone):
            stale.append(entry)
    return stale


_TEMP = re.compile(r"\..+?\.(?:(\d+)\.)?[a-z0-9_]{8}\.tmp")  # mkstemp's 8 random characters


def model_config_differences(saved: dict, config: ModelConfig) -> list[str]:
    """Keys where a checkpoint's model config differs from params, as `model.key: saved -> params`."""
    current = dataclasses.asdict(config)
    return [f"model.{key}: {saved.get(key)!r} -> {value!r}"
            for key, value in current.items() if saved.get(key) != value]


def load_checkpoint(path: str | Path) -> dict:
    """The payload at `path`, on the CPU. Any problem is a one-line `UserError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint is not a file")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error).lower()
        if "weights only load failed" in message and "unsupported operand" not in message:
            raise UserError(f"{path}: refused to load: it holds code or objects other than plain data "
                            "(weights_only); nothing in it was run") from None
        raise UserError(f"{path}: not a readable checkpoint (truncated, or not written by torch.save)") from None
    except PermissionError:
        raise UserError(f"{path}: cannot read checkpoint (permission denied)") from None
    except Exception:  # a truncated zip, a text file, an empty file: torch raises many kinds (OSError too)
        raise UserError(f"{path}: not a readable checkpoint (truncated, or not written by torch.save)") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: not a checkpoint (holds a {type(payload).__name__}, not a dict)")
    return payload


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def model_payload(model: torch.nn.Module) -> dict:
    """{"model_config": dict, "model_state": state_dict}: enough to rebuild the model anywhere."""
    model = _unwrap(model)
    return {"model_config": dataclasses.asdict(model.config), "model_state": model.state_dict()}


def load_model(payload_or_path: dict | str | Path, device: torch.device | str = "cpu") -> ArithmeticDecoder:
    """An `ArithmeticDecoder` rebuilt from a payload (or a checkpoint file), on `device`, in eval mode."""
    if isinstance(payload_or_path, dict):
        payload, source = payload_or_path, "checkpoint"
    else:
        payload, source = load_checkpoint(payload_or_path), str(payload_or_path)
    if "model_config" not in payload or "model_state" not in payload:
        raise UserError(f"{source}: not a model checkpoint (needs model_config and model_state)")
    try:
        config = ModelConfig(**payload["model_config"])
    except (TypeError, ParamsError) as error:
        raise UserError(f"{source}: bad model_config ({error})") from None
    model = ArithmeticDecoder(config)
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as error:
        detail = " ".join(line.strip() for line in str(error).strip().splitlines()[:2])
        raise UserError(f"{source}: weights do not match model_config ({detail})") from None
    return model.to(device).eval()

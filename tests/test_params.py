"""params.yaml loading: every class of mistake is one line naming the key, the rule and the value."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from language_entropy.errors import ParamsError
from language_entropy.params import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, tree) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_repository_params_load_and_match_the_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params.data.operations == ("add", "sub")
    assert params.data.digits.min == 1 and params.data.ood_digits.max == 5
    assert params.flat()["loss.entropy_weight"] == 0.0
    assert params.flat()["loss.label_smoothing"] == 0.0
    assert set(params.flat()) == set(Params().flat())


def test_missing_keys_take_defaults(tmp_path):
    params = load_params(write(tmp_path, {"loss": {"entropy_weight": -0.5}}))
    assert params.loss.entropy_weight == -0.5  # negative is an entropy bonus, allowed
    assert params.train == Params().train


@pytest.mark.parametrize("tree, message", [
    ({"data": {"digits": {"min": 0, "max": 3}}}, "data.digits.min must be >= 1 (got 0)"),
    ({"data": {"digits": {"min": 4, "max": 3}}}, "data.digits.max must be >= min (4) (got 3)"),
    ({"data": {"ood_digits": {"min": 1, "max": 31}}}, "data.ood_digits.max must be <= 30 (got 31)"),
    ({"data": {"train_size": 0}}, "data.train_size must be > 0 (got 0)"),
    ({"data": {"ood_size": -5}}, "data.ood_size must be > 0 (got -5)"),
    ({"data": {"operations": ["add", "pow"]}}, "data.operations must be a subset of ['add', 'sub', 'mul', 'div'] "
                                               "(got 'pow')"),
    ({"data": {"operations": []}}, "data.operations must name at least one operation (got [])"),
    ({"data": {"reverse_answer": "yes"}}, "data.reverse_answer must be true or false (got 'yes')"),
    ({"data": {"train_size": 10.5}}, "data.train_size must be an integer (got 10.5)"),
    ({"data": {"colour": "red"}}, "data.colour is not a known key"),
    ({"datta": {}}, "datta is not a known key"),
    ({"loss": {"entropy_weight": float("nan")}}, "loss.entropy_weight must be finite (got nan)"),
    ({"loss": {"entropy_weight": float("inf")}}, "loss.entropy_weight must be finite (got inf)"),
    ({"loss": {"entropy_temperature": 0}}, "loss.entropy_temperature must be > 0 (got 0.0)"),
    ({"loss": {"continuity_metric": "l1"}}, "loss.continuity_metric must be 'l2' or 'cosine' (got 'l1')"),
    ({"loss": {"entropy_mask_quantile": 1.0}}, "loss.entropy_mask_quantile must be in (0, 1) (got 1.0)"),
    ({"loss": {"label_smoothing": 1.0}}, "loss.label_smoothing must be in [0, 1) (got 1.0)"),
    ({"loss": {"label_smoothing": -0.1}}, "loss.label_smoothing must be in [0, 1) (got -0.1)"),
    ({"loss": {"continuity_on": -1}}, "loss.continuity_on must be 'embedding', 'final' or a layer index >= 0"),
    ({"model": {"n_embd": 100, "n_head": 3}}, "model.n_embd must be divisible by n_head (3) (got 100)"),
    ({"model": {"pos_encoding": "alibi"}}, "model.pos_encoding must be one of ['abacus', 'rope', 'learned']"),
    ({"train": {"lr": -1e-3}}, "train.lr must be > 0 (got -0.001)"),
    ({"train": {"device": "tpu"}}, "train.device must be one of"),
    ({"eval": {"temperatures": [1.0, -0.5]}}, "eval.temperatures must all be >= 0 (0 = greedy) (got -0.5)"),
    ({"mlflow": {"experiment": " "}}, "mlflow.experiment must not be empty"),
    ({"seed": -1}, "seed must be in [0, 2**32) (got -1)"),
    ({"seed": True}, "seed must be an integer (got True)"),
    ({"data": {"operations": ["mul"], "digits": {"min": 1, "max": 30}}},
     "model.max_seq_len must be >= 125 to hold the longest problem (mul of 30-digit operands"),
    ({"loss": {"continuity_on": 4}}, "loss.continuity_on must be a hidden-state index 0..model.n_layer (3) (got 4)"),
    ({"viz": {"layers": [0, 5]}}, "viz.layers must be hidden-state indices 0..model.n_layer (3) (got 5)"),
])
def test_bad_values_name_key_rule_and_value(tmp_path, tree, message):
    with pytest.raises(ParamsError) as caught:
        load_params(write(tmp_path, tree))
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'params.yaml'}: ")
    assert message in text
    assert "\n" not in text


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML at line"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("- a list\n")
    with pytest.raises(ParamsError, match="must be a mapping of sections"):
        load_params(tmp_path / "params.yaml")


def test_stage_exits_2_with_one_line_and_writes_nothing(tmp_path):
    params = write(tmp_path, {"data": {"digits": {"min": 0, "max": 3}}, "paths": {"data": str(tmp_path / "data")}})
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "generate_data.py"), "--params", str(params)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"error: {params}: data.digits.min must be >= 1 (got 0)\n"
    assert not (tmp_path / "data").exists()


BROKEN_FILES = {  # what a params.yaml can be besides wrong values, and the line each gives
    "empty": (b"", "is empty (expected the sections seed, paths, data"),
    "not UTF-8": ("seed: 0\ndata:\n  operations: [add]  # caf\u00e9\n".encode("latin-1"),
                  "not UTF-8 text (byte 0xe9 at offset 40)"),
    "not YAML": (b"seed: 0\ndata: {operations: [add\n", "not valid YAML at line"),
}


@pytest.mark.parametrize("kind", list(BROKEN_FILES))
def test_every_stage_refuses_a_broken_params_file_with_one_line(tmp_path, kind):
    content, message = BROKEN_FILES[kind]
    params = tmp_path / "params.yaml"
    params.write_bytes(content)
    for script in sorted((ROOT / "stages").glob("*.py")):
        if script.name == "compare.py":  # the study report reads MLflow, not params.yaml
            continue
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 2, (script.name, done.stderr)
        assert done.stderr.startswith(f"error: params.yaml: {message}"), (script.name, done.stderr)
        assert done.stderr.count("\n") == 1, (script.name, done.stderr)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]  # nothing written

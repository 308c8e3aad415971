"""generate-data: exact answers, formats, disjoint splits, saturation and determinism."""

import hashlib
import operator
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from language_entropy import tokenizer
from language_entropy.batches import encode_batch
from language_entropy.data import DataSpaceError, generate_splits
from language_entropy.errors import ParamsError
from language_entropy.params import DataConfig, DigitRange, Params, RLConfig
from language_entropy.problems import draw_problems, reorder_answer, space_size

ROOT = Path(__file__).resolve().parents[1]
ALL_OPS = ("add", "sub", "mul", "div")


def python_answer(a: str, op: str, b: str) -> int:
    functions = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.floordiv}
    return functions[op](int(a), int(b))


def small_config(**overrides) -> DataConfig:
    fields = dict(operations=ALL_OPS, digits=DigitRange(1, 2), ood_digits=DigitRange(3, 3), train_size=2000,
                  val_size=200, test_size=200, ood_size=300)
    return DataConfig(**{**fields, **overrides})


def test_answers_match_python_ints_up_to_30_digits():
    rng = np.random.default_rng(0)
    problems = draw_problems(rng, ALL_OPS, DigitRange(25, 30), 400)
    for row in problems.itertuples():
        assert int(row.answer) == python_answer(str(row.a), row.op, str(row.b))
        assert len(str(row.a)) == row.a_digits and len(str(row.b)) == row.b_digits
    assert (problems["a_digits"] == 30).any()
    assert max(len(str(abs(x))) for x in problems["answer"]) > 50  # products beyond int64, exactly


def test_operand_lengths_and_ranges():
    rng = np.random.default_rng(1)
    problems = draw_problems(rng, ("div",), DigitRange(1, 3), 20000)
    b = problems["b"].astype(int)
    assert b.min() >= 1  # a 1-digit divisor is 1-9
    assert set(problems["a"][problems["a_digits"] == 1].astype(int)) == set(range(10))
    assert problems["a_digits"].value_counts(normalize=True).sub(1 / 3).abs().max() < 0.02


def test_text_format_in_both_orders():
    answers = ["861", "-335", "0", "1200"]
    assert [reorder_answer(answer, reverse=True) for answer in answers] == ["168", "-533", "0", "0021"]
    assert [reorder_answer(answer, reverse=False) for answer in answers] == answers
    assert [reorder_answer(reorder_answer(answer, True), True) for answer in answers] == answers  # its own inverse
    for reverse in (True, False):
        splits = generate_splits(small_config(reverse_answer=reverse), seed=3)
        for row in splits["test"].itertuples():
            symbol = tokenizer.OPERATOR_SYMBOLS[row.op]
            answer = int(row.answer)
            digits = str(abs(answer))[::-1] if reverse else str(abs(answer))
            assert row.text == f"{row.a}{symbol}{row.b}=" + ("-" if answer < 0 else "") + digits + "$"
            assert int(row.answer) == python_answer(row.a, row.op, row.b)


def test_splits_have_their_sizes_and_are_pairwise_disjoint():
    splits = generate_splits(small_config(), seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "val": 200, "test": 200, "ood": 300}
    keys = {name: set(zip(f["op"], f["a"], f["b"], strict=True)) for name, f in splits.items()}
    for name, frame in splits.items():
        assert len(keys[name]) == len(frame), f"{name} has duplicates"
    names = list(keys)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert not keys[first] & keys[second], (first, second)
    assert splits["ood"]["a_digits"].eq(3).all() and splits["ood"]["b_digits"].eq(3).all()


def test_small_buckets_saturate_and_drawing_goes_on():
    config = small_config(operations=("add",), train_size=9000, val_size=500, test_size=500)
    frame = pd.concat([generate_splits(config, seed=0)[s] for s in ("train", "val", "test")])
    one_by_one = frame[(frame["a_digits"] == 1) & (frame["b_digits"] == 1)]
    assert len(one_by_one) == 100  # every 1x1 addition, each once


def test_overlapping_ood_range_stays_disjoint():
    config = small_config(operations=("add",), digits=DigitRange(1, 1), ood_digits=DigitRange(1, 2),
                          train_size=60, val_size=20, test_size=20, ood_size=500)
    splits = generate_splits(config, seed=0)
    in_dist = set(pd.concat([splits[s] for s in ("train", "val", "test")])["text"])
    assert not in_dist & set(splits["ood"]["text"])


def test_requesting_more_than_the_space_names_split_and_counts():
    assert space_size(("add", "div"), DigitRange(1, 1)) == 100 + 90
    with pytest.raises(DataSpaceError, match=r"train \+ val \+ test needs 201 distinct problems but only 190 exist"):
        generate_splits(small_config(operations=("add", "div"), digits=DigitRange(1, 1), train_size=181,
                                     val_size=10, test_size=10), seed=0)
    with pytest.raises(DataSpaceError, match="ood needs 9000 distinct problems but only 8100 exist"):
        generate_splits(small_config(operations=("add",), digits=DigitRange(1, 1), ood_digits=DigitRange(2, 2),
                                     train_size=50, val_size=10, test_size=10, ood_size=9000), seed=0)
    # ood 2x2 overlaps the in-distribution 1..2 range: the 2x2 problems already in train/val/test are taken
    overlapping = small_config(operations=("add",), ood_digits=DigitRange(2, 2), ood_size=8000)
    with pytest.raises(DataSpaceError, match=r"ood needs 8000 distinct problems but only (\d+) exist") as caught:
        generate_splits(overlapping, seed=0)
    taken = generate_splits(small_config(operations=("add",), ood_digits=DigitRange(3, 3)), seed=0)
    in_dist = pd.concat([taken[s] for s in ("train", "val", "test")])
    two_by_two = int(((in_dist["a_digits"] == 2) & (in_dist["b_digits"] == 2)).sum())
    assert f"only {8100 - two_by_two} exist" in str(caught.value)
    exactly_all = small_config(operations=("add",), digits=DigitRange(1, 1), train_size=80, val_size=10, test_size=10)
    assert len(generate_splits(exactly_all, seed=0)["train"]) == 80


def test_encode_batch_masks_answer_tokens_only():
    batch = encode_batch(["12+3=51$", "7-12=5-$"])
    assert batch["tokens"].shape == (2, 9)
    assert batch["answer_mask"].sum(dim=1).tolist() == [3, 3]
    first_targets = [tokenizer.VOCAB[i] for i in batch["tokens"][0, 1:][batch["answer_mask"][0]]]
    assert first_targets == ["5", "1", "$"]
    assert not batch["answer_mask"][:, :4].any()  # the prompt is never a target


def run_stage(tmp_path: Path, seed: int, run_seed: int = 0, data_seed: int | None = None) -> dict[str, str]:
    out = tmp_path / f"data{seed}"
    params = {"seed": run_seed, "paths": {"data": str(out)},
              "data": {"operations": list(ALL_OPS), "digits": {"min": 1, "max": 3}, "ood_digits": {"min": 4, "max": 4},
                       "train_size": 3000, "val_size": 100, "test_size": 100, "ood_size": 100, "seed": data_seed}}
    path = tmp_path / f"params{seed}.yaml"
    path.write_text(yaml.safe_dump(params))
    # run outside the repository: in it, an output path outside it is refused (DVC could not track it)
    subprocess.run([sys.executable, str(ROOT / "stages" / "generate_data.py"), "--params", str(path)], check=True,
                   capture_output=True, cwd=tmp_path)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def test_stage_output_is_byte_identical_across_runs(tmp_path):
    first, second = run_stage(tmp_path, 1), run_stage(tmp_path, 2)
    assert list(first) == ["ood.parquet", "rl_prompts.parquet", "rl_val.parquet", "test.parquet", "train.parquet",
                           "val.parquet"]
    assert first == second
    frame = pd.read_parquet(tmp_path / "data1" / "train.parquet")
    assert list(frame.columns) == ["a", "op", "b", "answer", "a_digits", "b_digits", "text"]
    # data.seed holds the splits fixed while the run's seed changes: seed 7 with data.seed 0 draws seed 0's bytes
    assert run_stage(tmp_path, 3, run_seed=7, data_seed=0) == first
    assert run_stage(tmp_path, 4, run_seed=7) != first  # and null follows the run's seed


def test_data_seed_follows_the_run_seed_unless_set():
    assert Params(seed=5).data_seed == 5  # the default: today's data bytes
    assert Params(seed=5, data=DataConfig(seed=0)).data_seed == 0
    with pytest.raises(ParamsError, match=r"seed must be in \[0, 2\*\*32\) or null"):
        DataConfig(seed=-1)


def test_every_split_sees_the_small_buckets_in_proportion():
    splits = generate_splits(DataConfig(operations=("add",), train_size=20000, val_size=2000, test_size=2000), seed=0)
    shares = {name: ((f["a_digits"] == 1) & (f["b_digits"] == 1)).mean() for name, f in splits.items() if name != "ood"}
    # all 100 one-digit additions exist once in the pool of 24000: each split holds about 100/24000 of its rows
    assert sum(round(share * len(splits[name])) for name, share in shares.items()) == 100
    assert 0.6 * 100 / 24000 < shares["train"] < 1.4 * 100 / 24000


def test_rl_splits_are_disjoint_from_every_split_and_leave_their_bytes_unchanged():
    config = DataConfig(train_size=3000, val_size=100, test_size=100, ood_size=300)
    plain = generate_splits(config, seed=0)
    rl = RLConfig(digits=DigitRange(4, 4), prompt_size=2000, val_size=200)
    with_rl = generate_splits(config, seed=0, rl=rl)
    other_rl = generate_splits(config, seed=0, rl=RLConfig(digits=DigitRange(3, 4), prompt_size=500, val_size=50))
    for name in plain:  # the RL splits are drawn last, from a stream of their own
        assert with_rl[name].equals(plain[name]) and other_rl[name].equals(plain[name])
    assert len(with_rl["rl_prompts"]) == 2000 and len(with_rl["rl_val"]) == 200
    assert set(with_rl["rl_val"]["a_digits"]) == set(with_rl["rl_val"]["b_digits"]) == {4}

    def keys(frame):
        return set(zip(frame["op"], frame["a"], frame["b"], strict=True))

    for splits in (with_rl, other_rl):
        rl_keys = [keys(splits["rl_prompts"]), keys(splits["rl_val"])]
        assert not rl_keys[0] & rl_keys[1]
        for name in plain:  # the OOD split holds 4-digit problems too: none of them is an RL prompt
            assert not (rl_keys[0] | rl_keys[1]) & keys(splits[name]), name

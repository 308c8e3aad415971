"""The character tokenizer (round trips, errors) and the place-value (abacus) positions of its ids."""

import pytest
import torch

from language_entropy import batches, tokenizer
from language_entropy.problems import reorder_answer


def test_round_trip_over_the_whole_vocabulary():
    text = "^" + "0123456789+-*/=" + "$_"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode(text)) == len(text) == tokenizer.VOCAB_SIZE
    assert tokenizer.decode(torch.tensor(tokenizer.encode("12+3=51$"))) == "12+3=51$"


def test_special_ids_are_distinct_and_digits_contiguous():
    ids = {tokenizer.PAD_ID, tokenizer.BOS_ID, tokenizer.EOS_ID, tokenizer.EQUALS_ID, tokenizer.STOI["-"]}
    assert len(ids) == 5
    assert [tokenizer.VOCAB[i] for i in tokenizer.DIGIT_IDS] == list("0123456789")


def test_unknown_character_names_it_and_its_position():
    with pytest.raises(ValueError, match=r"unknown character 'x' at position 3 in '123x4'"):
        tokenizer.encode("123x4")
    with pytest.raises(ValueError, match="token id 99 is outside the vocabulary"):
        tokenizer.decode([1, 99])


def test_emitted_answer_stops_at_eos_or_padding_and_reorders_to_the_written_answer():
    assert tokenizer.emitted_answer(tokenizer.encode("-351$__")) == "-351"
    assert reorder_answer(tokenizer.emitted_answer(tokenizer.encode("-351$__")), reverse=True) == "-153"
    assert reorder_answer(tokenizer.emitted_answer(tokenizer.encode("153$")), reverse=False) == "153"
    assert reorder_answer(tokenizer.emitted_answer(tokenizer.encode("02")), reverse=True) == "20"


def test_place_value_positions_on_a_worked_example():
    ids = torch.tensor([tokenizer.encode("^123+4567=0961$__")])
    expected = [0, 3, 2, 1, 0, 4, 3, 2, 1, 0, 1, 2, 3, 4, 0, 0, 0]
    assert batches.place_value_positions(ids).tolist() == [expected]


def test_place_value_positions_of_a_negative_answer_skip_the_sign():
    ids = torch.tensor([tokenizer.encode("^7-12=-5$")])
    assert batches.place_value_positions(ids).tolist() == [[0, 1, 0, 2, 1, 0, 0, 1, 0]]


def test_the_first_answer_digit_is_emitted_by_the_equals_and_a_leading_sign():
    ids = torch.tensor([tokenizer.encode("^7-12=-5$"), tokenizer.encode("^12-7=5$_")])
    assert batches.emits_first_answer_digit(ids).int().tolist() == [[0, 0, 0, 0, 0, 1, 1, 0, 0],
                                                                     [0, 0, 0, 0, 0, 1, 0, 0, 0]]

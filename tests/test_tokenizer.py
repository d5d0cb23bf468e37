"""Character tokenizer: round trips, saved vocabulary, and prompts it cannot represent."""

from __future__ import annotations

import pytest

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.tokenizer import CharTokenizer
from minigpt_tui.training.vocabulary import build_tokenizer, load_tokenizer, tokenizer_from_json


def test_round_trip_of_the_training_text(corpus_text):
    tokenizer = CharTokenizer.from_text(corpus_text)
    ids = tokenizer.encode(corpus_text)
    assert len(ids) == len(corpus_text)
    assert tokenizer.decode(ids) == corpus_text
    assert tokenizer.vocab_size == len(set(corpus_text))
    assert sorted(set(ids)) == list(range(tokenizer.vocab_size))


def test_vocabulary_is_sorted_and_ids_are_stable():
    tokenizer = CharTokenizer.from_text("banana split")
    assert tokenizer.chars == sorted(set("banana split"))
    assert tokenizer.encode("ab") == [tokenizer.chars.index("a"), tokenizer.chars.index("b")]
    assert tokenizer.encode_array("nab").dtype.name == "int64"


def test_round_trip_beyond_ascii():
    text = "héllo wörld — ✓ 日本\n\ttab"
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_saved_vocabulary_loads_back_identically(tmp_path, corpus_text):
    tokenizer = build_tokenizer("char", corpus_text, vocab_size=512)
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(loaded, CharTokenizer)
    assert loaded.chars == tokenizer.chars
    assert loaded.encode(corpus_text) == tokenizer.encode(corpus_text)


def test_unknown_prompt_characters_are_named():
    tokenizer = CharTokenizer.from_text("abc ")
    with pytest.raises(MiniGPTError) as excinfo:
        tokenizer.encode("a cab Zq!")
    message = str(excinfo.value)
    assert "3 character(s)" in message
    for char in ("'Z'", "'q'", "'!'"):
        assert char in message
    assert "\n" not in message


@pytest.mark.parametrize("document", ["not json", "[1, 2]", '{"type": "word"}', '{"type": "char"}'])
def test_a_file_that_is_not_a_tokenizer_is_an_error(document):
    with pytest.raises(MiniGPTError, match="tokenizer"):
        tokenizer_from_json(document)


def test_missing_tokenizer_file_is_an_error(tmp_path):
    with pytest.raises(MiniGPTError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "nope.json")

import math

import pytest

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.bpe import BPETokenizer
from minigpt_tui.training.config import build_config
from minigpt_tui.training.data import split_text
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.evaluation import evaluate_tokens
from minigpt_tui.training.metrics import bits_per_char
from minigpt_tui.training.runs import load_model, open_run
from minigpt_tui.training.sampling import SamplingParams, generate_text, stream_text
from minigpt_tui.training.tokenizer import CharTokenizer
from minigpt_tui.training.trainer import new_training, tokenize_corpus
from minigpt_tui.training.vocabulary import tokenizer_from_json

TEXT = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n" * 30


def test_round_trip_including_characters_never_seen_in_training():
    tok = BPETokenizer.train(TEXT, 300)
    assert tok.vocab_size == 300
    for text in (TEXT[:200], "héllo wörld ✓ 日本", "", "\n\n  x"):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(TEXT)) < len(TEXT)  # merges compress


def test_json_round_trip_is_the_same_tokenizer():
    tok = BPETokenizer.train(TEXT, 280)
    data = tok.to_json()
    assert '"type": "bpe"' in data
    again = tokenizer_from_json(data)
    assert isinstance(again, BPETokenizer)
    assert again.encode(TEXT) == tok.encode(TEXT)


def test_bad_vocab_and_bad_file_are_minigpt_errors():
    with pytest.raises(MiniGPTError, match="at least 256"):
        BPETokenizer.train(TEXT, 100)
    with pytest.raises(MiniGPTError, match="invalid BPE"):
        tokenizer_from_json('{"type": "bpe", "tokenizer": {"model": 3}}')


def test_one_merge_halves_tokens_per_char():
    # with a single merge, "ab" becomes one token: 8 characters -> 4 tokens
    tok = BPETokenizer.train("abababab " * 50, 257)
    assert len(tok.encode("abababab")) == 4


def test_bits_per_char_conversion_between_tokenizers_by_hand():
    # the same 0.5 bits of information per character, seen per char or per 2-char token
    char_loss = 0.5 * math.log(2)  # nats per char token
    bpe_loss = 1.0 * math.log(2)  # nats per token of two characters
    assert bits_per_char(char_loss, 1.0) == pytest.approx(0.5)
    assert bits_per_char(bpe_loss, 0.5) == pytest.approx(0.5)
    # a uniform guess over V tokens costs log2(V) bits per token, so log2(V) * tokens/char per char
    text = "to be or not to be " * 20
    char, bpe = CharTokenizer.from_text(text), BPETokenizer.train(text, 300)
    tpc = len(bpe.encode(text)) / len(text)
    assert bits_per_char(math.log(char.vocab_size), 1.0) == pytest.approx(math.log2(char.vocab_size))
    assert bits_per_char(math.log(300), tpc) == pytest.approx(math.log2(300) * tpc)


def test_bpe_run_trains_evaluates_and_samples(tmp_path):
    config = build_config("tiny", overrides={"tokenizer": "bpe", "vocab_size": 300, "block_size": 16,
                                              "max_iters": 10, "eval_interval": 10, "eval_iters": 1, "device": "cpu"})
    new_training(config, Corpus(TEXT, "test"), tmp_path / "run").run()
    run = open_run(tmp_path / "run")
    assert isinstance(run.tokenizer, BPETokenizer) and run.tokenizer.vocab_size == 300
    _, val_text = split_text(TEXT)
    assert run.tokens_per_char == pytest.approx(len(run.tokenizer.encode(val_text)) / len(val_text))
    model, _ = load_model(run)
    score = evaluate_tokens(model, tokenize_corpus(run, TEXT).val, run.tokens_per_char)
    assert score.bits_per_char == pytest.approx(score.loss * run.tokens_per_char / math.log(2))
    text = "".join(generate_text(model, run.tokenizer, "Thou", 20, SamplingParams(1.0), seed=1))
    assert len(text) > 0


def test_streaming_never_splits_a_multibyte_character_and_flushes_the_rest():
    tok = BPETokenizer.train(TEXT, 260)
    text = "café 日本 ✓ " * 5
    ids = tok.encode(text)
    pieces = list(stream_text(tok, iter(ids)))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    first_byte_of_a_character = tok.encode("日")[:1]  # "日" is three bytes: alone, an unfinished character
    assert "".join(stream_text(tok, iter(ids + first_byte_of_a_character))).startswith(text)

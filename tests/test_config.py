"""Configuration: presets, TOML files, flag overrides and validation."""

from __future__ import annotations

import dataclasses

import pytest

from backends.base import ModelConfig, OptimConfig
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.config import PRESETS, TrainConfig, build_config, field_names, load_toml, preset


def test_presets_exist_with_the_documented_values():
    assert {"tiny", "baby", "shakespeare"} <= set(PRESETS)
    baby = preset("baby")
    m = baby.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, baby.batch_size) == (4, 4, 128, 64, 12)
    assert (baby.learning_rate, baby.max_iters, baby.warmup_iters, baby.min_lr) == (1e-3, 2000, 100, 1e-4)
    assert (baby.optim.beta2, m.dropout) == (0.99, 0.0)
    big = preset("shakespeare")
    b = big.model
    assert (b.n_layer, b.n_head, b.n_embd, b.block_size, big.batch_size) == (6, 6, 384, 256, 64)
    assert (b.dropout, big.max_iters) == (0.2, 5000)
    tiny = preset("tiny").model
    assert tiny.n_layer * tiny.n_embd < m.n_layer * m.n_embd  # smaller than the CPU config


def test_unknown_preset():
    with pytest.raises(MiniGPTError, match="unknown preset 'huge'.*tiny"):
        preset("huge")


def test_defaults_are_the_baby_preset():
    assert build_config() == preset("baby")


def test_toml_values_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "tiny"\nn_layer = 3\nlearning_rate = 1\ndropout = 0.1\n')
    config = build_config("baby", load_toml(path), {"n_layer": 5, "max_iters": None})
    assert config.model.n_layer == 5  # the flag beats the file
    assert config.model.dropout == 0.1  # the file beats the preset
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)  # TOML int for a float field
    assert config.max_iters == preset("tiny").max_iters  # a flag left unset changes nothing; the file's preset is used


def test_toml_train_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nbatch_size = 7\n")
    assert build_config("tiny", load_toml(path)).batch_size == 7


@pytest.mark.parametrize("content, fragment", [
    ("n_layers = 3\n", "unknown field.*n_layers"),
    ("n_layer = 'four'\n", "n_layer must be an int"),
    ("n_layer = true\n", "n_layer must be an int"),
    ("n_layer = = 3\n", "not valid TOML"),
    ("n_embd = 30\nn_head = 4\n", "divisible"),
])
def test_bad_toml_files(tmp_path, content, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(MiniGPTError, match=fragment):
        build_config("tiny", load_toml(path))


def test_toml_that_is_not_utf8_or_missing(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\nn_layer = 2\n")
    with pytest.raises(MiniGPTError, match="not valid TOML"):
        load_toml(path)
    with pytest.raises(MiniGPTError, match="not found"):
        load_toml(tmp_path / "absent.toml")


def test_unknown_override_field():
    with pytest.raises(MiniGPTError, match="unknown config field 'depth'"):
        build_config("tiny", None, {"depth": 3})


@pytest.mark.parametrize("changes, fragment", [
    (dict(n_embd=30, n_head=4), r"n_embd \(30\) must be divisible by n_head \(4\)"),
    (dict(n_layer=0), "n_layer must be positive"),
    (dict(n_head=-1), "n_head must be positive"),
    (dict(block_size=0), "block_size must be positive"),
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(max_iters=-5), "max_iters must be positive"),
    (dict(dropout=1.0), "dropout"),
    (dict(learning_rate=-1e-3), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate=1e-4, min_lr=1e-3), "min_lr"),
    (dict(beta2=1.0), "beta2"),
    (dict(pos_encoding="rotary"), "pos_encoding"),
    (dict(tokenizer="word"), "tokenizer"),
    (dict(dtype="float16"), "dtype"),
    (dict(pos_encoding="sinusoidal", n_embd=33, n_head=3), "even"),
    (dict(tokenizer="bpe", vocab_size=512, bigram_embedding=True), "bigram_embedding needs the char tokenizer"),
])
def test_impossible_configs_are_rejected(changes, fragment):
    with pytest.raises(MiniGPTError, match=fragment):
        build_config("tiny", None, changes)


def test_every_field_round_trips_through_a_dict():
    config = preset("shakespeare").replace(n_layer=5, eps=1e-6, seed=-3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert set(config.to_flat()) == set(field_names())
    assert build_config("baby", config.to_flat()) == config


def test_sections_are_the_backend_dataclasses_and_every_field_is_a_flag():
    """A field added to ModelConfig or OptimConfig is a config field and a flag without being listed anywhere."""
    flat = set(field_names())
    assert {f.name for f in dataclasses.fields(ModelConfig)} <= flat
    assert {f.name for f in dataclasses.fields(OptimConfig)} <= flat
    config = preset("tiny")
    assert isinstance(config.model, ModelConfig) and isinstance(config.optim, OptimConfig)
    assert config.replace(eps=1e-6).optim.eps == 1e-6  # eps was never copied into TrainConfig


def test_the_run_config_carries_the_tokenizer_vocabulary():
    model = preset("tiny").replace(dropout=0.1, bias=True).with_vocab_size(65).model
    assert (model.vocab_size, model.n_layer, model.dropout, model.bias) == (65, 2, 0.1, True)


def test_a_bigram_table_needs_a_small_character_vocabulary():
    config = preset("tiny").replace(bigram_embedding=True)
    assert config.with_vocab_size(256).model.vocab_size == 256  # 65,536 rows: the most it takes
    with pytest.raises(MiniGPTError, match="at most 256 distinct characters.*this text has 257"):
        config.with_vocab_size(257)


@pytest.mark.parametrize("document, fragment", [
    ({"model": {"n_layer": "2"}}, "config: model: n_layer must be an int"),
    ({"optim": {"beta1": 2.0}}, "config: optim: beta1 must be in"),
    ({"max_iters": 1.5}, "config: max_iters must be an int"),
    ({"model": []}, "config: model must be a JSON object"),
    ({"colour": "red"}, "unknown field.*colour"),
])
def test_from_dict_names_the_bad_field(document, fragment):
    with pytest.raises(MiniGPTError, match=fragment):
        TrainConfig.from_dict(document)

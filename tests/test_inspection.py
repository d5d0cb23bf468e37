"""The inspection core and its commands: surprisal, next-token views, attention in windows, head
roles, and ``minigpt inspect`` / ``minigpt heads`` on a tiny trained run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_corpus_text, train_tiny

from backends.base import init_weights
from minigpt_tui.cli import main
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.inspection.head_roles import ALWAYS_TARGETS, corpus_targets, head_roles, target_label, targets
from minigpt_tui.inspection.inspector import inspect_text, windows
from minigpt_tui.training.runs import build_backend, load_model, open_run
from minigpt_tui.training.sampling import SamplingParams, probabilities


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    corpus = root / "corpus.txt"
    corpus.write_text("King:\n" + make_corpus_text(), encoding="utf-8")
    train_tiny(root / "run", corpus)
    return root / "run"


@pytest.fixture(scope="module")
def model(run_dir):
    run = open_run(run_dir)
    return load_model(run, which="latest")[0], run.tokenizer


TEXT = "The king and queen walked into the garden."
SHORT = TEXT[:16]  # one context of the tiny model


def test_surprisal_is_minus_log_probability_of_each_next_token(model):
    backend, tokenizer = model
    inspection = inspect_text(backend, tokenizer, SHORT)
    ids = tokenizer.encode(SHORT)
    logits = backend.logits(np.asarray([ids]))[0].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(len(ids) - 1), ids[1:]]
    assert np.isnan(inspection.surprisal_nats[0])
    np.testing.assert_allclose(inspection.surprisal_nats[1:], expected, rtol=1e-4)
    np.testing.assert_allclose(inspection.surprisal_bits[1:], expected / np.log(2), rtol=1e-4)


def test_next_tokens_follow_the_sampling_distribution(model):
    backend, tokenizer = model
    inspection = inspect_text(backend, tokenizer, TEXT)
    cold, hot = (inspection.next_tokens(5, SamplingParams(t), tokenizer) for t in (0.5, 1.5))
    raw = probabilities(inspection.logits[5], SamplingParams(1.0))
    assert [c.probability for c in cold.candidates] == pytest.approx(sorted(raw, reverse=True)[:10])
    assert cold.entropy_bits < cold.entropy_bits_raw < hot.entropy_bits
    assert cold.candidates[0].sampled > cold.candidates[0].probability > hot.candidates[0].sampled
    assert cold.actual == tokenizer.encode(TEXT)[6]
    cut = inspection.next_tokens(5, SamplingParams(1.0, top_k=3), tokenizer)
    assert cut.kept == 3 and [c.kept for c in cut.candidates] == [True] * 3 + [False] * 7
    assert sum(c.sampled for c in cut.candidates) == pytest.approx(1.0)
    assert cut.kept_mass == pytest.approx(sum(c.probability for c in cut.candidates[:3]))
    nucleus = inspection.next_tokens(5, SamplingParams(1.0, top_p=0.5), tokenizer)
    ranked = np.sort(raw)[::-1]
    assert nucleus.kept_mass == pytest.approx(ranked[: nucleus.kept].sum())
    assert ranked[: nucleus.kept - 1].sum() < 0.5 <= nucleus.kept_mass  # the smallest set reaching p


def test_positions_layers_and_heads_are_checked(model):
    backend, tokenizer = model
    inspection = inspect_text(backend, tokenizer, "The king")
    assert inspection.check_position(-1) == 7
    for bad in (8, -9):
        with pytest.raises(MiniGPTError, match="outside the text"):
            inspection.check_position(bad)
    with pytest.raises(MiniGPTError, match="layer 2 does not exist"):
        inspection.attention_from(0, 2, 0)
    with pytest.raises(MiniGPTError, match="head 5 does not exist"):
        inspection.attention_from(0, 0, 5)
    with pytest.raises(MiniGPTError, match="outside the model's vocabulary"):
        inspect_text(backend, tokenizer, "The ~")


def test_windows_cover_every_position_once():
    assert windows(10, 16) == [(0, 10, 0)]
    spans = windows(40, 16)
    kept = [row for start, end, first in spans for row in range(first, end)]
    assert kept == list(range(40))
    assert all(end - start == 16 for start, end, _ in spans)
    assert all(first - start >= 8 for start, _, first in spans[1:])  # at least half a context of history


def test_a_text_longer_than_the_context_is_read_in_windows(model):
    backend, tokenizer = model
    block = backend.config.block_size
    text = (TEXT + " ") * 3
    assert len(text) > 2 * block
    inspection = inspect_text(backend, tokenizer, text)
    att = inspection.attention
    assert att.shape[2:] == (len(text), len(text))
    assert np.allclose(att.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(att, k=1) == 0)
    rows, keys = np.nonzero(att.max(axis=(0, 1)))
    assert np.all(rows - keys < block)  # never further back than one context
    head = inspect_text(backend, tokenizer, text[:block])  # the first window is the plain forward
    np.testing.assert_allclose(att[:, :, :block, :block], head.attention, atol=1e-6)
    np.testing.assert_allclose(inspection.logits[:block], head.logits, atol=1e-5)


def test_json_ready_record(model):
    backend, tokenizer = model
    document = json.loads(json.dumps(inspect_text(backend, tokenizer, "The king").to_dict()))
    assert document["surprisal"][0] is None and len(document["surprisal"]) == len(document["surprisal_bits"]) == 8
    assert np.asarray(document["attention"]).shape == (2, 2, 8, 8)


def test_targets_of_each_kind():
    pieces = list("Ann:\nhi bob\nCal:\nyo")
    found = targets(pieces)
    assert found[0] == {"self": [0]}
    b = pieces.index("b")
    assert found[b + 2]["word start"] == [b] and found[b + 2]["previous"] == [b + 1]
    assert found[b + 2]["line start"] == [5]  # the "h" that starts the line
    assert found[b + 2]["last newline"] == [4]
    assert found[b + 2]["speaker name"] == [0, 1, 2]  # "Ann", without the colon
    assert found[len(pieces) - 1]["speaker name"] == [12, 13, 14]  # the latest name: "Cal"
    assert "word start" not in found[b + 1]  # one back is "previous", not a word start


def test_uniform_attention_scores_chance(run_dir):
    """With zero query/key weights every head attends uniformly, so each mass equals its chance level."""
    run = open_run(run_dir)
    weights = init_weights(run.config.model, 0)
    for name in weights:
        if name.endswith("attn.c_attn.weight"):
            weights[name][: 2 * run.config.model.n_embd] = 0.0  # q and k rows; v stays
    backend = build_backend(run.config, weights)
    val = np.asarray(run.tokenizer.encode(make_corpus_text(20, seed=3)))
    roles = head_roles(backend, run.tokenizer, val, windows=4)
    assert roles.kinds == ALWAYS_TARGETS  # no "Name:" lines in this text: no speaker target
    assert roles.labels[1] == "previous character"
    seen = roles.queries > 0
    chance = np.broadcast_to(roles.chance[seen], roles.mass[:, :, seen].shape)
    np.testing.assert_allclose(roles.mass[:, :, seen], chance, rtol=1e-5)
    assert set(roles.surprisal_bits) == {"all", "word start", "word middle", "after newline"}
    assert roles.surprisal_counts["all"] == 4 * (run.config.model.block_size - 1)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_inspect_command_writes_json_and_png(run_dir, tmp_path):
    out = tmp_path / "inspect.json"
    result = invoke("inspect", run_dir, "--text", "King:\\nThe king", "--position", "3", "--layer", "1", "--head", "1",
                    "--top-k", "3", "--json", out, "--png", tmp_path / "inspect.png")
    assert result.exit_code == 0, result.output
    assert "next token after position 3 ('g')" in result.stdout
    assert "kept 3 tokens" in result.stdout
    document = json.loads(out.read_text())
    attention = np.asarray(document["attention"])
    assert attention.shape == (2, 2, 14, 14)
    assert np.allclose(attention.sum(-1), 1.0, atol=1e-5) and np.all(np.triu(attention, k=1) == 0)
    assert len(document["surprisal_bits"]) == 14 and document["text"] == "King:\nThe king"
    assert document["next_tokens"]["actual"] == document["tokens"][4]
    assert document["attention_from_position"] == attention[1, 1, 3].tolist()
    assert (tmp_path / "inspect.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, fragment", [
    (["--position", "8"], r"position 8 is outside the text \(0..7\)"),
    (["--layer", "2"], r"layer 2 does not exist"),
    (["--head", "-1"], r"head -1 does not exist"),
    (["--top-p", "2"], r"top-p must be in"),
    (["--text", "The ~"], r"outside the model's vocabulary: '~'"),
])
def test_inspect_bad_input(run_dir, args, fragment):
    result = invoke("inspect", run_dir, "--text", "The king", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(fragment, lines[0]), result.stderr


def test_heads_command(run_dir, tmp_path):
    out = tmp_path / "heads.json"
    result = invoke("heads", run_dir, "--weights", "init", "--windows", "3", "--json", out)
    assert result.exit_code == 0, result.output
    assert "previous character: strongest" in result.stdout and "surprisal (bits/token)" in result.stdout
    document = json.loads(out.read_text())
    assert document["step"] == 0 and np.asarray(document["mass"]).shape == (2, 2, len(document["kinds"]))
    assert "speaker name" not in document["kinds"] and "previous character: strongest" in result.stdout


def test_targets_follow_the_corpus():
    play = "ROMEO:\nBut soft!\n\nJULIET:\nAy me.\n\nFirst Citizen:\nSpeak.\n"
    assert corpus_targets(play)[-1] == "speaker name"
    assert corpus_targets("NAME\n    ls - list directory contents\nNote: one line is not a play\n") == ALWAYS_TARGETS
    assert target_label("previous", "char") == "previous character"
    assert target_label("previous", "bpe") == "previous token" and target_label("word start", "bpe") == "word start"

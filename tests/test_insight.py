"""Causal inspection on a fresh small run: head ablation (``minigpt heads --ablate``), the logit lens
(``inspect --logit-lens``), the embedding map (``minigpt embeddings``), and snapshots with the time-lapse
(``--snapshots``, ``--step``, ``minigpt timelapse``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_corpus_text, tiny_config, train_tiny
from test_cli import assert_one_line_error, invoke

from backends.base import HeadAblation
from minigpt_tui.inspection.embedding_map import char_group, embedding_map
from minigpt_tui.inspection.head_ablation import char_classes, conditional_entropy, head_importance, parse_heads
from minigpt_tui.inspection.inspector import inspect_text
from minigpt_tui.inspection.lens import Unembedding, layer_losses, logit_lens, window_starts
from minigpt_tui.training.runs import build_backend, model_at, open_run, snapshot_steps
from minigpt_tui.training.trainer import tokenize_corpus

STEPS, EVERY = 150, 50


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A tiny model trained long enough to beat the unigram level, with a snapshot at every eval."""
    root = tmp_path_factory.mktemp("insight")
    corpus = root / "corpus.txt"
    corpus.write_text(make_corpus_text(), encoding="utf-8")
    config = tiny_config(max_iters=STEPS, eval_interval=EVERY, batch_size=16, warmup_iters=10, learning_rate=1e-2,
                         min_lr=1e-3)
    train_tiny(root / "run", corpus, config)
    run = open_run(root / "run")
    val = tokenize_corpus(run, corpus.read_text(encoding="utf-8")).val
    return run, corpus, val


def test_heads_ablate_json_has_one_delta_per_head_and_every_head_knocked_out_is_worse_than_unigram(fresh, tmp_path):
    run, corpus, _ = fresh
    out = tmp_path / "heads.json"
    result = invoke("heads", run.path, "--ablate", "--logit-lens", "--windows", "8", "--data", corpus, "--json", out,
                    "--png", tmp_path / "heads.png")
    assert result.exit_code == 0, result.output + result.stderr
    assert "which heads matter" in result.output and "unigram" in result.output
    document = json.loads(out.read_text())
    ablation = document["ablation"]
    lens_loss = document["logit_lens_loss"]["loss"]
    assert len(lens_loss) == run.config.model.n_layer + 1
    assert lens_loss[-1] == pytest.approx(ablation["base_loss"], rel=1e-5)  # the same windows, the last lens
    c = run.config.model
    delta = np.asarray(ablation["delta_loss"])
    assert delta.shape == (c.n_layer, c.n_head)
    assert np.isfinite(delta).all() and np.abs(delta).max() > 0
    assert len(ablation["layer_delta_loss"]) == c.n_layer
    # the model learned to use its context (below the bigram level); without its heads it cannot: each
    # prediction then depends on one token and its position only, so no better than that pair's entropy
    assert ablation["base_loss"] < ablation["unigram_loss"] and ablation["bigram_loss"] < ablation["unigram_loss"]
    block, val = run.config.model.block_size, fresh[2]
    starts = window_starts(len(val), block, 8)
    current = np.concatenate([val[s : s + block] for s in starts]).astype(np.int64)
    following = np.concatenate([val[s + 1 : s + block + 1] for s in starts]).astype(np.int64)
    token_and_position = current * block + np.tile(np.arange(block), len(starts))
    assert ablation["all_heads_loss"] >= conditional_entropy(token_and_position, following) - 1e-9
    assert ablation["all_heads_loss"] > ablation["base_loss"] + 0.1
    assert (tmp_path / "heads.png").stat().st_size > 0


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_a_head_whose_output_projection_is_zero_does_not_matter(fresh, mode):
    run, _, val = fresh
    model, _ = model_at(run, "latest", backend="numpy")
    weights = model.get_weights()
    hs = run.config.model.n_embd // run.config.model.n_head
    weights["h.1.attn.c_proj.weight"][:, 0:hs] = 0.0  # head 1.0 writes nothing into the stream
    model = build_backend(run.config, weights, backend="numpy")
    importance = head_importance(model, run.tokenizer, val, windows=4, mode=mode)
    assert importance.delta_loss[1, 0] == 0.0
    assert np.abs(importance.delta_loss).max() > 1e-4  # the others do change the loss: the test could fail
    assert importance.class_delta_bits.shape == (2, 2, 4)


def test_the_lens_of_the_last_layer_is_the_models_own_prediction_and_its_loss(fresh):
    run, _, val = fresh
    model, _ = model_at(run, "latest")
    inspection = inspect_text(model, run.tokenizer, "The king and")
    lens = logit_lens(Unembedding.of(model), inspection, 5, run.tokenizer)
    assert len(lens.depths) == run.config.model.n_layer + 1
    own = inspection.next_tokens(5, lens.depths[-1].params, run.tokenizer, k=5)
    assert [c.token_id for c in lens.depths[-1].candidates] == [c.token_id for c in own.candidates]
    np.testing.assert_allclose([c.probability for c in lens.depths[-1].candidates],
                               [c.probability for c in own.candidates], rtol=1e-5)
    assert lens.depths[0].candidates != lens.depths[-1].candidates  # the embedding alone guesses otherwise
    losses = layer_losses(model, val, windows=4)
    base = head_importance(model, run.tokenizer, val, windows=4).base_loss
    assert losses.loss[-1] == pytest.approx(base, rel=1e-5)
    assert losses.loss[0] > losses.loss[-1]


def test_inspect_logit_lens_json_has_a_depth_per_layer_the_last_the_next_token_distribution(fresh, tmp_path):
    run, _, _ = fresh
    out = tmp_path / "inspect.json"
    result = invoke("inspect", run.path, "--text", "The king\\nand", "--logit-lens", "--json", out,
                    "--png", tmp_path / "inspect.png")
    assert result.exit_code == 0, result.output + result.stderr
    assert "logit lens" in result.output
    document = json.loads(out.read_text())
    lens = document["logit_lens"]
    assert len(lens) == run.config.model.n_layer + 1
    assert [d["after"] for d in lens] == ["embedding", "block 0", "block 1"]
    own = {c["token_id"]: c["probability"] for c in document["next_tokens"]["candidates"]}
    for candidate in lens[-1]["candidates"]:  # float32 logits against the lens's float64 softmax of them
        assert candidate["probability"] == pytest.approx(own[candidate["token_id"]], rel=1e-5)
    assert (tmp_path / "inspect-lens.png").stat().st_size > 0


def test_inspect_with_heads_ablated_changes_the_prediction(fresh, tmp_path):
    run, _, _ = fresh
    documents = []
    for extra in ([], ["--ablate-heads", "0.0,0.1,1.0,1.1"]):
        out = tmp_path / f"i{len(extra)}.json"
        assert invoke("inspect", run.path, "--text", "The king and", "--json", out, *extra).exit_code == 0
        documents.append(json.loads(out.read_text()))
    assert documents[1]["ablated_heads"] == ["0.0", "0.1", "1.0", "1.1"]
    assert documents[0]["surprisal"][1:] != documents[1]["surprisal"][1:]


@pytest.mark.parametrize("spec, fragment", [("1", "LAYER.HEAD"), ("0.x", "LAYER.HEAD"), ("2.0", "does not exist"),
                                            ("0.5", "does not exist"), ("", "LAYER.HEAD")])
def test_a_bad_head_list_is_one_error_line(fresh, spec, fragment):
    run, _, _ = fresh
    assert_one_line_error(invoke("inspect", run.path, "--text", "The", "--ablate-heads", spec), fragment)


def test_conditional_entropy_is_zero_for_a_function_and_the_entropy_for_no_context():
    targets = np.array([0, 1, 1, 2, 0, 1])
    assert conditional_entropy(targets * 3, targets) == pytest.approx(0.0)
    p = np.array([2, 3, 1]) / 6
    assert conditional_entropy(np.zeros(6, np.int64), targets) == pytest.approx(-(p * np.log(p)).sum())


def test_parse_heads_and_char_classes():
    assert parse_heads("1.0, 0.1", 2, 2).tolist() == [[False, True], [True, False]]
    assert char_classes(" ", "k") == ["word start"]
    assert char_classes("k", "i") == ["word middle"]
    assert char_classes("\n", "K") == ["word start", "after newline"]
    assert char_classes("g", ",") == ["punctuation"]
    assert char_classes("g", " ") == []


def test_the_embedding_map_is_the_pca_of_the_token_table(fresh, tmp_path):
    run, _, _ = fresh
    model, _ = model_at(run, "latest")
    emap = embedding_map(model, run.tokenizer)
    table = model.get_weights()["wte.weight"].astype(np.float64)
    centred = table - table.mean(0)
    variance = np.linalg.svd(centred, compute_uv=False) ** 2
    np.testing.assert_allclose(emap.variance_explained, variance[:2] / variance.sum(), rtol=1e-6)
    # the points hold exactly the variance of the first two components
    np.testing.assert_allclose((emap.points**2).sum(0), variance[:2], rtol=1e-6)
    assert [char_group(c) for c in "aKE7;\n "] == ["vowel", "Consonant", "Vowel", "digit", "punctuation",
                                                   "whitespace", "whitespace"]
    out = tmp_path / "emb.json"
    result = invoke("embeddings", run.path, "--json", out, "--png", tmp_path / "emb.png")
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["labels"] == emap.labels


def test_every_eval_leaves_a_snapshot_and_any_inspection_can_be_asked_at_a_step(fresh, tmp_path):
    run, corpus, _ = fresh
    assert snapshot_steps(run) == list(range(0, STEPS + 1, EVERY))
    first, last = (model_at(run, step=s)[0].get_weights()["wte.weight"] for s in (0, STEPS))
    assert not np.array_equal(first, last)
    np.testing.assert_array_equal(last, model_at(run, "latest")[0].get_weights()["wte.weight"])
    outs = []
    for step in (0, STEPS):
        out = tmp_path / f"s{step}.json"
        assert invoke("inspect", run.path, "--text", "The king", "--step", step, "--json", out).exit_code == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["step"] == 0 and outs[1]["step"] == STEPS and outs[0]["surprisal"] != outs[1]["surprisal"]
    assert_one_line_error(invoke("inspect", run.path, "--text", "The", "--step", 7), "no snapshot at step 7.*0, 50")
    assert invoke("heads", run.path, "--step", EVERY, "--windows", "2", "--data", corpus).exit_code == 0
    assert invoke("embeddings", run.path, "--step", EVERY).exit_code == 0


def test_timelapse_has_a_frame_per_snapshot(fresh, tmp_path):
    run, corpus, _ = fresh
    out = tmp_path / "lapse.json"
    result = invoke("timelapse", run.path, "--data", corpus, "--windows", "2", "--sample-tokens", "20",
                    "--text", "The king and", "--json", out, "--png", tmp_path / "lapse.png")
    assert result.exit_code == 0, result.output + result.stderr
    document = json.loads(out.read_text())
    assert [f["step"] for f in document["frames"]] == snapshot_steps(run)
    assert len(document["heads"]) == 2 and np.asarray(document["frames"][0]["attention"]).shape == (2, 12, 12)
    losses = [f["val_loss"] for f in document["frames"]]
    assert losses[-1] < losses[0]  # it learned
    assert (tmp_path / "lapse.png").stat().st_size > 0


def test_no_snapshots_when_switched_off(tmp_path, corpus_path):
    train_tiny(tmp_path / "run", corpus_path, tiny_config(snapshots=False))
    run = open_run(tmp_path / "run")
    assert snapshot_steps(run) == [] and not (Path(run.path) / "snapshots").exists()
    assert_one_line_error(invoke("timelapse", run.path, "--data", corpus_path), "no snapshots")


def test_knocking_out_layer_0_keeps_its_attention_and_moves_the_next_layers(fresh):
    run, _, _ = fresh
    model, _ = model_at(run, "latest")
    tokens = np.asarray([run.tokenizer.encode("The king and")])
    c = run.config.model
    heads = np.zeros((c.n_layer, c.n_head), bool)
    heads[0] = True
    plain, ablated = model.trace(tokens), model.trace(tokens, HeadAblation(heads))
    assert np.all(ablated.head_outputs[0] == 0)
    np.testing.assert_array_equal(ablated.attention[0], plain.attention[0])  # its input did not change
    assert np.abs(ablated.attention[1] - plain.attention[1]).max() > 1e-4  # what it wrote did

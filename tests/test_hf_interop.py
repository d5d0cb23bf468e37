"""export-hf / import-hf: a run under transformers computes what it computes under minigpt, and comes back exact.

conftest.py switches the Hugging Face hub off (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE) before transformers loads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_corpus_text
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from backends.base import canonical_shapes
from minigpt_tui.cli import main
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.interop.hf import char_hf_tokenizer, export_run
from minigpt_tui.training.bpe import BPETokenizer
from minigpt_tui.training.checkpoint import Checkpoint, TrainingState, load_checkpoint, save_checkpoint
from minigpt_tui.training.config import preset
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.runs import Run, build_backend, create_run, open_run
from minigpt_tui.training.tokenizer import CharTokenizer
from minigpt_tui.training.trainer import new_training

TEXT = make_corpus_text(60)
PROMPT = "The king "


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.output, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def random_weights(config, seed: int) -> dict[str, np.ndarray]:
    """Every tensor random, gains and biases too: a transposed or misplaced one cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0.0, 0.2, shape).astype(np.float32) for name, shape in canonical_shapes(config).items()}


def make_run(path, tokenizer, seed: int = 0, **fields):
    """A run folder holding random weights (no training needed to compare two implementations)."""
    config = preset("tiny").replace(device="cpu", tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size, **fields)
    run = Run(path, config, tokenizer, "test corpus", 1.0)
    create_run(path, run).release()
    weights = random_weights(config.model, seed)
    save_checkpoint(run.checkpoint_dir("latest"), make_checkpoint(weights, 3, "latest"))
    return run, weights


def make_checkpoint(weights, step: int, kind: str) -> Checkpoint:
    state = TrainingState(step=step, kind=kind, backend="torch")
    return Checkpoint(weights, {"step": np.array(float(step))}, {}, state)


def minigpt_logits(run_dir, ids: list[int]) -> np.ndarray:
    run = open_run(run_dir)
    checkpoint = load_checkpoint(run.checkpoint_dir("latest"), with_optimizer=False)
    model = build_backend(run.config, checkpoint.weights, device="cpu")
    return model.logits(np.asarray([ids], np.int64))[0]


def hf_logits(hf_dir, ids: list[int]) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("tie_weights", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_transformers_computes_the_same_logits(tmp_path, tie_weights, bias):
    tokenizer = CharTokenizer.from_text(TEXT)
    make_run(tmp_path / "run", tokenizer, tie_weights=tie_weights, bias=bias)
    export_run(tmp_path / "run", tmp_path / "hf")
    ids = tokenizer.encode(TEXT[:32])  # a whole context
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer(TEXT[:32])["input_ids"] == ids
    ours, theirs = minigpt_logits(tmp_path / "run", ids), hf_logits(tmp_path / "hf", ids)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    names = set(json.loads((tmp_path / "hf" / "tokenizer.json").read_text())["model"]["vocab"])
    assert names == set(tokenizer.chars)


def test_char_tokenizer_round_trips_whitespace_and_unicode(tmp_path):
    text = "  a\n\n\tb \r\n é😀 c  "
    tokenizer = CharTokenizer.from_text(text)
    hf = char_hf_tokenizer(tokenizer.chars)
    assert hf.encode(text).ids == tokenizer.encode(text)
    assert hf.decode(tokenizer.encode(text)) == text
    make_run(tmp_path / "run", tokenizer)
    export_run(tmp_path / "run", tmp_path / "hf")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = loaded(text)["input_ids"]
    assert ids == tokenizer.encode(text) and loaded.decode(ids) == text


def test_bpe_run_exports_its_own_tokenizer(tmp_path):
    tokenizer = BPETokenizer.train(TEXT, 300)
    make_run(tmp_path / "run", tokenizer)
    export_run(tmp_path / "run", tmp_path / "hf")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tokenizer.encode(TEXT[:80])
    assert loaded(TEXT[:80])["input_ids"] == ids and loaded.decode(ids) == TEXT[:80]
    np.testing.assert_allclose(hf_logits(tmp_path / "hf", ids[:32]), minigpt_logits(tmp_path / "run", ids[:32]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_export_then_import_round_trips_exactly(tmp_path, bias):
    tokenizer = CharTokenizer.from_text(TEXT)
    run, weights = make_run(tmp_path / "run", tokenizer, bias=bias, tie_weights=False)
    assert invoke("export-hf", tmp_path / "run", tmp_path / "hf").exit_code == 0
    result = invoke("import-hf", tmp_path / "hf", tmp_path / "back")
    assert result.exit_code == 0, result.stderr
    back = open_run(tmp_path / "back")
    assert isinstance(back.tokenizer, CharTokenizer) and back.tokenizer.chars == tokenizer.chars
    assert back.config.model == run.config.model
    restored = load_checkpoint(back.checkpoint_dir("latest")).weights
    assert restored.keys() == weights.keys()
    for name, value in weights.items():
        assert np.array_equal(restored[name], value), name



def test_zero_initialised_projections_export_and_speedrun_options_are_refused(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    make_run(tmp_path / "zero", tokenizer, zero_init_proj=True)
    export_run(tmp_path / "zero", tmp_path / "hf")
    ids = tokenizer.encode(TEXT[:32])
    ours, theirs = minigpt_logits(tmp_path / "zero", ids), hf_logits(tmp_path / "hf", ids)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    for name, value in [("pos_encoding", "rope"), ("qk_norm", True), ("activation", "relu2")]:
        make_run(tmp_path / name, tokenizer, **{name: value})
        assert_one_line_error(invoke("export-hf", tmp_path / name, tmp_path / f"out-{name}"), f"{name}={value!r}")


@pytest.mark.parametrize("name, value", [("value_embedding", True), ("logit_softcap", 15.0), ("bigram_embedding", True),
                                         ("smear_gate", True)])
def test_the_speedrun_layers_are_refused_by_name(tmp_path, name, value):
    make_run(tmp_path / "run", CharTokenizer.from_text(TEXT), **{name: value})
    assert_one_line_error(invoke("export-hf", tmp_path / "run", tmp_path / "out"), f"{name}={value!r}")
    assert not (tmp_path / "out").exists()


def test_checkpoint_option_picks_best_or_latest(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    run, latest = make_run(tmp_path / "run", tokenizer)
    best = random_weights(run.config.model, seed=1)
    save_checkpoint(run.checkpoint_dir("best"), make_checkpoint(best, 2, "best"))
    for which, weights in (("best", best), ("latest", latest)):
        result = invoke("export-hf", tmp_path / "run", tmp_path / which, "--checkpoint", which)
        assert result.exit_code == 0 and f"({which} checkpoint, step" in result.stdout, result.stderr
        exported = load_file(str(tmp_path / which / "model.safetensors"))
        assert np.array_equal(exported["transformer.wte.weight"], weights["wte.weight"])
        assert np.array_equal(exported["transformer.h.0.attn.c_attn.weight"], weights["h.0.attn.c_attn.weight"].T)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A char-level tiny run trained briefly on a corpus the test writes."""
    root = tmp_path_factory.mktemp("hf")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    config = preset("tiny").replace(device="cpu", max_iters=30, eval_interval=30, eval_iters=2)
    torch.manual_seed(0)
    new_training(config, Corpus(TEXT, str(corpus)), root / "run").run()
    return root


def test_greedy_continuation_under_transformers_equals_minigpt_sample(trained, tmp_path):
    """The issue's must-show: export-hf on a trained char run, then transformers' greedy text == sample's."""
    result = invoke("export-hf", trained / "run", tmp_path / "hf")
    assert result.exit_code == 0, result.stderr
    new_tokens = 32 - len(PROMPT)  # GPT-2 has no positions past its context (block_size 32 in tiny)
    sampled = invoke("sample", trained / "run", "--prompt", PROMPT, "--temperature", "0",
                     "--max-new-tokens", new_tokens, "--device", "cpu")
    assert sampled.exit_code == 0, sampled.stderr
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    inputs = tokenizer(PROMPT, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    text = tokenizer.decode(out[0])
    assert len(text) == 32 and text.startswith(PROMPT)
    assert sampled.stdout == text + "\n"


def test_import_a_transformers_gpt2_then_sample_eval_and_fine_tune(tmp_path):
    tokenizer = BPETokenizer.train(TEXT, 300)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=None,
                        eos_token_id=None)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    tokenizer.hf.save(str(tmp_path / "hf" / "tokenizer.json"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")

    result = invoke("import-hf", tmp_path / "hf", tmp_path / "run", "--data", corpus)
    assert result.exit_code == 0, result.stderr
    ids = tokenizer.encode(TEXT[:100])[:32]
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(minigpt_logits(tmp_path / "run", ids), theirs, atol=1e-5, rtol=0)

    sampled = invoke("sample", tmp_path / "run", "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", 10,
                     "--device", "cpu")
    assert sampled.exit_code == 0 and sampled.stdout.startswith(PROMPT), sampled.stderr
    evaluated = invoke("eval", tmp_path / "run", "--device", "cpu")
    assert evaluated.exit_code == 0 and "latest checkpoint, step 0" in evaluated.stdout, evaluated.stderr
    tuned = invoke("train", "--headless", "--resume", tmp_path / "run", "--max-iters", 4, "--eval-interval", 2,
                   "--eval-iters", 1, "--batch-size", 2, "--device", "cpu")
    assert tuned.exit_code == 0, tuned.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest").state.step == 4
    # fine-tuning an imported run lays its schedule out over the steps asked for, not the preset's 2000
    assert open_run(tmp_path / "run").config.lr_decay_iters == 0


def test_bad_input_is_one_line(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    make_run(tmp_path / "run", tokenizer)
    (tmp_path / "not-a-run").mkdir()
    assert_one_line_error(invoke("export-hf", tmp_path / "not-a-run", tmp_path / "out"), "not a minigpt run")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert_one_line_error(invoke("export-hf", tmp_path / "run", tmp_path / "taken"), "already exists")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"

    make_run(tmp_path / "sinusoidal", tokenizer, pos_encoding="sinusoidal")
    assert_one_line_error(invoke("export-hf", tmp_path / "sinusoidal", tmp_path / "out"), "pos_encoding='sinusoidal'")
    assert not (tmp_path / "out").exists()

    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    assert_one_line_error(invoke("import-hf", llama, tmp_path / "imported"), "not GPT-2")
    relu = tmp_path / "relu"
    relu.mkdir()
    (relu / "config.json").write_text(json.dumps({"model_type": "gpt2", "activation_function": "relu"}))
    assert_one_line_error(invoke("import-hf", relu, tmp_path / "imported"), "activation_function='relu'")
    assert_one_line_error(invoke("import-hf", tmp_path / "run", tmp_path / "imported"), "not GPT-2")
    pickled = tmp_path / "pickled"
    export_run(tmp_path / "run", pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    assert_one_line_error(invoke("import-hf", pickled, tmp_path / "imported"), "pickle")
    assert not (tmp_path / "imported").exists()
    assert_one_line_error(invoke("import-hf", tmp_path / "missing", tmp_path / "imported"), "not found")


@pytest.mark.anyio
async def test_the_tui_opens_an_imported_run_and_generates(tmp_path):
    from test_tui_app import FAST, set_input, text_of, wait_until
    from textual.widgets import Static, TextArea

    from minigpt_tui.tui.app import create_app

    make_run(tmp_path / "run", CharTokenizer.from_text(TEXT))
    export_run(tmp_path / "run", tmp_path / "hf")
    assert invoke("import-hf", tmp_path / "hf", tmp_path / "imported").exit_code == 0
    app = create_app(tmp_path / "imported", **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await set_input(pilot, "#length", "12")
        await pilot.press("g", *"The king", "enter")
        await wait_until(pilot, lambda: "done:" in text_of(app.query_one("#generation-source", Static)))
        text = app.query_one("#generation-output", TextArea).text
    assert text.startswith("The king") and len(text) == len("The king") + 12


def test_the_conversion_needs_neither_torch_nor_transformers():
    from pathlib import Path

    from test_import_hygiene import imported_roots

    module = Path(__file__).resolve().parents[1] / "minigpt_tui" / "interop" / "hf.py"
    assert not imported_roots(module) & {"torch", "transformers", "textual", "click"}


def test_weights_saved_without_the_transformer_prefix_and_with_mask_buffers_import_too():
    """The original GPT-2 files name tensors ``h.0...`` (a GPT2Model) and carry ``attn.bias`` causal masks."""
    from backends.base import ModelConfig
    from minigpt_tui.interop.hf import from_gpt2_weights, to_gpt2_weights

    config = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=True)
    weights = random_weights(config, seed=2)
    tensors = {name.removeprefix("transformer."): value for name, value in to_gpt2_weights(config, weights).items()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))
    restored = from_gpt2_weights(config, tensors)
    assert all(np.array_equal(restored[name], value) for name, value in weights.items())
    del tensors["h.1.mlp.c_fc.weight"]
    with pytest.raises(MiniGPTError, match="h.1.mlp.c_fc.weight"):
        from_gpt2_weights(config, tensors)

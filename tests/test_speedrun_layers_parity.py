"""The speedrun's layers of issue 22 (value embeddings, logit soft-capping, the bigram embedding, the smear
gate): the NumPy backend against the PyTorch one (loss,
logits, every gradient, AdamW and Muon trajectories), KV-cached decoding against a full forward in both,
inspection traces and the logit lens, and checkpoints moving between the backends. The helpers are
test_numpy_backend.py's.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config, train_tiny
from test_numpy_backend import batch, expected_windows, relative, torch_loss_logits_grads

from backends.base import HeadAblation, ModelConfig, OptimConfig, init_weights
from backends.numpy_backend import NumpyBackend
from minigpt_tui.inspection.lens import Unembedding
from minigpt_tui.training.runs import load_model, open_run

torch = pytest.importorskip("torch")

from backends.torch_backend import TorchBackend  # noqa: E402

CONFIGS = {
    # the speedrun's architecture with both options
    "speedrun-ve-softcap": ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16,
                                       pos_encoding="rope", qk_norm=True, activation="relu2", zero_init_proj=True,
                                       value_embedding=True, logit_softcap=2.0),
    "ve-untied-bias": ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=4, n_embd=16, bias=True,
                                  tie_weights=False, value_embedding=True),
    "softcap-tied-learned": ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16,
                                        logit_softcap=1.5),
    "speedrun-bigram-smear": ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16,
                                         pos_encoding="rope", qk_norm=True, activation="relu2", value_embedding=True,
                                         bigram_embedding=True, smear_gate=True),
    "bigram-smear-learned-untied": ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8,
                                               tie_weights=False, bias=True, bigram_embedding=True, smear_gate=True),
}
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
ADAMW = OptimConfig(weight_decay=0.1, grad_clip=0.7)
MUON = OptimConfig(weight_decay=0.1, grad_clip=0.7, optimizer="muon", muon_lr_scale=5.0)


def moved_weights(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """The init moved off its special values (a zero table and zero projections, unit gains): every
    gradient path is then open, the value embeddings change the values, and the caps bend the logits."""
    rng = np.random.default_rng(seed)
    return {n: (w + rng.normal(scale=0.3, size=w.shape)).astype(np.float32) for n, w in init_weights(config, 0).items()}


def pair(config: ModelConfig, weights: dict[str, np.ndarray], dtype: str, optim: OptimConfig = ADAMW):
    return (NumpyBackend(config, weights, optim, dtype=dtype),
            TorchBackend(config, weights, optim, device="cpu", dtype=dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", CONFIGS)
def test_loss_logits_and_every_gradient_match_torch(name, dtype):
    config, tol = CONFIGS[name], TOLERANCE[dtype]
    numpy_backend, torch_backend = pair(config, moved_weights(config), dtype)
    inputs, targets = batch(config, np.random.default_rng(1))
    loss, logits, grads = torch_loss_logits_grads(torch_backend, inputs, targets)
    if config.logit_softcap:
        assert np.abs(logits).max() > 0.5 * config.logit_softcap  # the tanh bends here, not only its linear part
    ws = numpy_backend.workspace(inputs.shape)
    numpy_backend.model.forward(ws, inputs)
    assert relative(ws.logits, logits) < tol
    assert numpy_backend.loss_and_grads(inputs, targets, scale=1.0 / targets.size) == pytest.approx(loss, rel=tol)
    assert numpy_backend.eval_loss(inputs, targets) == pytest.approx(torch_backend.eval_loss(inputs, targets), rel=tol)
    assert grads.keys() == numpy_backend.grads.keys()
    if config.value_embedding:
        assert np.abs(grads["value_embed.weight"]).max() > 1e-4 and np.abs(grads["h.1.attn.ve_gain"]).max() > 1e-4
    if config.smear_gate:
        assert np.abs(grads["smear_gate.weight"]).max() > 1e-4 and np.abs(grads["smear_lambda"]).max() > 1e-4
    if config.bigram_embedding:
        assert np.abs(grads["bigram.weight"]).max() > 1e-4
    errors = {n: relative(numpy_backend.grads[n], g) for n, g in grads.items()}
    assert max(errors.values()) < tol, errors


@pytest.mark.parametrize("optim", [ADAMW, MUON], ids=["adamw", "muon"])
@pytest.mark.parametrize("name", CONFIGS)
def test_ten_optimizer_steps_from_the_init_match_torch(name, optim):
    """From the real init (the table at zero): the first steps must grow it the same way in both."""
    config = CONFIGS[name]
    numpy_backend, torch_backend = pair(config, init_weights(config, 0), "float64", optim)
    rng = np.random.default_rng(2)
    for step in range(10):
        micro_batches = [batch(config, rng), batch(config, rng)]
        lr = 3e-2 * (1 - step / 10)
        ours, reference = numpy_backend.train_step(micro_batches, lr), torch_backend.train_step(micro_batches, lr)
        assert ours.loss == pytest.approx(reference.loss, rel=1e-10)
        assert ours.grad_norm == pytest.approx(reference.grad_norm, rel=1e-8)
    assert sorted(numpy_backend.muon_names) == sorted(torch_backend.muon_names)
    assert "value_embed.weight" not in numpy_backend.muon_names
    for n, p in torch_backend.model.named_parameters():
        assert np.abs(numpy_backend.params[n] - p.detach().numpy()).max() < 1e-8, n
    if config.value_embedding:
        assert np.abs(numpy_backend.params["value_embed.weight"]).max() > 1e-3  # it did train
        assert np.abs(numpy_backend.params["h.0.attn.ve_gain"] - 1.0).max() > 1e-4
    for name in ("bigram.weight", "smear_lambda", "smear_gate.weight"):  # from zero: the first steps grow them
        if name in numpy_backend.params:
            assert np.abs(numpy_backend.params[name]).max() > 1e-4, name
    ours, reference = numpy_backend.get_optimizer_state(), torch_backend.get_optimizer_state()
    assert ours.keys() == reference.keys()
    if config.value_embedding:
        assert {"exp_avg.value_embed.weight", "exp_avg.h.1.attn.ve_gain"} <= ours.keys()
    for key, value in reference.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-5, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_session_equals_full_forward_and_torch(name):
    config = CONFIGS[name]  # block_size 8: the feeds below overflow it twice
    numpy_backend, torch_backend = pair(config, moved_weights(config), "float32")
    rng = np.random.default_rng(3)
    feeds = [[1, 2, 3]] + [[int(t)] for t in rng.integers(0, 11, 9)] + [[4, 5]] + [[6]] * 4
    ours, reference = numpy_backend.generation_session(), torch_backend.generation_session()
    for tokens, window in zip(feeds, expected_windows(config.block_size, feeds), strict=True):
        logits = ours.feed(tokens)
        full = numpy_backend.logits(np.asarray([window]))[0, -1]
        np.testing.assert_allclose(logits, full, atol=1e-5)
        np.testing.assert_allclose(reference.feed(tokens), full, atol=1e-5)
        np.testing.assert_allclose(torch_backend.logits(np.asarray([window]))[0, -1], full, atol=1e-5)
    # two rows decoded side by side (the torch Decoder's per-row value-embedding rows and previous tokens)
    rows = np.asarray([[1, 2, 3, 4], [5, 3, 9, 0]])
    sessions = numpy_backend.generation_session(batch=2), torch_backend.generation_session(batch=2)
    for session in sessions:
        session.feed_rows(rows[:, :2])
        for t in (2, 3):
            np.testing.assert_allclose(session.feed_rows(rows[:, t : t + 1]),
                                       numpy_backend.logits(rows[:, : t + 1])[:, -1], atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_traces_match_torch_and_the_last_lens_is_the_models_prediction(name):
    config = CONFIGS[name]
    numpy_backend, torch_backend = pair(config, moved_weights(config), "float64")
    tokens = np.asarray([[1, 4, 2, 2, 7, 3]])
    heads = np.zeros((config.n_layer, config.n_head), bool)
    heads[1, 0] = True
    for ablation in (None, HeadAblation(heads)):
        ours, reference = numpy_backend.trace(tokens, ablation), torch_backend.trace(tokens, ablation)
        for field in ("logits", "attention", "residual", "head_outputs"):
            np.testing.assert_allclose(getattr(ours, field), getattr(reference, field), rtol=1e-9, atol=1e-12,
                                       err_msg=field)
    trace = numpy_backend.trace(tokens)
    np.testing.assert_allclose(trace.logits, numpy_backend.logits(tokens)[0], rtol=1e-6)
    np.testing.assert_allclose(Unembedding.of(numpy_backend).logits(trace.residual[-1]), trace.logits, rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("trained_with, loaded_with", [("torch", "numpy"), ("numpy", "torch")])
def test_a_checkpoint_with_every_option_moves_between_the_backends(tmp_path, corpus_path, trained_with, loaded_with):
    out = tmp_path / "run"
    config = tiny_config(backend=trained_with, max_iters=4, eval_interval=4, value_embedding=True, logit_softcap=15.0,
                         bigram_embedding=True, smear_gate=True, optimizer="muon")
    train_tiny(out, corpus_path, config)
    run = open_run(out)
    assert run.config.model.value_embedding and run.config.model.logit_softcap == 15.0
    assert run.config.model.bigram_embedding and run.config.model.smear_gate
    original, _ = load_model(run)
    other, _ = load_model(run, backend=loaded_with)
    weights = other.get_weights()
    for name in ("value_embed.weight", "bigram.weight", "smear_lambda"):  # trained, saved and loaded
        assert np.abs(weights[name]).max() > 0, name
    context = np.asarray([run.tokenizer.encode("The king and the")])
    np.testing.assert_allclose(other.logits(context), original.logits(context), atol=1e-5)
    np.testing.assert_allclose(other.generation_session().feed(list(context[0])),
                               original.generation_session().feed(list(context[0])), atol=1e-5)

"""Backend.trace, the inspection forward: the PyTorch and NumPy backends agree on the attention
probabilities, logits, residual stream and head outputs, with and without heads ablated; every row is a
causal distribution, and the logits are Backend.logits'."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import HeadAblation, ModelConfig, OptimConfig, init_weights
from backends.numpy_backend import NumpyBackend

torch = pytest.importorskip("torch")
from backends.torch_backend import TorchBackend  # noqa: E402

CONFIGS = {
    "tied-learned": ModelConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16),
    "untied-sinusoidal-bias": ModelConfig(vocab_size=11, block_size=12, n_layer=3, n_head=4, n_embd=16, bias=True,
                                          pos_encoding="sinusoidal", tie_weights=False, dropout=0.2),
    "rope-qknorm": ModelConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, pos_encoding="rope",
                               qk_norm=True, activation="relu2"),
}


def backends(config: ModelConfig, dtype: str):
    # larger weights than the init's N(0, 0.02) so the attention is far from uniform and differences show
    weights = {n: w * 20 if w.ndim == 2 else w for n, w in init_weights(config, 1).items()}
    return (NumpyBackend(config, weights, OptimConfig(), dtype=dtype),
            TorchBackend(config, weights, OptimConfig(), device="cpu", dtype=dtype))


@pytest.mark.parametrize("name", CONFIGS)
def test_torch_and_numpy_traces_agree_in_float64(name):
    config = CONFIGS[name]
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, 10))
    numpy_trace, torch_trace = (b.trace(tokens) for b in backends(config, "float64"))
    assert numpy_trace.attention.shape == (config.n_layer, config.n_head, 10, 10)
    assert numpy_trace.logits.shape == (10, config.vocab_size)
    assert torch_trace.attention.dtype == np.float64
    assert np.abs(numpy_trace.attention - torch_trace.attention).max() < 1e-10
    assert np.abs(numpy_trace.logits - torch_trace.logits).max() < 1e-10
    assert numpy_trace.residual.shape == (config.n_layer + 1, 10, config.n_embd)
    assert numpy_trace.head_outputs.shape == (config.n_layer, config.n_head, 10, config.n_embd // config.n_head)
    assert np.abs(numpy_trace.residual - torch_trace.residual).max() < 1e-10
    assert np.abs(numpy_trace.head_outputs - torch_trace.head_outputs).max() < 1e-10


def ablations(config: ModelConfig) -> dict[str, HeadAblation]:
    heads = np.zeros((config.n_layer, config.n_head), bool)
    heads[0, 1] = heads[-1, 0] = True
    values = np.random.default_rng(3).normal(0, 1.0, (config.n_layer, config.n_head, config.n_embd // config.n_head))
    return {"zero": HeadAblation(heads), "mean": HeadAblation(heads, values)}


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("name", CONFIGS)
def test_ablated_traces_agree_in_float64_and_replace_the_heads(name, mode):
    config = CONFIGS[name]
    ablation = ablations(config)[mode]
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, 10))
    numpy_backend, torch_backend = backends(config, "float64")
    plain = numpy_backend.trace(tokens)
    numpy_trace, torch_trace = (b.trace(tokens, ablation) for b in (numpy_backend, torch_backend))
    for field in ("logits", "attention", "residual", "head_outputs"):
        assert np.abs(getattr(numpy_trace, field) - getattr(torch_trace, field)).max() < 1e-10, field
    for trace in (numpy_trace, torch_trace):
        for layer, head in zip(*ablation.heads.nonzero(), strict=True):
            expected = np.broadcast_to(ablation.replacement(layer, head), trace.head_outputs[layer, head].shape)
            np.testing.assert_array_equal(trace.head_outputs[layer, head], expected)
    assert np.abs(numpy_trace.logits - plain.logits).max() > 1e-3  # the ablation changed the prediction
    # the first layer's other head and the stream before the ablated layer are untouched
    np.testing.assert_array_equal(numpy_trace.residual[0], plain.residual[0])
    np.testing.assert_allclose(numpy_trace.head_outputs[0, 0], plain.head_outputs[0, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("which", [0, 1])
def test_an_empty_ablation_changes_nothing_and_leaves_training_alone(which):
    config = CONFIGS["tied-learned"]
    backend = backends(config, "float64")[which]
    tokens = np.random.default_rng(4).integers(0, config.vocab_size, (1, 8))
    plain = backend.trace(tokens)
    none = backend.trace(tokens, HeadAblation(np.zeros((config.n_layer, config.n_head), bool)))
    np.testing.assert_array_equal(plain.logits, none.logits)
    backend.trace(tokens, ablations(config)["zero"])
    np.testing.assert_allclose(backend.logits(tokens)[0], plain.logits, rtol=1e-6, atol=1e-6)  # nothing stuck


@pytest.mark.parametrize("which", [0, 1])
def test_an_ablation_for_another_shape_is_refused(which):
    backend = backends(CONFIGS["tied-learned"], "float32")[which]
    with pytest.raises(ValueError, match="heads"):
        backend.trace(np.zeros((1, 4), np.int64), HeadAblation(np.zeros((3, 2), bool)))
    with pytest.raises(ValueError, match="head size"):
        backend.trace(np.zeros((1, 4), np.int64), HeadAblation(np.ones((2, 2), bool), np.zeros((2, 2, 5))))


@pytest.mark.parametrize("which", [0, 1])
def test_the_last_residual_through_the_final_layernorm_and_head_is_the_logits(which):
    config = CONFIGS["untied-sinusoidal-bias"]
    backend = backends(config, "float64")[which]
    trace = backend.trace(np.random.default_rng(5).integers(0, config.vocab_size, (1, 9)))
    w = backend.get_weights()
    x = trace.residual[-1]
    xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose((xhat * w["ln_f.weight"] + w["ln_f.bias"]) @ w["lm_head.weight"].T, trace.logits,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", [0, 1])
def test_attention_rows_are_causal_distributions(which):
    config = CONFIGS["untied-sinusoidal-bias"]  # dropout 0.2 in the config: trace must not apply it
    backend = backends(config, "float32")[which]
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (1, 9))
    first, second = backend.trace(tokens), backend.trace(tokens)
    att = first.attention
    assert np.allclose(att.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(att, k=1) == 0)  # nothing from the future
    assert att.std() > 0.01  # not uniform: the test could fail
    np.testing.assert_array_equal(att, second.attention)  # no dropout, so deterministic


@pytest.mark.parametrize("which", [0, 1])
def test_trace_logits_equal_backend_logits(which):
    config = CONFIGS["tied-learned"]
    backend = backends(config, "float32")[which]
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, (1, 12))
    np.testing.assert_allclose(backend.trace(tokens).logits, backend.logits(tokens)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", [0, 1])
def test_trace_takes_one_sequence(which):
    backend = backends(CONFIGS["tied-learned"], "float32")[which]
    with pytest.raises(ValueError):
        backend.trace(np.zeros((2, 4), np.int64))

"""Backend.trace, the inspection forward: the PyTorch and NumPy backends agree on the attention
probabilities and logits, every row is a causal distribution, and the logits are Backend.logits'."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import ModelConfig, OptimConfig, init_weights
from backends.numpy_backend import NumpyBackend

torch = pytest.importorskip("torch")
from backends.torch_backend import TorchBackend  # noqa: E402

CONFIGS = {
    "tied-learned": ModelConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16),
    "untied-sinusoidal-bias": ModelConfig(vocab_size=11, block_size=12, n_layer=3, n_head=4, n_embd=16, bias=True,
                                          pos_encoding="sinusoidal", tie_weights=False, dropout=0.2),
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

"""Every hand-written backward of the NumPy backend against central finite differences, in float64.

No torch here: the backward passes are checked against the definition of a derivative itself. Each
layer is checked through the scalar sum(out * R) for a random R, so that dout = R.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from backends import numpy_layers as nl
from backends.base import ModelConfig, OptimConfig, init_weights, rope_tables
from backends.numpy_backend import NumpyBackend

TOLERANCE = 1e-5


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6, entries=None) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``x``, perturbed in place; only at
    the flat ``entries`` when given (the rest stays 0)."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size) if entries is None else entries:
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    return float(np.linalg.norm(analytic - numeric) / max(np.linalg.norm(analytic), np.linalg.norm(numeric)))


def assert_grads(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    errors = {name: rel_error(a, n) for name, (a, n) in pairs.items()}
    assert max(errors.values()) < TOLERANCE, errors


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_embedding(rng):
    V, C, block, (B, T) = 5, 3, 6, (2, 4)
    idx = np.array([[1, 3, 1, 1], [0, 3, 4, 1]])  # repeated ids: the scatter-add must sum them
    wte, wpe, R = rng.normal(size=(V, C)), rng.normal(size=(block, C)), rng.normal(size=(B, T, C))
    out = np.empty((B, T, C))

    def f():
        nl.embedding_forward(out, idx, wte, wpe[:T])
        return float(np.sum(out * R))

    dwte, dwpe = np.zeros_like(wte), np.full_like(wpe, 7.0)
    nl.embedding_backward(dwte, dwpe, R, idx)
    assert np.all(dwpe[T:] == 0.0)  # positions the batch never reached get no gradient
    assert_grads({"wte": (dwte, numeric_grad(f, wte)), "wpe": (dwpe, numeric_grad(f, wpe))})


def test_layernorm(rng):
    x, w, b, R = rng.normal(size=(2, 3, 6)), rng.normal(size=6), rng.normal(size=6), rng.normal(size=(2, 3, 6))
    out, xhat, rstd = np.empty_like(x), np.empty_like(x), np.empty((2, 3, 1))

    def f():
        nl.layernorm_forward(out, xhat, rstd, x, w, b)
        return float(np.sum(out * R))

    f()
    mean, std = x.mean(-1, keepdims=True), np.sqrt(x.var(-1, keepdims=True) + nl.LN_EPS)
    np.testing.assert_allclose(out, (x - mean) / std * w + b, rtol=1e-12)
    start = rng.normal(size=x.shape)  # the input gradient is accumulated onto what is there
    dx, dw, db = start.copy(), np.empty_like(w), np.empty_like(b)
    scratch = (np.empty_like(x), np.empty_like(x), np.empty_like(rstd), np.empty_like(rstd))
    nl.layernorm_backward(dx, dw, db, R, xhat, rstd, w, scratch)
    assert_grads({"x": (dx - start, numeric_grad(f, x)), "w": (dw, numeric_grad(f, w)), "b": (db, numeric_grad(f, b))})


def test_linear(rng):
    x, w, b, R = rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 4)), rng.normal(size=5), rng.normal(size=(2, 3, 5))
    out = np.empty((2, 3, 5))

    def f():
        nl.linear_forward(out, x, w, b)
        return float(np.sum(out * R))

    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    nl.linear_backward(dx, dw, db, R, x, w)
    assert_grads({"x": (dx, numeric_grad(f, x)), "w": (dw, numeric_grad(f, w)), "b": (db, numeric_grad(f, b))})


@pytest.mark.parametrize("dropout", [False, True])
def test_attention(rng, dropout):
    B, T, nh, hs = 2, 5, 2, 3
    C = nh * hs
    qkv, R = rng.normal(size=(B, T, 3 * C)), rng.normal(size=(B, T, C))
    y, att, row = np.empty((B, T, C)), np.empty((B, nh, T, T)), np.empty((B, nh, T, 1))
    bias = nl.causal_bias(T, np.float64)
    keep, att_kept = (np.empty_like(att), np.empty_like(att)) if dropout else (None, None)
    if dropout:
        nl.dropout_mask(keep, 0.3, np.random.default_rng(1))

    def f():
        nl.attention_forward(nl.merge_heads(y, nh), att, *nl.split_heads(qkv, nh), bias, row, keep, att_kept)
        return float(np.sum(y * R))

    f()
    dqkv = np.empty_like(qkv)
    nl.attention_backward(*nl.split_heads(dqkv, nh), np.empty_like(att), nl.merge_heads(R, nh), att,
                          *nl.split_heads(qkv, nh), row, np.empty_like(att), keep, att_kept)
    assert_grads({"qkv": (dqkv, numeric_grad(f, qkv))})


def test_attention_is_causal(rng):
    B, T, nh, C = 1, 6, 2, 4
    qkv = rng.normal(size=(B, T, 3 * C))
    y, att, row = np.empty((B, T, C)), np.empty((B, nh, T, T)), np.empty((B, nh, T, 1))
    nl.attention_forward(nl.merge_heads(y, nh), att, *nl.split_heads(qkv, nh), nl.causal_bias(T, np.float64), row)
    before = y.copy()
    qkv[:, 4:] += 1.0  # change the last two positions only
    nl.attention_forward(nl.merge_heads(y, nh), att, *nl.split_heads(qkv, nh), nl.causal_bias(T, np.float64), row)
    np.testing.assert_array_equal(y[:, :4], before[:, :4])
    assert not np.allclose(y[:, 4:], before[:, 4:])
    np.testing.assert_allclose(att.sum(-1), 1.0)


def test_gelu(rng):
    x, R = rng.normal(size=(3, 7)) * 2, rng.normal(size=(3, 7))
    out, t = np.empty_like(x), np.empty_like(x)

    def f():
        nl.gelu_forward(out, t, x)
        return float(np.sum(out * R))

    f()
    np.testing.assert_allclose(out, 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))))
    dx = np.empty_like(x)
    nl.gelu_backward(dx, R, x, t, np.empty_like(x))
    assert_grads({"x": (dx, numeric_grad(f, x))})


def test_mlp(rng):
    C = 3
    x, R = rng.normal(size=(2, 2, C)), rng.normal(size=(2, 2, C))
    fc_w, fc_b = rng.normal(size=(4 * C, C)), rng.normal(size=4 * C)
    proj_w, proj_b = rng.normal(size=(C, 4 * C)), rng.normal(size=C)
    out, h, t, g = np.empty_like(x), *(np.empty((2, 2, 4 * C)) for _ in range(3))

    def f():
        nl.mlp_forward(out, h, t, g, x, fc_w, fc_b, proj_w, proj_b)
        return float(np.sum(out * R))

    f()
    grads = [np.empty_like(a) for a in (x, fc_w, fc_b, proj_w, proj_b)]
    nl.mlp_backward(*grads, R, x, h, t, g, fc_w, proj_w, tuple(np.empty_like(h) for _ in range(3)))
    names = ("x", "fc_w", "fc_b", "proj_w", "proj_b")
    inputs = (x, fc_w, fc_b, proj_w, proj_b)
    assert_grads({name: (g, numeric_grad(f, a)) for name, g, a in zip(names, grads, inputs, strict=True)})


def test_residual(rng):
    x, branch, R = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    out = np.empty_like(x)

    def f():
        nl.residual_forward(out, x, branch)
        return float(np.sum(out * R))

    dx = np.empty_like(x)
    nl.residual_backward(dx, R)
    # the stream gets dx, the branch reads dout itself
    assert_grads({"x": (dx, numeric_grad(f, x)), "branch": (R, numeric_grad(f, branch))})


def test_dropout(rng):
    p = 0.25
    x, R = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    out, keep = np.empty_like(x), np.empty_like(x)

    def f():  # a freshly seeded generator draws the same mask every call
        nl.dropout_forward(out, keep, x, p, np.random.default_rng(3))
        return float(np.sum(out * R))

    f()
    dx = np.empty_like(x)
    nl.dropout_backward(dx, R, keep)
    assert_grads({"x": (dx, numeric_grad(f, x))})
    big = np.empty(200_000, np.float32)
    nl.dropout_mask(big, p, rng)
    assert big.dtype == np.float32
    assert set(np.unique(big)) == {0.0, np.float32(1 / (1 - p))}
    assert abs(np.mean(big == 0) - p) < 0.01  # drops with probability p, keeps the mean
    assert abs(big.mean() - 1.0) < 0.01


def test_crossentropy(rng):
    N, V = 6, 7
    logits, targets = rng.normal(size=(N, V)) * 3, rng.integers(0, V, N)
    probs, row = np.empty_like(logits), np.empty((N, 1))

    def f():
        return nl.crossentropy_forward(probs, logits, targets, row)

    loss = f()
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert loss == pytest.approx(-log_softmax[np.arange(N), targets].mean(), rel=1e-12)
    dlogits = np.empty_like(logits)
    nl.crossentropy_backward(dlogits, probs, targets, 1.0 / N)
    assert_grads({"logits": (dlogits, numeric_grad(f, logits))})


def test_qknorm(rng):
    qkv, R = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 4))  # a strided view, like a head of qkv
    x = qkv[:, :, 1]
    out, rstd = np.empty((2, 3, 4)), np.empty((2, 3, 1))

    def f():
        nl.qknorm_forward(out, rstd, x)
        return float(np.sum(out * R))

    f()
    np.testing.assert_allclose(out, x / np.sqrt((x * x).mean(-1, keepdims=True) + nl.QK_NORM_EPS), rtol=1e-12)
    dqkv = np.zeros_like(qkv)
    nl.qknorm_backward(dqkv[:, :, 1], R, out, rstd, np.empty_like(out), np.empty_like(rstd))
    assert_grads({"x": (dqkv, numeric_grad(f, qkv))})  # and nothing written outside the view


def test_rope(rng):
    B, nh, T, hs = 2, 2, 5, 6
    x, R = rng.normal(size=(B, nh, T, hs)), rng.normal(size=(B, nh, T, hs))
    cos, sin = rope_tables(8, hs)
    cos, sin = cos[2 : 2 + T], sin[2 : 2 + T]  # positions 2..6, as for a KV cache holding two tokens
    out = np.empty_like(x)

    def f():
        nl.rope_forward(out, x, cos, sin)
        return float(np.sum(out * R))

    f()
    # a rotation keeps each channel pair's norm, and q.k depends on the positions only through their gap
    half = hs // 2
    np.testing.assert_allclose(out[..., :half] ** 2 + out[..., half:] ** 2, x[..., :half] ** 2 + x[..., half:] ** 2)
    q = rng.normal(size=hs)
    c, s = rope_tables(20, hs)

    def rotated(v, pos):
        o = np.empty((1, hs))
        nl.rope_forward(o, v[None], c[pos : pos + 1], s[pos : pos + 1])
        return o[0]

    assert rotated(q, 3) @ rotated(x[0, 0, 0], 1) == pytest.approx(rotated(q, 13) @ rotated(x[0, 0, 0], 11))
    dx = np.empty_like(x)
    nl.rope_backward(dx, R, cos, sin)
    assert_grads({"x": (dx, numeric_grad(f, x))})


@pytest.mark.parametrize("kind", ["gelu_tanh", "gelu", "relu2"])
def test_activations(kind, rng):
    x, R = rng.normal(size=(3, 8)) * 2, rng.normal(size=(3, 8))
    x[np.abs(x) < 1e-3] = 0.5  # relu2's kink at 0 has no central difference
    out, saved = np.empty_like(x), np.empty_like(x)
    forward, backward = nl.ACTIVATION_LAYERS[kind]

    def f():
        forward(out, saved, x)
        return float(np.sum(out * R))

    f()
    erf = np.vectorize(math.erf)
    reference = {"gelu_tanh": 0.5 * x * (1 + np.tanh(nl.GELU_K * (x + nl.GELU_A * x**3))),
                 "gelu": 0.5 * x * (1 + erf(x / math.sqrt(2))), "relu2": np.maximum(x, 0) ** 2}[kind]
    # the exact GELU goes through a Chebyshev fit of erfc (NumPy has no erf): relative error < 1.2e-7
    np.testing.assert_allclose(out, reference, rtol=2e-7 if kind == "gelu" else 1e-12, atol=1e-12)
    dx = np.empty_like(x)
    backward(dx, R, x, saved, np.empty_like(x))
    assert_grads({"x": (dx, numeric_grad(f, x))})


MODEL_CONFIGS = {
    "bias-untied-learned": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8, bias=True,
                                       tie_weights=False),
    "tied-sinusoidal-dropout": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8,
                                           pos_encoding="sinusoidal", dropout=0.2),
    "rope-qknorm-relu2-dropout": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8,
                                             pos_encoding="rope", qk_norm=True, activation="relu2", dropout=0.2),
    "qknorm-gelu-untied": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8, qk_norm=True,
                                      activation="gelu", tie_weights=False),
}


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_whole_model(name, rng):
    config = MODEL_CONFIGS[name]
    backend = NumpyBackend(config, init_weights(config, 0), OptimConfig(), dtype="float64")
    for param in backend.params.values():  # move off the initial values (gains 1, biases 0)
        param += rng.normal(scale=0.1, size=param.shape)
    ids = rng.integers(0, config.vocab_size, (3, config.block_size))  # T = 4 < block_size
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def f():  # dropout masks come from a freshly seeded generator: the same every call
        return backend.loss_and_grads(inputs, targets, scale=1.0 / targets.size, rng=np.random.default_rng(9))

    f()
    analytic = {n: g.copy() for n, g in backend.grads.items()}
    pairs = {}
    for pname, param in backend.params.items():
        entries = rng.choice(param.size, min(param.size, 6), replace=False)
        numeric = numeric_grad(f, param, entries=entries)
        pairs[pname] = (analytic[pname].reshape(-1)[entries], numeric.reshape(-1)[entries])
    if config.pos_encoding == "learned":
        assert np.all(analytic["wpe.weight"][targets.shape[1]:] == 0.0)
    assert_grads(pairs)

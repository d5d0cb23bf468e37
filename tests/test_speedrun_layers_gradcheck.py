"""The speedrun's layers of issue 22 (value embeddings, logit soft-capping, the bigram embedding, the smear
gate) in the NumPy backend: their layer pairs and whole models against central finite differences in
float64, their inits, and that each option really changes what the model computes (the parity tests
against torch could not see an option both backends ignore).
No torch here, as in test_numpy_gradcheck.py, whose helpers these tests use.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_numpy_gradcheck import assert_grads, numeric_grad

from backends import numpy_layers as nl
from backends.base import (
    ModelConfig,
    OptimConfig,
    bigram_pairs,
    canonical_shapes,
    init_weights,
    is_decayed,
    is_hidden_matrix,
)
from backends.numpy_backend import NumpyBackend

BASE = ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_value_embed(rng):
    B, T, C = 2, 3, 4
    qkv0, ve, gain, R = rng.normal(size=(B, T, 3 * C)), rng.normal(size=(B, T, C)), rng.normal(size=1), \
        rng.normal(size=(B, T, 3 * C))
    qkv, scratch = np.empty_like(qkv0), np.empty((B, T, C))

    def f():  # the forward adds into a strided view (the v third of qkv), as the model calls it
        np.copyto(qkv, qkv0)
        nl.value_embed_forward(qkv[..., 2 * C :], ve, gain, scratch)
        return float(np.sum(qkv * R))

    f()
    np.testing.assert_array_equal(qkv[..., : 2 * C], qkv0[..., : 2 * C])  # q and k untouched
    np.testing.assert_allclose(qkv[..., 2 * C :], qkv0[..., 2 * C :] + gain * ve, rtol=1e-15)
    start = rng.normal(size=ve.shape)  # the table's gradient accumulates over layers
    dve, dgain = start.copy(), np.full(1, 7.0)
    nl.value_embed_backward(dve, dgain, R[..., 2 * C :], ve, gain, scratch)
    assert_grads({"ve": (dve - start, numeric_grad(f, ve)), "gain": (dgain, numeric_grad(f, gain))})


@pytest.mark.parametrize("T", [1, 4])
def test_bigram(rng, T):
    B, C, V = 2, 3, 4
    idx = rng.integers(0, V, (B, T))
    idx[0, :3 if T > 2 else T] = 1  # a repeated pair: its row sums the gradients of both positions
    x0, table, R = rng.normal(size=(B, T, C)), rng.normal(size=(V * V, C)), rng.normal(size=(B, T, C))
    x = np.empty_like(x0)
    pairs = bigram_pairs(idx, V)
    assert pairs.shape == (B, T - 1)

    def f():
        np.copyto(x, x0)
        nl.bigram_forward(x, pairs, table)
        return float(np.sum(x * R))

    f()
    np.testing.assert_array_equal(x[:, 0], x0[:, 0])  # the first position has no previous token
    for b in range(B):
        for t in range(1, T):
            np.testing.assert_allclose(x[b, t], x0[b, t] + table[idx[b, t - 1] * V + idx[b, t]], rtol=1e-15)
    dtable = np.full_like(table, 7.0)  # written, not accumulated
    nl.bigram_backward(dtable, R, pairs)
    if T == 1:  # no pair at all: no gradient (and the table must still be written)
        assert not dtable.any()
    else:
        assert_grads({"table": (dtable, numeric_grad(f, table))})


def test_smear_gate(rng):
    B, T, C, k = 2, 4, 5, 3
    e, weight, lam, R = rng.normal(size=(B, T, C)), rng.normal(size=(1, k)), rng.normal(size=1), \
        rng.normal(size=(B, T, C))
    out, gate = np.empty_like(e), np.empty((B, T - 1, 1))

    def f():
        nl.smear_forward(out, gate, e, weight, lam)
        return float(np.sum(out * R))

    f()
    np.testing.assert_array_equal(out[:, 0], e[:, 0])
    expected_gate = 1.0 / (1.0 + np.exp(-(e[:, 1:, :k] @ weight.T)))
    np.testing.assert_allclose(gate, expected_gate, rtol=1e-14)
    np.testing.assert_allclose(out[:, 1:], e[:, 1:] + lam * expected_gate * e[:, :-1], rtol=1e-14)
    de, dweight, dlam = np.full_like(e, 7.0), np.full_like(weight, 7.0), np.full(1, 7.0)  # all written
    nl.smear_backward(de, dweight, dlam, R, e, gate, weight, lam)
    assert_grads({"e": (de, numeric_grad(f, e)), "weight": (dweight, numeric_grad(f, weight)),
                  "lam": (dlam, numeric_grad(f, lam))})


@pytest.mark.parametrize("in_place", [False, True])
def test_softcap(rng, in_place):
    cap = 2.5
    x, R = rng.normal(size=(3, 7)) * 4, rng.normal(size=(3, 7))  # many beyond the cap: the tanh bends
    out, t = np.empty_like(x), np.empty_like(x)

    def f():
        nl.softcap_forward(out, t, x, cap)
        return float(np.sum(out * R))

    f()
    np.testing.assert_allclose(out, cap * np.tanh(x / cap), rtol=1e-14)
    assert np.abs(out).max() < cap < np.abs(x).max()
    dx = R.copy() if in_place else np.empty_like(x)
    nl.softcap_backward(dx, dx if in_place else R, t)
    assert_grads({"x": (dx, numeric_grad(f, x))})
    small = np.array([1e-3, -2e-3])  # about the identity far below the cap
    nl.softcap_forward(out[0, :2], t[0, :2], small, 30.0)
    np.testing.assert_allclose(out[0, :2], small, rtol=1e-8)


MODEL_CONFIGS = {
    "ve-softcap-rope-qknorm-relu2-dropout": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8,
                                                        pos_encoding="rope", qk_norm=True, activation="relu2",
                                                        dropout=0.2, value_embedding=True, logit_softcap=1.5),
    "ve-bias-untied-learned": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8, bias=True,
                                          tie_weights=False, value_embedding=True),
    "softcap-tied-sinusoidal": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8,
                                           pos_encoding="sinusoidal", logit_softcap=1.0),
    "bigram-smear-rope-dropout": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8,
                                             pos_encoding="rope", dropout=0.2, bigram_embedding=True,
                                             smear_gate=True, value_embedding=True),
    "bigram-untied-learned": ModelConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8,
                                         tie_weights=False, bigram_embedding=True),
    # n_embd 16 > SMEAR_GATE_INPUTS: the gate reads only the first 12 channels
    "smear-learned-bias": ModelConfig(vocab_size=7, block_size=5, n_layer=1, n_head=2, n_embd=16, bias=True,
                                      smear_gate=True),
}


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_whole_model(name, rng):
    config = MODEL_CONFIGS[name]
    backend = NumpyBackend(config, init_weights(config, 0), OptimConfig(), dtype="float64")
    for param in backend.params.values():  # off the initial values: the zero table, gains 1, biases 0
        param += rng.normal(scale=0.3, size=param.shape)
    ids = rng.integers(0, config.vocab_size, (3, config.block_size))
    ids[0, :3] = 2  # a repeated token: its value-embedding row sums the gradients of every position
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def f():
        return backend.loss_and_grads(inputs, targets, scale=1.0 / targets.size, rng=np.random.default_rng(9))

    f()
    if config.logit_softcap:  # the cap is reached: the test exercises the tanh, not its linear part
        ws = backend.workspace(inputs.shape)
        backend.model.forward(ws, inputs)
        assert np.abs(ws.logits).max() > 0.5 * config.logit_softcap
        f()
    analytic = {n: g.copy() for n, g in backend.grads.items()}
    pairs = {}
    for pname, param in backend.params.items():
        entries = rng.choice(param.size, min(param.size, 6), replace=False)
        if pname == "value_embed.weight":  # rows of tokens in the batch (the others get exactly 0, below)
            seen = np.unique(inputs)
            entries = (seen[:, None] * config.n_embd + np.arange(0, config.n_embd, 3)).reshape(-1)
            unseen = np.setdiff1d(np.arange(config.vocab_size), seen)
            assert np.all(analytic[pname][unseen] == 0.0)
        if pname == "bigram.weight":  # rows of the pairs in the batch, likewise
            seen = np.unique(inputs[:, :-1] * config.vocab_size + inputs[:, 1:])
            entries = (seen[:, None] * config.n_embd + np.arange(0, config.n_embd, 3)).reshape(-1)
            assert np.all(np.delete(analytic[pname], seen, axis=0) == 0.0)
        numeric = numeric_grad(f, param, entries=entries)
        pairs[pname] = (analytic[pname].reshape(-1)[entries], numeric.reshape(-1)[entries])
    assert_grads(pairs)
    if config.value_embedding:
        assert all(np.abs(analytic[f"h.{i}.attn.ve_gain"]).max() > 1e-6 for i in range(config.n_layer))
    if config.smear_gate:
        assert np.abs(analytic["smear_gate.weight"]).min() > 1e-8 and abs(analytic["smear_lambda"][0]) > 1e-6
        assert np.abs(analytic["wte.weight"]).max() > 1e-6


def test_the_options_off_change_nothing_and_on_add_only_their_own_parameters():
    on = ModelConfig(**{**BASE.to_dict(), "value_embedding": True, "logit_softcap": 15.0})
    base_shapes, shapes = canonical_shapes(BASE), canonical_shapes(on)
    new = [n for n in shapes if n not in base_shapes]
    assert new == ["value_embed.weight"] + [f"h.{i}.attn.ve_gain" for i in range(BASE.n_layer)]
    assert shapes["value_embed.weight"] == (7, 8) and shapes["h.1.attn.ve_gain"] == (1,)
    before, after = init_weights(BASE, 3), init_weights(on, 3)
    for name, value in before.items():  # the new table draws nothing: every other weight is bit-identical
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert not after["value_embed.weight"].any()
    assert all(after[f"h.{i}.attn.ve_gain"][0] == 1.0 for i in range(BASE.n_layer))
    # the table trains like wte (AdamW, decayed), the gains like the other gains (AdamW, no decay)
    assert is_decayed("value_embed.weight", (7, 8)) and not is_hidden_matrix("value_embed.weight", (7, 8))
    assert not is_decayed("h.0.attn.ve_gain", (1,)) and not is_hidden_matrix("h.0.attn.ve_gain", (1,))
    muon = NumpyBackend(on, after, OptimConfig(optimizer="muon"))
    assert "value_embed.weight" not in muon.muon_names and len(muon.muon_names) == 4 * BASE.n_layer
    offset, size = muon._offsets["value_embed.weight"], 7 * 8
    assert muon.n_muon <= offset and offset + size <= muon.n_decayed  # in the flat buffer's AdamW-decayed slice
    assert muon._offsets["h.0.attn.ve_gain"] >= muon.n_decayed


def test_bigram_and_smear_gate_add_only_their_own_zero_parameters():
    on = ModelConfig(**{**BASE.to_dict(), "n_embd": 16, "bigram_embedding": True, "smear_gate": True})
    off = ModelConfig(**{**on.to_dict(), "bigram_embedding": False, "smear_gate": False})
    shapes, base_shapes = canonical_shapes(on), canonical_shapes(off)
    assert [n for n in shapes if n not in base_shapes] == ["bigram.weight", "smear_gate.weight", "smear_lambda"]
    assert shapes["bigram.weight"] == (49, 16) and shapes["smear_gate.weight"] == (1, 12)
    before, after = init_weights(off, 3), init_weights(on, 3)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert not any(after[n].any() for n in ("bigram.weight", "smear_gate.weight", "smear_lambda"))
    # the table decays like wte; the gate and its lambda are gates: no decay; none of them is Muon's
    assert is_decayed("bigram.weight", (49, 16)) and not is_decayed("smear_gate.weight", (1, 12))
    assert not any(is_hidden_matrix(n, shapes[n]) for n in ("bigram.weight", "smear_gate.weight", "smear_lambda"))
    ids = np.random.default_rng(0).integers(0, 7, (2, 5))
    zero = NumpyBackend(on, after, OptimConfig(), dtype="float64")
    np.testing.assert_allclose(zero.logits(ids), NumpyBackend(off, before, OptimConfig(), dtype="float64").logits(ids),
                               rtol=1e-6)  # the zero tables and gate add nothing


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_logit_softcap_must_be_finite_and_not_negative(bad):
    with pytest.raises(ValueError, match="logit_softcap"):
        ModelConfig(vocab_size=5, logit_softcap=bad)


def test_each_option_changes_what_the_model_computes(rng):
    """Both backends could agree on an option they both ignore: here each must change the logits."""
    ids = rng.integers(0, BASE.vocab_size, (2, 4))
    # logits well beyond the caps below
    weights = {n: (w + rng.normal(scale=0.5, size=w.shape)).astype(np.float32)
               for n, w in init_weights(BASE, 0).items()}
    reference = NumpyBackend(BASE, weights, OptimConfig(), dtype="float64").logits(ids)
    assert np.abs(reference).max() > 3.0
    capped = NumpyBackend(ModelConfig(**{**BASE.to_dict(), "logit_softcap": 2.0}), weights, OptimConfig(),
                          dtype="float64")
    np.testing.assert_allclose(capped.logits(ids), 2.0 * np.tanh(reference / 2.0), rtol=1e-6, atol=1e-7)
    ve_config = ModelConfig(**{**BASE.to_dict(), "value_embedding": True})
    ve_weights = {**weights, **{n: v for n, v in init_weights(ve_config, 0).items() if n not in weights}}
    with_ve = NumpyBackend(ve_config, ve_weights, OptimConfig(), dtype="float64")
    np.testing.assert_allclose(with_ve.logits(ids), reference, rtol=1e-6)  # a zero table adds nothing
    with_ve.params["value_embed.weight"][...] = rng.normal(scale=0.5, size=(7, 8))
    moved = with_ve.logits(ids)
    assert np.abs(moved - reference).max() > 1e-2
    with_ve.params["h.0.attn.ve_gain"][...] = 0.0  # one layer's gain off: that layer reads its plain values
    with_ve.params["h.1.attn.ve_gain"][...] = 0.0
    np.testing.assert_allclose(with_ve.logits(ids), reference, rtol=1e-6)
    for option, moved_name in (("bigram_embedding", "bigram.weight"), ("smear_gate", "smear_lambda")):
        config = ModelConfig(**{**BASE.to_dict(), option: True})
        extra = {n: v for n, v in init_weights(config, 0).items() if n not in weights}
        backend = NumpyBackend(config, {**weights, **extra}, OptimConfig(), dtype="float64")
        backend.params[moved_name][...] = rng.normal(scale=0.5, size=backend.params[moved_name].shape)
        changed = backend.logits(ids)
        assert np.abs(changed - reference).max() > 1e-2, option
        # the first position has no previous token: its logits are the plain model's
        np.testing.assert_allclose(changed[:, 0], reference[:, 0], rtol=1e-6, err_msg=option)

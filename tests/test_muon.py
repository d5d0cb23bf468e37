"""Muon: torch.optim.Muon, the torch backend's CPU version (torch_muon.StackedMuon) and the NumPy one
against each other; the Newton-Schulz iteration; exact resume (same backend and across backends) with
the momentum carried in checkpoints.

torch.optim.Muon runs Newton-Schulz in bfloat16; the other two run it in their own dtype. To compare
torch.optim.Muon tightly, its iteration is swapped for the same polynomial in full precision
(``full_precision_muon``), so everything else (momentum, Nesterov, decay, learning-rate adjustment)
is compared exactly.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import tiny_config, train_tiny

from backends.base import ModelConfig, OptimConfig, init_weights
from backends.numpy_backend import NumpyBackend, newton_schulz
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.data import read_corpus
from minigpt_tui.training.trainer import resume_training

torch = pytest.importorskip("torch")
import torch.optim._muon as torch_muon  # noqa: E402

from backends.torch_backend import TorchBackend  # noqa: E402
from backends.torch_muon import StackedMuon  # noqa: E402

CONFIG = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, pos_encoding="rope", qk_norm=True)
MUON = OptimConfig(weight_decay=0.1, grad_clip=0.7, optimizer="muon", muon_lr_scale=5.0)


def ns_full_precision(grad, ns_coefficients, ns_steps, eps):
    """torch's _zeropower_via_newtonschulz without its cast to bfloat16."""
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.T if tall else grad
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


@pytest.fixture
def full_precision_muon(monkeypatch):
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", ns_full_precision)


def batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(0, CONFIG.vocab_size, (3, 8))
    return ids[:, :-1], ids[:, 1:]


def test_newton_schulz_orthogonalises_and_matches_torch():
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(3, 24, 8)) * rng.uniform(0.1, 10, size=(3, 1, 1))  # tall, differently scaled
    ours = newton_schulz(stack)
    for g, o in zip(stack, ours, strict=True):
        singular = np.linalg.svd(o, compute_uv=False)
        assert 0.5 < singular.min() and singular.max() < 1.3  # pushed towards 1, whatever the scale
        u, _, vt = np.linalg.svd(g, full_matrices=False)
        assert np.abs(o - u @ np.diag(singular) @ vt).max() < 0.6  # same singular vectors, roughly
        coefficients = (torch_muon.DEFAULT_A, torch_muon.DEFAULT_B, torch_muon.DEFAULT_C)
        reference = ns_full_precision(torch.from_numpy(g), coefficients, 5, 1e-7).numpy()
        np.testing.assert_allclose(o, reference, rtol=1e-10, atol=1e-12)


def test_stacked_muon_is_torch_optim_muon(full_precision_muon):
    rng = np.random.default_rng(4)
    shapes = [(12, 4), (12, 4), (4, 12), (4, 4)]  # two of a shape share a stack; tall, wide and square
    reference = [torch.nn.Parameter(torch.from_numpy(rng.normal(size=s))) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    torch_optimizer = torch.optim.Muon(reference, lr=0.02, weight_decay=0.1, momentum=0.9)
    stacked = StackedMuon({f"p{i}": p for i, p in enumerate(ours)}, weight_decay=0.1, momentum=0.9)
    stacked.param_groups[0]["lr"] = 0.02
    for _ in range(6):
        grads = [torch.from_numpy(rng.normal(size=s)) for s in shapes]
        for p, q, g in zip(reference, ours, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        torch_optimizer.step()
        stacked.step()
    for p, q in zip(reference, ours, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-12)
    buffers = stacked.momentum_buffers()
    for i, p in enumerate(reference):
        torch.testing.assert_close(buffers[f"p{i}"], torch_optimizer.state[p]["momentum_buffer"])


def test_ten_muon_steps_match_torch():
    weights = init_weights(CONFIG, 0)
    ours, reference = (cls(CONFIG, weights, MUON, dtype="float64", **kw) for cls, kw in
                       ((NumpyBackend, {}), (TorchBackend, {"device": "cpu"})))
    rng = np.random.default_rng(1)
    for step in range(10):
        micro_batches = [batch(rng), batch(rng)]
        lr = 1e-2 * (1 - step / 10)
        a, b = ours.train_step(micro_batches, lr), reference.train_step(micro_batches, lr)
        assert a.loss == pytest.approx(b.loss, rel=1e-10) and a.grad_norm == pytest.approx(b.grad_norm, rel=1e-8)
    assert sorted(reference.muon_names) == sorted(ours.muon_names) and len(ours.muon_names) == 8
    for name, param in reference.model.named_parameters():
        assert np.abs(ours.params[name] - param.detach().numpy()).max() < 1e-9, name
    state, expected = ours.get_optimizer_state(), reference.get_optimizer_state()
    assert state.keys() == expected.keys()
    assert {k for k in state if k.startswith("momentum_buffer.")} == {f"momentum_buffer.{n}" for n in ours.muon_names}
    for key, value in expected.items():
        np.testing.assert_allclose(state[key], value, rtol=1e-5, atol=1e-12, err_msg=key)


def test_muon_moves_matrices_differently_from_adamw():
    """Guards the test above: the optimizer option really changes the update of the block matrices only
    (the embedding follows AdamW either way, so it stays identical)."""
    weights = init_weights(CONFIG, 0)
    rng = np.random.default_rng(1)
    micro_batches = [batch(rng)]
    muon, adamw = (NumpyBackend(CONFIG, weights, o, dtype="float64") for o in (MUON, OptimConfig(grad_clip=0.7)))
    muon.train_step(micro_batches, 1e-2)
    adamw.train_step(micro_batches, 1e-2)
    np.testing.assert_array_equal(muon.params["wte.weight"], adamw.params["wte.weight"])
    assert np.abs(muon.params["h.0.mlp.c_fc.weight"] - adamw.params["h.0.mlp.c_fc.weight"]).max() > 1e-4


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_resume_with_muon_continues_exactly(tmp_path, corpus_path, backend):
    config = tiny_config(backend=backend, optimizer="muon", muon_lr_scale=5.0, pos_encoding="rope", qk_norm=True,
                         activation="relu2", zero_init_proj=True, max_iters=8, eval_interval=4)
    straight, _, _ = train_tiny(tmp_path / "straight", corpus_path, config)
    train_tiny(tmp_path / "resumed", corpus_path, config.replace(max_iters=4, lr_decay_iters=8))
    resumed = resume_training(tmp_path / "resumed", read_corpus(corpus_path), {"max_iters": 8})
    assert resumed.run().reason == "finished"
    expected, actual = straight.backend.get_weights(), resumed.backend.get_weights()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    state = straight.backend.get_optimizer_state()
    np.testing.assert_array_equal(resumed.backend.get_optimizer_state()["momentum_buffer.h.0.attn.c_attn.weight"],
                                  state["momentum_buffer.h.0.attn.c_attn.weight"])


@pytest.mark.parametrize("first, second", [("torch", "numpy"), ("numpy", "torch")])
def test_resuming_muon_with_the_other_backend_continues_the_same_run(tmp_path, corpus_path, first, second):
    config = tiny_config(backend=first, dtype="float64", optimizer="muon", muon_lr_scale=5.0, pos_encoding="rope",
                         max_iters=4, eval_interval=4)
    a, b = tmp_path / "same", tmp_path / "other"
    train_tiny(a, corpus_path, config)
    shutil.copytree(a, b)
    corpus = read_corpus(corpus_path)
    same = resume_training(a, corpus, {"max_iters": 8})
    other = resume_training(b, corpus, {"max_iters": 8, "backend": second})
    assert same.run().reason == other.run().reason == "finished"
    ours, reference = other.backend.get_weights(), same.backend.get_weights()
    for name, value in reference.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_resume_refuses_to_switch_the_optimizer(tmp_path, corpus_path):
    train_tiny(tmp_path / "run", corpus_path, tiny_config(max_iters=2, eval_interval=2))
    with pytest.raises(MiniGPTError, match="cannot change optimizer"):
        resume_training(tmp_path / "run", read_corpus(corpus_path), {"optimizer": "muon", "max_iters": 4})


def test_a_state_without_muon_momentum_is_refused():
    adamw_state = NumpyBackend(CONFIG, init_weights(CONFIG, 0), OptimConfig())
    adamw_state.train_step([batch(np.random.default_rng(0))], 1e-3)
    for backend in (NumpyBackend(CONFIG, init_weights(CONFIG, 0), MUON),
                    TorchBackend(CONFIG, init_weights(CONFIG, 0), MUON, device="cpu")):
        with pytest.raises(ValueError, match="momentum_buffer"):
            backend.set_optimizer_state(adamw_state.get_optimizer_state())

"""Muon: torch.optim.Muon, the torch backend's CPU version (torch_muon.StackedMuon) and the NumPy one
against each other; the Newton-Schulz iteration; exact resume (same backend and across backends) with
the momentum carried in checkpoints.

torch.optim.Muon runs Newton-Schulz in bfloat16; the other two run it in their own dtype. To compare
torch.optim.Muon tightly, its iteration is swapped for the same polynomial in full precision
(``full_precision_muon``), so everything else (momentum, Nesterov, decay, learning-rate adjustment)
is compared exactly.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from conftest import tiny_config, train_tiny

from backends.base import (
    JORDAN_PLAN,
    MUON_NS_COEFFICIENTS,
    POLAR_EXPRESS_COEFFICIENTS,
    ModelConfig,
    OptimConfig,
    init_weights,
    muon_momentum,
    newton_schulz_plan,
)
from backends.numpy_backend import NumpyBackend, newton_schulz, round_to_bfloat16
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.data import read_corpus
from minigpt_tui.training.trainer import resume_training

torch = pytest.importorskip("torch")
import torch.optim._muon as torch_muon  # noqa: E402

from backends.torch_backend import TorchBackend  # noqa: E402
from backends.torch_muon import StackedMuon  # noqa: E402
from backends.torch_muon import newton_schulz as torch_newton_schulz  # noqa: E402

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


# the new Muon options at values that change every step: Polar Express truncated, and a momentum still warming up
OPTIONS = {"default": {}, "polar_express_3_warmup": dict(muon_coefficients="polar_express", muon_ns_steps=3,
                                                         muon_momentum_warmup=6, muon_momentum_start=0.6),
           "jordan_2_warmup": dict(muon_ns_steps=2, muon_momentum_warmup=20)}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_ten_muon_steps_match_torch(options):
    weights = init_weights(CONFIG, 0)
    optim = dataclasses.replace(MUON, **options)
    ours, reference = (cls(CONFIG, weights, optim, dtype="float64", **kw) for cls, kw in
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
    # equal up to the rounding of the clipping norm, summed in another order over another flat layout
    np.testing.assert_allclose(muon.params["wte.weight"], adamw.params["wte.weight"], rtol=1e-12, atol=1e-15)
    assert np.abs(muon.params["h.0.mlp.c_fc.weight"] - adamw.params["h.0.mlp.c_fc.weight"]).max() > 1e-4


# a plain Muon run, and one resumed at step 4 of a 6-step momentum warmup: the momentum picks up at step 4
RESUMED_MUON_OPTIONS = {
    "jordan": dict(pos_encoding="rope", qk_norm=True, activation="relu2", zero_init_proj=True),
    "momentum-warmup": dict(muon_coefficients="polar_express", muon_ns_steps=4, muon_momentum_warmup=6,
                            muon_momentum_start=0.5),
}


@pytest.mark.parametrize("options", RESUMED_MUON_OPTIONS)
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_resume_with_muon_continues_exactly(tmp_path, corpus_path, backend, options):
    config = tiny_config(backend=backend, optimizer="muon", muon_lr_scale=5.0, max_iters=8, eval_interval=4,
                         **RESUMED_MUON_OPTIONS[options])
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


# ---- the iteration's options: coefficients, steps, momentum warmup, bfloat16


def polar_express_reference(g: torch.Tensor, steps: int) -> torch.Tensor:
    """modded-nanogpt's polar_express, without its cast to bfloat16."""
    x = g.mT if g.size(-2) > g.size(-1) else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * (1 + 2e-2) + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFICIENTS[:steps]:
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if g.size(-2) > g.size(-1) else x


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_polar_express_is_modded_nanogpts_in_both_backends(steps):
    rng = np.random.default_rng(steps)
    stack = rng.normal(size=(3, 24, 8)) * rng.uniform(0.1, 10, size=(3, 1, 1))
    plan = newton_schulz_plan(OptimConfig(muon_coefficients="polar_express", muon_ns_steps=steps))
    assert plan.coefficients == POLAR_EXPRESS_COEFFICIENTS[:steps] and plan.margin == 2e-2 and plan.eps == 1e-6
    reference = polar_express_reference(torch.from_numpy(stack), steps).numpy()
    np.testing.assert_allclose(newton_schulz(stack, plan), reference, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(torch_newton_schulz(torch.from_numpy(stack), plan).numpy(), reference,
                               rtol=1e-10, atol=1e-12)


def test_polar_express_lifts_small_singular_values_more_than_jordan_and_converges_by_step():
    """What the table is for: after 5 steps Jordan's singular values still spread over ~0.7..1.2 (by design),
    Polar Express lifts the smallest ones closer to 1; each step it is cut short of leaves them wider."""
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(4, 64, 16))
    spread = {}
    for name, steps in (("jordan", 5), ("polar_express", 5), ("polar_express", 4), ("polar_express", 3)):
        out = newton_schulz(stack, newton_schulz_plan(OptimConfig(muon_coefficients=name, muon_ns_steps=steps)))
        singular = np.linalg.svd(out, compute_uv=False)
        spread[name, steps] = (singular.min(), singular.max())
    assert spread["polar_express", 5][0] > spread["jordan", 5][0] + 0.1  # measured 0.86 against 0.68
    assert spread["polar_express", 5][1] < 1.2
    # truncated, it is a coarser answer (the early steps overshoot on purpose): 3 steps 0.16..1.87, 4 0.43..1.58
    widths = [spread["polar_express", k][1] - spread["polar_express", k][0] for k in (3, 4, 5)]
    assert widths[0] > widths[1] > widths[2]
    assert JORDAN_PLAN.coefficients == (MUON_NS_COEFFICIENTS,) * 5 and JORDAN_PLAN.margin is None


@pytest.mark.parametrize("changes, fragment", [
    (dict(muon_ns_steps=0), "muon_ns_steps must be in \\[1, 99\\]"),
    (dict(muon_ns_steps=100), "muon_ns_steps must be in \\[1, 99\\]"),
    (dict(muon_ns_steps=6, muon_coefficients="polar_express"), "muon_ns_steps must be in \\[1, 5\\]"),
    (dict(muon_coefficients="newton"), "muon_coefficients must be one of"),
    (dict(muon_momentum_warmup=-1), "muon_momentum_warmup must be >= 0"),
    (dict(muon_momentum_start=1.0), "muon_momentum_start must be in"),
])
def test_bad_muon_options_are_refused_by_name(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        OptimConfig(**changes)


def test_momentum_warms_up_linearly_then_holds():
    optim = OptimConfig(muon_momentum=0.95, muon_momentum_warmup=10, muon_momentum_start=0.85)
    assert [muon_momentum(optim, t) for t in (0, 5, 10, 11, 10**6)] == pytest.approx([0.85, 0.9, 0.95, 0.95, 0.95])
    assert muon_momentum(OptimConfig(), 0) == muon_momentum(OptimConfig(), 10**6) == 0.95  # off: always muon_momentum


def test_stacked_muon_is_torch_optim_muon_with_fewer_steps_and_a_momentum_schedule(full_precision_muon):
    """The GPU path's torch.optim.Muon, handed ns_steps and a momentum per step through its param_groups (as
    the backend does), is the CPU's StackedMuon with the same plan and schedule."""
    rng = np.random.default_rng(5)
    optim = OptimConfig(muon_ns_steps=3, muon_momentum_warmup=4, muon_momentum_start=0.5)
    shapes = [(12, 4), (4, 12)]
    reference = [torch.nn.Parameter(torch.from_numpy(rng.normal(size=s))) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    torch_optimizer = torch.optim.Muon(reference, lr=0.02, weight_decay=0.1, ns_steps=3)
    stacked = StackedMuon({f"p{i}": p for i, p in enumerate(ours)}, 0.1, 0.95, newton_schulz_plan(optim))
    stacked.param_groups[0]["lr"] = 0.02
    for step in range(6):
        for optimizer in (torch_optimizer, stacked):
            optimizer.param_groups[0]["momentum"] = muon_momentum(optim, step)
        for p, q in zip(reference, ours, strict=True):
            p.grad = torch.from_numpy(rng.normal(size=p.shape))
            q.grad = p.grad.clone()
        torch_optimizer.step()
        stacked.step()
    for p, q in zip(reference, ours, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-12)


def test_round_to_bfloat16_is_torchs():
    values = np.random.default_rng(0).normal(size=1000).astype(np.float32) * 10.0 ** np.arange(-5, 5).repeat(100)
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8)], np.float32)  # halfway: to even
    for x in (values, ties):
        np.testing.assert_array_equal(round_to_bfloat16(x), torch.from_numpy(x).bfloat16().float().numpy())


@pytest.mark.parametrize("coefficients", ["jordan", "polar_express"])
def test_bf16_newton_schulz_follows_torch_and_differs_from_float32(coefficients):
    """On matrices this small torch's bfloat16 products round like the emulation, nearly bit for bit (a
    different order of accumulation flips a rare rounding; more often in larger ones), while float32 is ~1% away."""
    rng = np.random.default_rng(2)
    stack = (rng.normal(size=(3, 24, 8)) * rng.uniform(0.1, 10, size=(3, 1, 1))).astype(np.float32)
    plan = newton_schulz_plan(OptimConfig(muon_coefficients=coefficients))
    ours = newton_schulz(stack, plan, bf16=True)
    reference = torch_newton_schulz(torch.from_numpy(stack), plan, bf16=True).numpy()
    assert np.mean(ours == reference) > 0.99 and np.abs(ours - reference).max() < 1e-3  # measured: 1 of 576 differs
    assert np.mean(newton_schulz(stack, plan) == reference) < 0.5 and np.abs(newton_schulz(stack, plan)
                                                                            - reference).max() > 1e-3


def test_a_bf16_muon_step_follows_torch():
    """One whole step (momentum, Nesterov, decay, the bfloat16 iteration, the rate adjustment) from the same
    weights: most matrices get the same bfloat16 update, and none is more than a tenth as far from torch's bfloat16
    step as torch's float32 step is (measured: at most 0.045). Only one step: a rounding flipped by another
    order of float32 accumulation, in a direction of small singular value, is amplified several hundred
    times by the iteration (that is its job), so two backends' bfloat16 runs part at the bfloat16 noise
    level within a few steps (in float32 they stay ~1e-5 apart; test_ten_muon_steps_match_torch)."""
    optim = dataclasses.replace(MUON, muon_bf16=True, muon_coefficients="polar_express")
    weights = init_weights(CONFIG, 0)
    ours, reference, full = (cls(CONFIG, weights, o, dtype="float64", **kw) for cls, o, kw in
                             ((NumpyBackend, optim, {}), (TorchBackend, optim, {"device": "cpu"}),
                              (TorchBackend, dataclasses.replace(optim, muon_bf16=False), {"device": "cpu"})))
    micro_batches = [batch(np.random.default_rng(1))]
    for backend in (ours, reference, full):
        backend.train_step(micro_batches, 1e-2)
    exact = 0
    for name in ours.muon_names:
        expected = reference.params[name].detach().numpy()
        distance = np.abs(ours.params[name] - expected).mean()
        assert distance < 0.1 * np.abs(full.params[name].detach().numpy() - expected).mean(), name
        exact += distance < 1e-12  # the same bfloat16 update, up to float64 rounding of the step
    assert exact >= len(ours.muon_names) // 2


def test_momentum_warmup_survives_a_state_round_trip():
    """The warmup reads the optimizer's step count, which get/set_optimizer_state carry (in either backend)."""
    optim = dataclasses.replace(MUON, muon_momentum_warmup=6, muon_momentum_start=0.5)
    rng = np.random.default_rng(3)
    micro_batches = [[batch(rng)] for _ in range(6)]
    weights = init_weights(CONFIG, 0)
    straight = NumpyBackend(CONFIG, weights, optim, dtype="float64")
    first = TorchBackend(CONFIG, weights, optim, device="cpu", dtype="float64")
    for micro in micro_batches:
        straight.train_step(micro, 1e-2)
    for micro in micro_batches[:3]:
        first.train_step(micro, 1e-2)
    second = NumpyBackend(CONFIG, first.get_weights(), optim, dtype="float64")
    second.set_optimizer_state(first.get_optimizer_state())
    for micro in micro_batches[3:]:
        second.train_step(micro, 1e-2)
    for name, value in straight.params.items():
        np.testing.assert_allclose(second.params[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    warm = NumpyBackend(CONFIG, weights, dataclasses.replace(optim, muon_momentum_warmup=0), dtype="float64")
    for micro in micro_batches:
        warm.train_step(micro, 1e-2)
    assert np.abs(warm.params["h.0.mlp.c_fc.weight"] - straight.params["h.0.mlp.c_fc.weight"]).max() > 1e-4

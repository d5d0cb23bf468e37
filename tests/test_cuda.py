"""The GPU path: bf16 autocast, fused AdamW, torch.compile, the bench's GPU peak, NCCL under torchrun.

Every test here but the CPU case of the optimizer round trip needs CUDA and is skipped without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.base import ModelConfig, OptimConfig, canonical_shapes, init_weights

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CONFIG = ModelConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=64)


def batches(n: int, seed: int = 0, batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, CONFIG.vocab_size, (batch_size, CONFIG.block_size + 1))
        out.append((x[:, :-1], x[:, 1:]))
    return out


def backend(device: str, weights: dict | None = None, **options):
    from backends.torch_backend import TorchBackend

    return TorchBackend(CONFIG, weights or init_weights(CONFIG, 0), OptimConfig(), device=device, **options)


@cuda_only
def test_cuda_training_follows_float32_cpu_training_within_bf16_precision() -> None:
    gpu, cpu = backend("cuda"), backend("cpu")
    assert gpu.device.startswith("cuda")
    if torch.cuda.is_bf16_supported(False):
        assert gpu._autocast.fast_dtype == torch.bfloat16
    assert torch.backends.cuda.matmul.allow_tf32
    x, y = batches(1)[0]
    assert gpu.eval_loss(x, y) == pytest.approx(cpu.eval_loss(x, y), abs=2e-2)
    for micro in (batches(2, seed) for seed in range(3)):
        gpu_loss, cpu_loss = gpu.train_step(micro, 1e-3).loss, cpu.train_step(micro, 1e-3).loss
        assert gpu_loss == pytest.approx(cpu_loss, abs=3e-2)
    for name, value in cpu.get_weights().items():
        np.testing.assert_allclose(gpu.get_weights()[name], value, atol=5e-3, err_msg=name)


@cuda_only
@pytest.mark.parametrize("options, kind", [
    (dict(muon_ns_steps=3, muon_momentum_warmup=4, muon_momentum_start=0.5), "Muon"),
    (dict(muon_coefficients="polar_express", muon_ns_steps=4, muon_momentum_warmup=4), "StackedMuon"),
])
def test_cuda_muon_options_follow_the_cpu_within_bf16_precision(options, kind) -> None:
    """torch.optim.Muon for Jordan's polynomial (ns_steps and the momentum set through its param_groups),
    StackedMuon in bfloat16 for Polar Express's table; against the CPU's bfloat16 StackedMuon."""
    from backends.torch_backend import TorchBackend

    optim = OptimConfig(optimizer="muon", muon_lr_scale=5.0, muon_bf16=True, **options)
    weights = init_weights(CONFIG, 0)
    gpu, cpu = (TorchBackend(CONFIG, weights, optim, device=device) for device in ("cuda", "cpu"))
    assert type(gpu.muon).__name__ == kind
    for micro in (batches(2, seed) for seed in range(5)):
        assert gpu.train_step(micro, 1e-3).loss == pytest.approx(cpu.train_step(micro, 1e-3).loss, abs=3e-2)
    assert gpu.muon.param_groups[0]["momentum"] == cpu.muon.param_groups[0]["momentum"] == pytest.approx(0.95)
    ours, reference = gpu.get_weights(), cpu.get_weights()
    for name in cpu.muon_names:  # on average the GPU's matrices moved as the CPU's did (CPU vs NumPy: ~2% apart)
        moved = np.abs(reference[name] - weights[name]).mean()
        assert np.abs(ours[name] - reference[name]).mean() < 0.3 * moved, name


@cuda_only
def test_float64_on_cuda_is_not_autocast() -> None:
    gpu = backend("cuda", dtype="float64")
    x, y = batches(1)[0]
    assert gpu.eval_loss(x, y) == pytest.approx(backend("cpu", dtype="float64").eval_loss(x, y), abs=1e-9)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda_only)])
def test_optimizer_state_round_trips_through_a_checkpoint(device: str) -> None:
    original = backend(device)
    assert bool(original.optimizer.defaults["fused"]) == (device == "cuda")
    for micro in (batches(1, seed) for seed in range(2)):
        original.train_step(micro, 1e-3)
    state = original.get_optimizer_state()
    assert float(state["step"]) == 2.0
    restored = backend(device, original.get_weights())
    restored.set_optimizer_state(state)
    param = next(iter(restored.params.values()))
    assert restored.optimizer.state[param]["step"].device.type == device  # where (fused) AdamW wants it
    micro = batches(1, seed=9)
    original.train_step(micro, 1e-3)
    restored.train_step(micro, 1e-3)
    for name, value in original.get_weights().items():
        # loose enough for atomics in the embedding backward; a wrong step count would miss by ~lr
        np.testing.assert_allclose(restored.get_weights()[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    # the same state resumes on the CPU (a GPU checkpoint is portable); the moments were copied, so
    # the two backends above could not have been updating shared arrays
    cpu = backend("cpu", original.get_weights())
    cpu.set_optimizer_state(original.get_optimizer_state())
    assert np.isfinite(cpu.train_step(micro, 1e-3).loss)


@cuda_only
def test_compiled_training_checkpoints_the_plain_module_weights() -> None:
    compiled, plain = backend("cuda", compile=True), backend("cuda")
    micro = batches(2)
    assert compiled.train_step(micro, 1e-3).loss == pytest.approx(plain.train_step(micro, 1e-3).loss, abs=1e-2)
    weights = compiled.get_weights()
    assert sorted(weights) == sorted(canonical_shapes(CONFIG))  # no ``_orig_mod.`` prefixes
    for name, param in compiled.model.named_parameters():
        np.testing.assert_array_equal(weights[name], param.detach().float().cpu().numpy())
    assert not np.array_equal(weights["wte.weight"], init_weights(CONFIG, 0)["wte.weight"])


@cuda_only
def test_bench_mfu_uses_the_gpu_peak() -> None:
    from minigpt_tui.experiments.bench import bench_backend
    from minigpt_tui.training.config import preset

    result = bench_backend("torch", preset("baby"), train_iters=3, gen_tokens=20, nocache_tokens=5, device="cuda")
    assert result.device.startswith("cuda")
    # against the CPU's peak a GPU's training FLOP/s would give an MFU well above 1
    assert 0 < result.mfu < 1


@cuda_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_nccl_ranks_train_one_run(tmp_path: Path, corpus_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "minigpt_tui",
               "train", "--headless", "--preset=tiny", f"--data={corpus_path}", f"--out={tmp_path / 'run'}",
               "--device=cuda", "--max-iters=4", "--eval-interval=2", "--log-interval=1"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on cuda:0 x 2 ranks" in result.stderr
    assert [p.name for p in tmp_path.rglob("*.jsonl")] == ["metrics.jsonl"]

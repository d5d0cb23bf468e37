"""The CPU AdamW (backends/torch_adamw.py) against torch.optim.AdamW: the same parameters after every step,
with weight decay on one group and off on another, and torch._dynamo never imported by a CPU training step."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from backends.torch_adamw import CpuAdamW  # noqa: E402


def test_twenty_steps_equal_torch_optim_adamw_exactly():
    generator = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]

    def groups(params):
        return [{"params": params[:1] + params[2:], "weight_decay": 0.1}, {"params": params[1:2], "weight_decay": 0.0}]

    mine = CpuAdamW(groups(ours), betas=(0.9, 0.99), eps=1e-8)
    reference = torch.optim.AdamW(groups(theirs), lr=0.0, betas=(0.9, 0.99), eps=1e-8)
    for step in range(20):
        lr = 1e-2 * (step + 1) / 20  # a schedule: the rate changes every step
        grads = [torch.randn(s, generator=generator) for s in shapes]
        for optimizer, params in ((mine, ours), (reference, theirs)):
            for group in optimizer.param_groups:
                group["lr"] = lr
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            assert a.grad is None
    for a, b in zip(ours, theirs, strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(mine.state[a][key], reference.state[b][key], rtol=0, atol=0)


def test_a_cpu_training_step_does_not_import_dynamo():
    code = (
        "import sys, numpy as np\n"
        "from backends.base import ModelConfig, OptimConfig, init_weights\n"
        "from backends.torch_backend import TorchBackend\n"
        "c = ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)\n"
        "b = TorchBackend(c, init_weights(c, 0), OptimConfig(), device='cpu')\n"
        "x = np.zeros((2, 8), np.int64)\n"
        "b.train_step([(x, x)], 1e-3)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

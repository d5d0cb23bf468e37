"""Muon for the CPU: torch.optim.Muon's update with the Newton-Schulz iteration in float32, one batched
matmul per stack of same-shape matrices.

torch.optim.Muon orthogonalises each matrix on its own, in bfloat16. That suits a GPU; on this CPU
bfloat16 matmuls are slower than float32 ones and per-matrix calls on 128-wide matrices are dominated
by overhead (README: throughput, interleaved A/B). The arithmetic is otherwise the same, step for step
(tests/test_muon.py checks both against the NumPy backend).
"""

from __future__ import annotations

import torch

from backends.base import MUON_EPS, MUON_NS_COEFFICIENTS, MUON_NS_STEPS, muon_lr


def newton_schulz(update: torch.Tensor, steps: int = MUON_NS_STEPS, eps: float = MUON_EPS) -> torch.Tensor:
    """(k, rows, cols) -> k approximately orthogonal matrices: X <- a X + (b A + c A^2) X, A = X X^T,
    from X = update / ||update||_F, on the wide orientation of each matrix (same as torch.optim.Muon)."""
    a, b, c = MUON_NS_COEFFICIENTS
    tall = update.shape[1] > update.shape[2]
    x = update.mT if tall else update
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class StackedMuon:
    """Muon over named 2-D parameters; the momentum of each same-shape group is one (k, rows, cols) tensor."""

    def __init__(self, params: dict[str, torch.nn.Parameter], weight_decay: float, momentum: float) -> None:
        self.weight_decay, self.momentum = weight_decay, momentum
        self.stacks: list[tuple[list[str], list[torch.nn.Parameter], torch.Tensor]] = []
        by_shape: dict[tuple[int, ...], list[str]] = {}
        for name, param in params.items():
            by_shape.setdefault(tuple(param.shape), []).append(name)
        for shape, names in by_shape.items():
            group = [params[n] for n in names]
            self.stacks.append((names, group, torch.zeros((len(names), *shape), dtype=group[0].dtype,
                                                          device=group[0].device)))
        self.param_groups = [{"lr": 0.0}]  # as in a torch optimizer: the caller sets the step's lr here

    def momentum_buffers(self) -> dict[str, torch.Tensor]:
        """Name -> a view of its momentum, live (writing it sets the state)."""
        return {name: buffer[i] for names, _, buffer in self.stacks for i, name in enumerate(names)}

    @torch.no_grad()
    def step(self) -> None:
        lr, mu = self.param_groups[0]["lr"], self.momentum
        for _, group, buffer in self.stacks:
            grads = torch.stack([p.grad for p in group])
            buffer.lerp_(grads, 1 - mu)
            update = newton_schulz(grads.lerp_(buffer, mu))  # Nesterov: the gradient pulled towards the momentum
            adjusted = muon_lr(lr, tuple(group[0].shape))
            if self.weight_decay:
                torch._foreach_mul_(group, 1 - lr * self.weight_decay)
            torch._foreach_add_(group, list(update.unbind(0)), alpha=-adjusted)

    def zero_grad(self) -> None:
        for _, group, _ in self.stacks:
            for p in group:
                p.grad = None

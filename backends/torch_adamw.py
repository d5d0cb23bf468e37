"""AdamW for the CPU: torch.optim.AdamW's single-tensor update, op for op, without torch.optim.

Why not torch.optim.AdamW itself: constructing any torch.optim optimizer imports torch._dynamo, about a
second of start-up on this 2-core CPU, which is 5-8% of a speedrun's whole wall time. The arithmetic
below is the non-capturable branch of torch.optim.adam._single_tensor_adam with decoupled weight decay,
in the same order (tests/test_torch_adamw.py checks it against torch.optim.AdamW step for step). The
state has torch's layout (``state[param]`` holds step, exp_avg, exp_avg_sq), so checkpoints written
with either optimizer resume with the other. GPUs keep torch's fused AdamW.
"""

from __future__ import annotations

import torch


class CpuAdamW:
    """AdamW over parameter groups ``[{"params": [...], "weight_decay": wd}, ...]``; the caller sets each
    group's ``"lr"`` before a step, as with a torch optimizer."""

    def __init__(self, groups: list[dict], betas: tuple[float, float], eps: float) -> None:
        self.param_groups = [{**group, "params": list(group["params"]), "lr": 0.0} for group in groups]
        self.betas, self.eps = betas, eps
        self.defaults = {"fused": None}  # read by the backend: this optimizer keeps its step on the CPU
        self.state: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state.get(param)
                if state is None:
                    state = self.state[param] = {
                        "step": torch.tensor(0.0, dtype=torch.float32),
                        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
                    }
                state["step"] += 1
                step = state["step"].item()
                if weight_decay != 0:
                    param.mul_(1 - lr * weight_decay)
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1**step)
                denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(self.eps)
                param.addcdiv_(state["exp_avg"], denom, value=-step_size)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                param.grad = None

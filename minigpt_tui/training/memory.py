"""Will a config fit? An estimate of the memory a training run needs, checked before anything is allocated.

The estimate counts what dominates: the parameters, their gradients and AdamW's two moments (four
copies of every weight), the activations one micro-batch keeps for the backward pass, and the token
ids of a step's micro-batches. Per layer
that is about 16 values per token and channel (inputs of the LayerNorms, the attention and the 4x
MLP, and their outputs) plus the attention scores and their softmax (2 x heads x T per token), and
once per token the logits and their gradient. It errs on the generous side of what a backend
allocates: a refusal means the run could not have fitted, not that it might not.
"""

from __future__ import annotations

import os

from backends.base import count_parameters
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.config import TrainConfig

BYTES_PER_VALUE = {"float32": 4, "float64": 8}


def training_bytes(config: TrainConfig) -> int:
    m = config.model
    values = 4 * count_parameters(m)  # weights, gradients, AdamW exp_avg and exp_avg_sq
    tokens = config.batch_size * m.block_size
    values += tokens * (m.n_layer * (16 * m.n_embd + 2 * m.n_head * m.block_size) + 2 * m.vocab_size)
    # a step's micro-batches of token ids (inputs and targets, int64) are drawn before it runs
    token_ids = 2 * 8 * tokens * config.grad_accum_steps
    return values * BYTES_PER_VALUE[config.dtype] + token_ids


def available_bytes() -> int | None:
    """Memory the system can give a new process now (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_fits_in_memory(config: TrainConfig, available: int | None = None) -> None:
    """MiniGPTError, one line, when the estimate exceeds the memory available."""
    available = available_bytes() if available is None else available
    needed = training_bytes(config)
    if available is not None and needed > available:
        m = config.model
        raise MiniGPTError(
            f"this config needs about {needed / 2**30:,.1f} GiB ({count_parameters(m) / 1e6:,.1f}M parameters "
            f"with gradients and AdamW moments, plus the activations of a batch of {config.batch_size} x "
            f"{m.block_size} tokens) but {available / 2**30:,.1f} GiB is available; use a smaller "
            "--n-embd, --n-layer, --batch-size or --block-size"
        )

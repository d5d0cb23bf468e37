"""Exact evaluation over a whole split: every target token counted once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.base import Backend
from minigpt_tui.data import sequential_windows
from minigpt_tui.metrics import bits_per_char, perplexity


@dataclass(frozen=True)
class SplitScore:
    loss: float  # mean NLL per token, nats
    perplexity: float
    bits_per_char: float
    tokens: int


def evaluate_tokens(backend: Backend, tokens: np.ndarray, tokens_per_char: float, batch_size: int = 32) -> SplitScore:
    """Mean loss over non-overlapping context windows covering ``tokens``, weighted by window length."""
    total, count = 0.0, 0
    for inputs, targets in sequential_windows(tokens, backend.config.block_size, batch_size):
        total += backend.eval_loss(inputs, targets) * targets.size
        count += targets.size
    loss = total / count
    return SplitScore(loss, perplexity(loss), bits_per_char(loss, tokens_per_char), count)

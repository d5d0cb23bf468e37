"""Quantities reported about a model: perplexity, bits per character, FLOPs and MFU."""

from __future__ import annotations

import math

from backends.base import ModelConfig


def perplexity(loss: float) -> float:
    """exp(mean NLL per token); infinite rather than an overflow error for a diverged loss."""
    return math.exp(loss) if loss < 700 else math.inf


def bits_per_char(loss: float, tokens_per_char: float = 1.0) -> float:
    """Convert a per-token loss in nats to bits per character: the tokenizer-independent measure.

    A text of N characters split into M tokens costs M * loss nats in total, so per character it
    costs (M / N) * loss nats, and a nat is 1 / ln 2 bits.
    """
    return loss * tokens_per_char / math.log(2)


def flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token: 6 per weight (forward 2, backward 4) plus attention scores.

    nanoGPT / PaLM accounting: 6N + 12 * n_layer * n_embd * block_size, with N the non-embedding
    parameters plus the output projection.
    """
    n_params = 12 * config.n_layer * config.n_embd**2 + config.vocab_size * config.n_embd
    return 6 * n_params + 12 * config.n_layer * config.n_embd * config.block_size

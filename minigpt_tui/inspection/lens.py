"""The logit lens: what the model would predict if it stopped after the embedding or after block l.

The final LayerNorm and the output head are applied to the residual stream at each depth (nostalgebraist's
logit lens). Depth 0 is the embedding alone (a bigram guess at best), depth n_layer is the model's own
output: its lens is exactly the next-token distribution. Backend-agnostic: the stream comes from
``Backend.trace``, the LayerNorm and the head are applied here in float64 from the canonical weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.base import Backend, HeadAblation
from minigpt_tui.inspection.inspector import Inspection, NextTokens, next_tokens
from minigpt_tui.training.sampling import SamplingParams
from minigpt_tui.training.tokenizer import Tokenizer

LN_EPS = 1e-5  # the backends' LayerNorm epsilon
LENS_TOP_K = 5


def depth_name(depth: int) -> str:
    return "embedding" if depth == 0 else f"block {depth - 1}"


@dataclass(frozen=True)
class Unembedding:
    """The final LayerNorm and the output head, as float64 arrays, and the model's logit soft-cap: part of
    its head, so that the lens of the last depth stays the model's own prediction."""

    gain: np.ndarray  # (C,)
    bias: np.ndarray | None  # (C,)
    head: np.ndarray  # (V, C)
    softcap: float = 0.0  # 0: off; else logits <- cap * tanh(logits / cap)

    @classmethod
    def of(cls, backend: Backend) -> Unembedding:
        w = backend.get_weights()
        head = w["wte.weight"] if backend.config.tie_weights else w["lm_head.weight"]
        bias = w.get("ln_f.bias")
        return cls(w["ln_f.weight"].astype(np.float64), None if bias is None else bias.astype(np.float64),
                   head.astype(np.float64), backend.config.logit_softcap)

    def logits(self, residual: np.ndarray) -> np.ndarray:
        """(..., C) stream -> (..., V) logits."""
        x = np.asarray(residual, np.float64)
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + LN_EPS) * self.gain
        if self.bias is not None:
            x = x + self.bias
        logits = x @ self.head.T
        return self.softcap * np.tanh(logits / self.softcap) if self.softcap else logits


@dataclass(frozen=True)
class LogitLens:
    """Each depth's next-token distribution at one position of a text."""

    position: int
    depths: list[NextTokens]  # n_layer + 1: after the embedding, then after each block

    def to_dict(self) -> list[dict]:
        return [{"depth": d, "after": depth_name(d), **view.to_dict()} for d, view in enumerate(self.depths)]


def logit_lens(unembedding: Unembedding, inspection: Inspection, position: int, tokenizer: Tokenizer,
               k: int = LENS_TOP_K) -> LogitLens:
    """The lens at ``position`` (negative counts from the end) of a text inspected with the weights
    ``unembedding`` was taken from (``Unembedding.of(backend)``)."""
    position = inspection.check_position(position)
    actual = inspection.token_ids[position + 1] if position + 1 < inspection.length else None
    logits = unembedding.logits(inspection.residual[:, position])
    depths = [next_tokens(row, SamplingParams(1.0), tokenizer, k, position=position, actual=actual) for row in logits]
    return LogitLens(position, depths)


@dataclass(frozen=True)
class LayerLosses:
    """Mean next-token loss (nats) of each depth's lens over validation windows."""

    loss: np.ndarray  # (n_layer + 1,)
    windows: int
    window_tokens: int

    def to_dict(self) -> dict:
        return {"loss": self.loss.tolist(), "after": [depth_name(d) for d in range(len(self.loss))],
                "windows": self.windows, "window_tokens": self.window_tokens}


def window_starts(n_tokens: int, block: int, windows: int | None) -> np.ndarray:
    """Starts of ``windows`` windows of ``block + 1`` tokens spread evenly over a split (None: the whole
    split, back to back). ValueError when the split holds no window."""
    if n_tokens < block + 1:
        raise ValueError(f"the validation split has {n_tokens} tokens, fewer than one context ({block}) + 1")
    if windows is None:
        return np.arange(0, n_tokens - block, block)
    return np.linspace(0, n_tokens - block - 1, windows).astype(int)


def layer_losses(backend: Backend, val_tokens: np.ndarray, *, windows: int | None = 64,
                 ablation: HeadAblation | None = None) -> LayerLosses:
    """The lens loss per depth: how much of the prediction each block has built."""
    block = backend.config.block_size
    starts = window_starts(len(val_tokens), block, windows)
    unembed = Unembedding.of(backend)
    total = np.zeros(backend.config.n_layer + 1)
    for start in starts:
        window = np.asarray(val_tokens[start : start + block + 1], np.int64)
        trace = backend.trace(window[None, :-1], ablation)
        logits = unembed.logits(trace.residual)  # (depths, T, V)
        total += cross_entropy(logits, window[1:]).mean(-1)
    return LayerLosses(total / len(starts), len(starts), block)


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(..., T, V) logits and (T,) targets -> (..., T) losses in nats."""
    shifted = logits - logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(-1))
    return log_norm - np.take_along_axis(shifted, np.broadcast_to(targets[:, None], (*shifted.shape[:-1], 1)),
                                         -1)[..., 0]

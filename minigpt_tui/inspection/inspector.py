"""Why the model predicts what it does: surprisal per token, the next-token distribution at a
position (raw and as sampling reshapes it), and every head's attention. Backend-agnostic; the CLI,
the TUI and the figures all read these records and compute none of it themselves.

A text longer than the model's context is read in overlapping windows, like sliding-window
evaluation: window k > 0 contributes only its last ``block_size // 2`` positions, so every position
is scored with at least half a context of history, and its attention row covers the keys of the
window it was scored in (zero elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from backends.base import Backend, HeadAblation
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.sampling import SamplingParams, probabilities
from minigpt_tui.training.tokenizer import Tokenizer

LN2 = math.log(2.0)
TOP_K = 10  # candidates a next-token table shows


@dataclass(frozen=True)
class Candidate:
    """One possible next token at a position."""

    token_id: int
    text: str
    probability: float  # at temperature 1, nothing cut: what the model itself says
    sampled: float  # under the sampling settings, renormalised over the kept set (0 when cut)
    kept: bool  # inside the set top-k / top-p keep


@dataclass(frozen=True)
class NextTokens:
    """The distribution the token after ``position`` is drawn from."""

    position: int
    params: SamplingParams
    candidates: list[Candidate]  # the most likely ones, most likely first
    kept: int  # tokens with nonzero probability under the settings
    kept_mass: float  # their probability at the settings' temperature before renormalising (1 without cuts)
    entropy_bits: float  # of the distribution sampled from
    entropy_bits_raw: float  # of the model's own distribution (T = 1)
    actual: int | None  # the token that follows in the text, if any
    actual_probability: float | None  # its probability at T = 1

    def to_dict(self) -> dict:
        return {
            "position": self.position,
            "temperature": self.params.temperature,
            "top_k": self.params.top_k,
            "top_p": self.params.top_p,
            "kept": self.kept,
            "kept_mass": self.kept_mass,
            "entropy_bits": self.entropy_bits,
            "entropy_bits_raw": self.entropy_bits_raw,
            "actual": self.actual,
            "actual_probability": self.actual_probability,
            "candidates": [vars(c) for c in self.candidates],
        }


@dataclass(frozen=True)
class Inspection:
    """A text as the model reads it: its tokens, the logits after each, and all attention maps."""

    token_ids: list[int]
    pieces: list[str]  # each token's text (one character each with the char tokenizer)
    logits: np.ndarray  # (T, V) float64: row i predicts token i + 1
    attention: np.ndarray  # (n_layer, n_head, T, T): row i is query i's distribution over keys <= i
    surprisal_nats: np.ndarray  # (T,): -ln p(token i | tokens before it); NaN for token 0 (no prediction)
    residual: np.ndarray  # (n_layer + 1, T, n_embd): the stream after the embedding and each block (logit lens)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def surprisal_bits(self) -> np.ndarray:
        return self.surprisal_nats / LN2

    @property
    def n_layer(self) -> int:
        return self.attention.shape[0]

    @property
    def n_head(self) -> int:
        return self.attention.shape[1]

    def check_position(self, position: int) -> int:
        """``position`` as an index (negative counts from the end); MiniGPTError when outside the text."""
        if not -self.length <= position < self.length:
            raise MiniGPTError(f"position {position} is outside the text (0..{self.length - 1})")
        return position % self.length

    def check_head(self, layer: int, head: int) -> None:
        if not 0 <= layer < self.n_layer:
            raise MiniGPTError(f"layer {layer} does not exist (the model has layers 0..{self.n_layer - 1})")
        if not 0 <= head < self.n_head:
            raise MiniGPTError(f"head {head} does not exist (each layer has heads 0..{self.n_head - 1})")

    def next_tokens(self, position: int, params: SamplingParams, tokenizer: Tokenizer, k: int = TOP_K) -> NextTokens:
        position = self.check_position(position)
        actual = self.token_ids[position + 1] if position + 1 < self.length else None
        return next_tokens(self.logits[position], params, tokenizer, k, position=position, actual=actual)

    def attention_from(self, position: int, layer: int, head: int) -> np.ndarray:
        """(T,): how much query ``position`` of this head attends to each token (zero after it)."""
        self.check_head(layer, head)
        return self.attention[layer, head, self.check_position(position)]

    def to_dict(self) -> dict:
        return {
            "tokens": self.token_ids,
            "pieces": self.pieces,
            "surprisal": [None if math.isnan(s) else float(s) for s in self.surprisal_nats],  # nats per token
            "surprisal_bits": [None if math.isnan(s) else float(s) for s in self.surprisal_bits],
            "attention": self.attention.tolist(),
        }


def entropy_bits(probs: np.ndarray) -> float:
    nonzero = probs[probs > 0]
    return max(0.0, float(-(nonzero * np.log2(nonzero)).sum()))  # a certain choice is 0 bits, never "-0.00"


def next_tokens(logits: np.ndarray, params: SamplingParams, tokenizer: Tokenizer, k: int = TOP_K, *,
                position: int = -1, actual: int | None = None) -> NextTokens:
    """The top ``k`` candidates of one logits row, raw and under ``params`` (``sampling.probabilities``,
    the very function generation draws from)."""
    raw = probabilities(logits, SamplingParams(1.0))
    sampled = probabilities(logits, params)
    tempered = probabilities(logits, SamplingParams(params.temperature))  # before any cut
    kept = sampled > 0
    order = np.argsort(-np.asarray(logits, np.float64), kind="stable")[:k]
    candidates = [Candidate(int(i), tokenizer.decode([int(i)]), float(raw[i]), float(sampled[i]), bool(kept[i]))
                  for i in order]
    return NextTokens(
        position=position,
        params=params,
        candidates=candidates,
        kept=int(kept.sum()),
        kept_mass=float(tempered[kept].sum()),
        entropy_bits=entropy_bits(sampled),
        entropy_bits_raw=entropy_bits(raw),
        actual=actual,
        actual_probability=None if actual is None else float(raw[actual]),
    )


def windows(length: int, block_size: int) -> list[tuple[int, int, int]]:
    """(start, end, first row kept) of the windows that read a text of ``length`` tokens."""
    if length <= block_size:
        return [(0, length, 0)]
    stride = max(1, block_size // 2)
    spans, covered = [], 0
    start = 0
    while covered < length:
        start = min(start, length - block_size)
        spans.append((start, start + block_size, covered))
        covered = start + block_size
        start += stride
    return spans


def inspect_tokens(backend: Backend, token_ids: list[int], tokenizer: Tokenizer,
                   ablation: HeadAblation | None = None) -> Inspection:
    """Run ``token_ids`` through the model (in windows when longer than its context) and keep everything;
    with ``ablation``, as the model reads them with those heads knocked out."""
    if not token_ids:
        raise MiniGPTError("the text is empty (give at least one character)")
    c = backend.config
    T = len(token_ids)
    ids = np.asarray(token_ids, dtype=np.int64)
    logits = np.empty((T, c.vocab_size), np.float64)
    attention = np.zeros((c.n_layer, c.n_head, T, T), np.float64)
    residual = np.empty((c.n_layer + 1, T, c.n_embd), np.float64)
    for start, end, first in windows(T, c.block_size):
        trace = backend.trace(ids[None, start:end], ablation)
        rows = slice(first - start, end - start)
        logits[first:end] = trace.logits[rows]
        attention[:, :, first:end, start:end] = trace.attention[:, :, rows]
        residual[:, first:end] = trace.residual[:, rows]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    surprisal = np.full(T, np.nan)
    surprisal[1:] = -log_probs[np.arange(T - 1), ids[1:]]
    pieces = [tokenizer.decode([int(i)]) for i in token_ids]
    return Inspection(list(map(int, token_ids)), pieces, logits, attention, surprisal, residual)


def excerpt(text: str, length: int) -> str:
    """``length`` characters of ``text`` to inspect by default: from the first paragraph start (in a
    play, a speaker's name) when there is one, else from the beginning."""
    start = text.find("\n\n") + 2 if "\n\n" in text[: len(text) - length] else 0
    return text[start : start + length]


def inspect_text(backend: Backend, tokenizer: Tokenizer, text: str, ablation: HeadAblation | None = None) -> Inspection:
    """``text`` as the model reads it; characters outside the vocabulary are a MiniGPTError."""
    return inspect_tokens(backend, tokenizer.encode(text), tokenizer, ablation)

"""Turning logits into tokens: temperature, top-k and top-p, shared by every backend."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from backends.base import Backend
from minigpt_tui.errors import MiniGPTError

DEFAULT_TEMPERATURE = 0.8  # what `minigpt sample` and the Generate view use unless told otherwise


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise MiniGPTError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise MiniGPTError(f"top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise MiniGPTError(f"top-p must be in (0, 1], got {self.top_p}")


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution a token is drawn from: float64, sums to 1, zero outside the kept set."""
    logits = np.asarray(logits, dtype=np.float64)
    if params.temperature == 0:
        probs = np.zeros_like(logits)
        probs[int(np.argmax(logits))] = 1.0
        return probs
    # subtract the max before dividing: a tiny temperature then sends the others to -inf, never inf - inf
    with np.errstate(over="ignore"):
        scaled = (logits - logits.max()) / params.temperature
    if params.top_k is not None and params.top_k < len(scaled):
        kth_largest = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth_largest, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p is not None and params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep a token if the mass before it is still short of p: the smallest set reaching p
        keep = order[(cumulative - probs[order]) < params.top_p]
        mask = np.zeros_like(probs, dtype=bool)
        mask[keep] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    if params.temperature == 0:
        return int(np.argmax(logits))
    probs = probabilities(logits, params)
    # inverse-CDF draw: one uniform number, no re-normalisation surprises from rng.choice
    index = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
    return min(index, len(probs) - 1)


def random_generator(seed: int | None) -> np.random.Generator:
    """A generator for any integer seed (NumPy takes only non-negative ones: a negative seed is folded in)."""
    return np.random.default_rng(None if seed is None else seed % 2**64)


def generate(backend: Backend, prompt_ids: list[int], max_new_tokens: int, params: SamplingParams,
             seed: int | None = None) -> Iterator[int]:
    """Yield ``max_new_tokens`` token ids one at a time, decoding with the backend's KV cache.

    A prompt longer than the context keeps its last ``block_size`` tokens.
    """
    if not prompt_ids:
        raise MiniGPTError("the prompt is empty (give at least one character)")
    rng = random_generator(seed)
    session = backend.generation_session()
    logits = session.feed(prompt_ids[-backend.config.block_size :])
    for i in range(max_new_tokens):
        token = sample_token(logits, params, rng)
        yield token
        if i + 1 < max_new_tokens:
            logits = session.feed([token])


def generate_nocache(backend: Backend, prompt_ids: list[int], max_new_tokens: int, params: SamplingParams,
                     seed: int | None = None) -> Iterator[int]:
    """The same loop without a cache: the whole (cropped) context runs through the model every token."""
    rng = random_generator(seed)
    context = list(prompt_ids)
    for _ in range(max_new_tokens):
        window = np.asarray([context[-backend.config.block_size :]], dtype=np.int64)
        token = sample_token(backend.logits(window)[0, -1], params, rng)
        context.append(token)
        yield token


def stream_text(tokenizer, token_ids: Iterator[int]) -> Iterator[str]:
    """Text pieces as tokens arrive, in linear time.

    Tokens wait in ``pending`` until they decode to whole characters: a byte-level BPE token can end
    in the middle of a UTF-8 character, which decodes as U+FFFD until the next token completes it.
    Whatever is still pending when the tokens run out is flushed as it decodes.
    """
    pending: list[int] = []
    for token in token_ids:
        pending.append(token)
        text = tokenizer.decode(pending)
        if not text.endswith("\ufffd"):
            pending.clear()
            if text:
                yield text
    if pending:
        yield tokenizer.decode(pending)


def generate_text(backend: Backend, tokenizer, prompt: str, max_new_tokens: int, params: SamplingParams,
                  seed: int | None = None) -> Iterator[str]:
    """Stream the continuation of ``prompt`` as text; unknown prompt characters are a MiniGPTError."""
    return stream_text(tokenizer, generate(backend, tokenizer.encode(prompt), max_new_tokens, params, seed))

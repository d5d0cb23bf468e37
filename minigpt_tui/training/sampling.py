"""Turning logits into tokens: temperature, top-k and top-p, shared by every backend."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
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
    return probabilities_rows(np.asarray(logits)[None], params)[0]


def probabilities_rows(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """``probabilities`` of each row of (B, V) logits, computed for all rows at once (batched sampling)."""
    logits = np.asarray(logits, dtype=np.float64)
    if params.temperature == 0:
        probs = np.zeros_like(logits)
        probs[np.arange(len(logits)), np.argmax(logits, axis=-1)] = 1.0
        return probs
    # subtract the max before dividing: a tiny temperature then sends the others to -inf, never inf - inf
    with np.errstate(over="ignore"):
        scaled = (logits - logits.max(axis=-1, keepdims=True)) / params.temperature
    k = params.top_k
    if k is not None and k < scaled.shape[-1]:
        kth_largest = np.partition(scaled, -k, axis=-1)[:, -k, None]
        scaled = np.where(scaled < kth_largest, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if params.top_p is not None and params.top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        ranked = np.take_along_axis(probs, order, axis=-1)
        # keep a token if the mass before it is still short of p: the smallest set reaching p
        keep_ranked = (np.cumsum(ranked, axis=-1) - ranked) < params.top_p
        mask = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(mask, order, keep_ranked, axis=-1)
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    return sample_rows(np.asarray(logits)[None], params, [rng])[0]


def sample_rows(logits: np.ndarray, params: SamplingParams, rngs: list[np.random.Generator]) -> list[int]:
    """One token per row of (B, V) logits, row i drawn with ``rngs[i]``: what ``sample_token`` draws for each
    row alone, so a batch of samples equals the same samples drawn one by one."""
    if params.temperature == 0:
        return [int(i) for i in np.argmax(logits, axis=-1)]
    probs = probabilities_rows(logits, params)
    cumulative, totals = np.cumsum(probs, axis=-1), probs.sum(axis=-1)
    last = probs.shape[-1] - 1
    # inverse-CDF draw: one uniform number, no re-normalisation surprises from rng.choice
    return [min(int(np.searchsorted(cumulative[i], rng.random() * totals[i], side="right")), last)
            for i, rng in enumerate(rngs)]


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


def decode_step(backend: Backend, batch: int = 1) -> Callable[[], object]:
    """One KV-cached decoding step of ``batch`` rows, the unit sampling repeats (what ``--threads auto`` times)."""
    session = backend.generation_session(batch)
    tokens = np.zeros((batch, 1), np.int64)
    session.feed_rows(tokens)
    return lambda: session.feed_rows(tokens)


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

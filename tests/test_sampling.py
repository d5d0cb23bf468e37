"""Sampling: temperature, top-k and top-p over logits, checked against brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.sampling import SamplingParams, probabilities, sample_token

# moderate logits and temperatures: no kept token underflows to probability 0 in float64
logit_lists = st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=40)
distinct_logit_lists = st.lists(st.floats(-30, 30, allow_nan=False), min_size=2, max_size=40, unique=True).filter(
    lambda xs: min(np.diff(np.sort(xs))) > 1e-6
)
temperatures = st.floats(0.2, 5.0)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def assert_distribution(probs: np.ndarray, size: int) -> None:
    assert probs.shape == (size,)
    assert np.all(np.isfinite(probs))
    assert np.all(probs >= 0)
    assert math.isclose(probs.sum(), 1.0, rel_tol=0, abs_tol=1e-9)


@given(
    logits=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=50),
    temperature=st.one_of(st.just(0.0), st.just(5e-324), st.floats(0.0, 100.0)),
    top_k=st.one_of(st.none(), st.integers(1, 60)),
    top_p=st.one_of(st.none(), st.floats(0.0, 1.0, exclude_min=True)),
)
def test_every_output_is_a_probability_distribution(logits, temperature, top_k, top_p):
    logits = np.asarray(logits, np.float32)
    probs = probabilities(logits, SamplingParams(temperature, top_k, top_p))
    assert_distribution(probs, len(logits))
    assert probs[int(np.argmax(logits))] > 0  # the most likely token always survives the filters


@given(logits=distinct_logit_lists, temperature=temperatures, data=st.data())
def test_top_k_keeps_exactly_the_k_most_likely(logits, temperature, data):
    k = data.draw(st.integers(1, len(logits)))
    probs = probabilities(np.asarray(logits), SamplingParams(temperature, top_k=k))
    assert_distribution(probs, len(logits))
    assert np.count_nonzero(probs) == k
    top = set(np.argsort(logits)[-k:].tolist())
    assert set(np.flatnonzero(probs).tolist()) == top
    expected = softmax(np.asarray(logits)[sorted(top)] / temperature)
    np.testing.assert_allclose(probs[sorted(top)], expected, rtol=1e-9, atol=1e-12)


def brute_force_top_p(logits: np.ndarray, temperature: float, p: float) -> tuple[set[int], list[float]]:
    """Sort by probability; keep the shortest prefix whose exact sum reaches p."""
    full = softmax(logits / temperature)
    order = sorted(range(len(full)), key=lambda i: -full[i])
    prefix_sums = [math.fsum(full[order[: m + 1]]) for m in range(len(order))]
    m = next(m for m, s in enumerate(prefix_sums) if s >= p or m == len(order) - 1)
    return set(order[: m + 1]), prefix_sums


@given(logits=distinct_logit_lists, temperature=temperatures, p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_reaching_p(logits, temperature, p):
    logits = np.asarray(logits)
    kept, prefix_sums = brute_force_top_p(logits, temperature, p)
    # a prefix sum equal to p up to rounding is a tie the two computations may break differently
    assume(all(abs(s - p) > 1e-9 for s in prefix_sums))
    probs = probabilities(logits, SamplingParams(temperature, top_p=p))
    assert_distribution(probs, len(logits))
    assert set(np.flatnonzero(probs).tolist()) == kept
    full = softmax(logits / temperature)
    np.testing.assert_allclose(probs[sorted(kept)], full[sorted(kept)] / full[sorted(kept)].sum(), rtol=1e-9)


def test_top_p_example_by_hand():
    # probabilities 0.5, 0.3, 0.2: p=0.5 keeps one token, p=0.6 two, p=0.81 all three
    logits = np.log([0.2, 0.5, 0.3])
    assert np.flatnonzero(probabilities(logits, SamplingParams(1.0, top_p=0.5))).tolist() == [1]
    assert np.flatnonzero(probabilities(logits, SamplingParams(1.0, top_p=0.6))).tolist() == [1, 2]
    assert np.count_nonzero(probabilities(logits, SamplingParams(1.0, top_p=0.81))) == 3
    np.testing.assert_allclose(probabilities(logits, SamplingParams(1.0, top_p=0.6))[[1, 2]], [0.625, 0.375])


@given(logits=distinct_logit_lists, seed=st.integers(0, 2**32 - 1))
def test_temperature_zero_is_argmax(logits, seed):
    logits = np.asarray(logits)
    best = int(np.argmax(logits))
    probs = probabilities(logits, SamplingParams(0.0))
    assert probs[best] == 1.0 and np.count_nonzero(probs) == 1
    assert sample_token(logits, SamplingParams(0.0), np.random.default_rng(seed)) == best


@given(logits=distinct_logit_lists, seed=st.integers(0, 2**32 - 1))
def test_temperature_towards_zero_approaches_argmax(logits, seed):
    logits = np.asarray(logits, np.float64)
    gap = np.diff(np.sort(logits))[-1]  # margin of the best logit over the runner-up
    best = int(np.argmax(logits))
    for temperature in (1.0, 0.1, 1e-3, 1e-6, 1e-300):
        probs = probabilities(logits, SamplingParams(temperature))
        assert_distribution(probs, len(logits))
        if gap / temperature > 50:
            assert probs[best] > 1 - 1e-12
            assert sample_token(logits, SamplingParams(temperature), np.random.default_rng(seed)) == best


def test_tiny_positive_temperature_does_not_overflow_into_nan():
    logits = np.array([1.0, 2.0, -3.0])
    for params in (SamplingParams(1e-310), SamplingParams(1e-310, top_k=2), SamplingParams(5e-324, top_p=0.5)):
        np.testing.assert_array_equal(probabilities(logits, params), [0.0, 1.0, 0.0])


def test_lower_temperature_sharpens():
    logits = np.array([1.0, 2.0, 3.0])
    peaks = [probabilities(logits, SamplingParams(t))[2] for t in (2.0, 1.0, 0.5, 0.1)]
    assert peaks == sorted(peaks) and peaks[-1] > 0.99


@given(logits=logit_lists, temperature=temperatures, top_k=st.integers(1, 5), top_p=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_sample_token_only_draws_kept_tokens(logits, temperature, top_k, top_p, seed):
    params = SamplingParams(temperature, top_k, top_p)
    probs = probabilities(np.asarray(logits), params)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        assert probs[sample_token(np.asarray(logits), params, rng)] > 0


def test_sample_token_follows_the_distribution():
    logits = np.log([0.1, 0.6, 0.3])
    rng = np.random.default_rng(0)
    counts = np.bincount([sample_token(logits, SamplingParams(1.0), rng) for _ in range(20_000)], minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.6, 0.3], atol=0.015)


def test_sample_token_is_reproducible_with_a_seed():
    logits = np.random.default_rng(1).normal(size=50)
    draws = [[sample_token(logits, SamplingParams(1.0), rng) for _ in range(30)]
             for rng in (np.random.default_rng(7), np.random.default_rng(7))]
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 1


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=0), "top-k"),
    (dict(top_k=-3), "top-k"),
    (dict(top_p=0.0), "top-p"),
    (dict(top_p=1.5), "top-p"),
    (dict(top_p=-0.2), "top-p"),
    (dict(top_p=float("nan")), "top-p"),
])
def test_invalid_parameters_raise(kwargs, fragment):
    with pytest.raises(MiniGPTError, match=fragment):
        SamplingParams(**kwargs)


def test_generation_streams_and_kv_cache_matches_full_recompute(tiny):
    from backends.base import init_weights
    from minigpt_tui.training.runs import build_backend
    from minigpt_tui.training.sampling import generate, generate_nocache, generate_text
    from minigpt_tui.training.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.from_text("abcdefgh ")
    config = tiny.replace(block_size=16)
    config = config.with_vocab_size(tokenizer.vocab_size)
    backend = build_backend(config, init_weights(config.model, 3))
    prompt = tokenizer.encode("abc")
    # within one context window the cached and uncached loops must pick the same tokens
    for params in (SamplingParams(0.0), SamplingParams(1.0, top_k=4)):
        cached = list(generate(backend, prompt, 12, params, seed=5))
        full = list(generate_nocache(backend, prompt, 12, params, seed=5))
        assert cached == full
    pieces = list(generate_text(backend, tokenizer, "abc", 40, SamplingParams(1.0), seed=1))
    assert len(pieces) == 40 and all(len(p) == 1 for p in pieces)  # one character streamed per token
    long_prompt = tokenizer.encode("abcdefgh " * 5)  # longer than the context: cropped, not an error
    assert len(list(generate(backend, long_prompt, 30, SamplingParams(0.8), seed=2))) == 30
    with pytest.raises(MiniGPTError, match="empty"):
        list(generate(backend, [], 5, SamplingParams()))

import numpy as np
import pytest

from backends.base import ModelConfig, OptimConfig, init_weights
from backends.torch_backend import TorchBackend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.evaluation import evaluate_tokens

CONFIG = ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def backend():
    return TorchBackend(CONFIG, init_weights(CONFIG, 0), OptimConfig())


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, CONFIG.vocab_size, 103)


def max_context_nll(backend, tokens) -> float:
    """Brute force: every target scored with as much context as the model takes."""
    total = 0.0
    for j in range(len(tokens) - 1):
        context = tokens[max(0, j - CONFIG.block_size + 1) : j + 1][None]
        logits = backend.logits(context)[0, -1].astype(np.float64)
        total += np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[tokens[j + 1]]
    return total / (len(tokens) - 1)


@pytest.mark.parametrize("stride", [None, 1, 3, 7, 8])
def test_every_target_is_scored_exactly_once(backend, tokens, stride):
    assert evaluate_tokens(backend, tokens, 1.0, batch_size=5, stride=stride).tokens == len(tokens) - 1


def test_stride_one_gives_every_token_its_full_context(backend, tokens):
    score = evaluate_tokens(backend, tokens, 1.0, batch_size=5, stride=1)
    assert score.loss == pytest.approx(max_context_nll(backend, tokens), rel=1e-6)


def test_default_equals_non_overlapping_windows(backend, tokens):
    windows = [tokens[s : s + CONFIG.block_size + 1] for s in range(0, len(tokens) - 1, CONFIG.block_size)]
    total = sum(backend.eval_loss(w[None, :-1], w[None, 1:]) * (len(w) - 1) for w in windows)
    assert evaluate_tokens(backend, tokens, 1.0).loss == pytest.approx(total / (len(tokens) - 1), rel=1e-6)


@pytest.mark.parametrize("stride", [0, 9])
def test_a_stride_outside_the_context_is_refused(backend, tokens, stride):
    with pytest.raises(MiniGPTError, match="stride"):
        evaluate_tokens(backend, tokens, 1.0, stride=stride)

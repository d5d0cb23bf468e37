"""Exact evaluation over a whole split: every target token counted once."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from backends.base import Backend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.data import sequential_windows, split_text
from minigpt_tui.training.metrics import bits_per_char, perplexity
from minigpt_tui.training.runs import Run, load_model
from minigpt_tui.training.threads import ThreadSetting, apply_threads

EVAL_BATCH = 32  # windows per forward


@dataclass(frozen=True)
class SplitScore:
    loss: float  # mean NLL per token, nats
    perplexity: float
    bits_per_char: float
    tokens: int


def evaluate_tokens(backend: Backend, tokens: np.ndarray, tokens_per_char: float, batch_size: int = EVAL_BATCH,
                    stride: int | None = None) -> SplitScore:
    """Mean loss per token over ``tokens``.

    By default the split is cut into non-overlapping context windows: a token sees 0 to block_size - 1
    tokens of context, the same mix as the random training and evaluation batches. With ``stride`` <
    block_size, windows overlap and each token (after the first window) is scored with at least
    block_size - stride tokens of context: the usual sliding-window perplexity, lower and costlier.
    """
    block_size = backend.config.block_size
    if stride is None or stride == block_size:
        total, count = 0.0, 0
        for inputs, targets in sequential_windows(tokens, block_size, batch_size):
            total += backend.eval_loss(inputs, targets) * targets.size
            count += targets.size
    elif 1 <= stride < block_size:
        total, count = _sliding_window_nll(backend, tokens, stride, batch_size)
    else:
        raise MiniGPTError(f"stride must be between 1 and the context length {block_size}, got {stride}")
    loss = total / count
    return SplitScore(loss, perplexity(loss), bits_per_char(loss, tokens_per_char), count)


def window_nll(backend: Backend, windows: np.ndarray) -> np.ndarray:
    """(B, T+1) token windows -> (B, T) float64 NLL (nats) of each next token given its prefix."""
    logits = backend.logits(windows[:, :-1]).astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, windows[:, 1:, None], axis=-1)[..., 0]


def _sliding_window_nll(backend: Backend, tokens: np.ndarray, stride: int, batch_size: int) -> tuple[float, int]:
    """Windows start every ``stride`` tokens; window k > 0 scores only its last ``stride`` targets,
    so the scored spans tile the split exactly once (the first window scores all of its targets)."""
    block_size, n_targets = backend.config.block_size, len(tokens) - 1
    starts = list(range(0, max(1, n_targets - block_size + stride), stride))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        # the last window may run past the end: score it on its own, shortened
        full = [s for s in chunk if s + block_size <= n_targets]
        groups = [(full, block_size)] if full else []
        groups += [([s], n_targets - s) for s in chunk if s + block_size > n_targets]
        for group, length in groups:
            idx = np.asarray(group)[:, None] + np.arange(length + 1)
            windows = tokens[idx]
            nll = window_nll(backend, windows)
            for row, start in enumerate(group):
                first = 0 if start == 0 else block_size - stride
                total += float(nll[row, first:].sum())
                count += length - first
    return total, count


@dataclass(frozen=True)
class EvalReport:
    """What ``minigpt eval`` prints and writes as JSON: one checkpoint scored on a whole val split."""

    run: str
    checkpoint: str  # "best" or "latest" (best falls back to latest before the first best)
    step: int
    backend: str
    val_loss: float
    val_perplexity: float
    val_bits_per_char: float
    tokens: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.run} ({self.checkpoint} checkpoint, step {self.step}, {self.backend}): val loss "
            f"{self.val_loss:.4f}  perplexity {self.val_perplexity:.3f}  bits/char {self.val_bits_per_char:.4f}  "
            f"over {self.tokens} tokens"
        )


def evaluate_run(run: Run, text: str, *, which: str = "best", backend: str | None = None, device: str | None = None,
                 stride: int | None = None, threads: ThreadSetting | None = None) -> EvalReport:
    """Score a run's checkpoint on the val split of ``text``; MiniGPTError when the split is too short."""
    val = run.tokenizer.encode_array(split_text(text)[1])
    if len(val) < 2:
        raise MiniGPTError(f"the val split has {len(val)} token(s): too short to evaluate (give a longer text)")
    model, checkpoint = load_model(run, which=which, backend=backend, device=device)
    first_batch = next(sequential_windows(val, run.config.model.block_size, EVAL_BATCH))
    apply_threads(threads, model.set_threads, lambda: model.eval_loss(*first_batch))  # auto: timed on one batch
    score = evaluate_tokens(model, val, run.tokens_per_char, stride=stride)
    return EvalReport(str(run.path), checkpoint.state.kind, checkpoint.state.step, model.name, score.loss,
                      score.perplexity, score.bits_per_char, score.tokens, stride or run.config.model.block_size)

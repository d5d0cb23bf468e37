"""Probes of a trained model beyond its val loss: loss by position in the window, loss past the trained
context, and teacher-forced vs free-running NLL (exposure bias)."""

from __future__ import annotations

import math

import numpy as np

from backends.base import Backend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.evaluation import window_nll
from minigpt_tui.training.sampling import SamplingParams, random_generator


def position_losses(backend: Backend, tokens: np.ndarray, window: int, max_windows: int = 64,
                    batch_size: int = 8) -> np.ndarray:
    """Mean next-token NLL (nats) at each position 0..window-1, over non-overlapping val windows.

    Position i predicts token i+1 from i+1 tokens of context, so the curve shows what more context
    buys, and (beyond the trained block size) how a model copes with positions it never saw.
    """
    starts = np.arange(0, len(tokens) - window - 1, window)[:max_windows]
    if len(starts) == 0:
        raise MiniGPTError(f"the val split is too short for windows of {window} tokens")
    totals = np.zeros(window)
    for i in range(0, len(starts), batch_size):
        idx = starts[i : i + batch_size, None] + np.arange(window + 1)
        totals += window_nll(backend, tokens[idx]).sum(axis=0)
    return totals / len(starts)


def length_generalisation(model: Backend, run, val: np.ndarray) -> dict:
    """Loss by position on windows up to 4x the trained context (sinusoidal), or the context (learned)."""
    block = model.config.block_size
    window = 4 * block if model.config.pos_encoding == "sinusoidal" else block
    losses = position_losses(model, val, window)
    spans = {f"{lo}-{hi}": float(losses[lo:hi].mean()) for lo, hi in ((0, block), (block, 2 * block),
                                                                        (2 * block, 4 * block)) if hi <= window}
    return {"loss_by_position": losses.round(4).tolist(), "mean_loss_by_span": spans,
            "bpc_by_span": {k: v * run.tokens_per_char / math.log(2) for k, v in spans.items()}}


def exposure_bias(backend: Backend, tokenizer, val_tokens: np.ndarray, *, samples: int, length: int,
                  seed: int = 0) -> dict:
    """Teacher forcing vs free running, position by position.

    Teacher-forced: the NLL of the true next token given the true prefix (what training optimises).
    Free-running: the NLL, at T=1, of the token the model itself sampled given its own earlier samples
    (what generation conditions on). If errors compounded, the second would climb along the sample.
    """
    from minigpt_tui.experiments.temperature import sample_batch_with_scores

    block = backend.config.block_size
    teacher = position_losses(backend, val_tokens, block)
    rng = random_generator(seed)
    prompts = [[int(val_tokens[int(rng.integers(0, len(val_tokens) - 1))])] for _ in range(samples)]
    traces = sample_batch_with_scores(backend, tokenizer, prompts, length, SamplingParams(1.0),
                                      [seed + i for i in range(samples)])
    free = [trace.nlls for trace in traces]
    free_mean = np.mean(np.asarray(free), axis=0)
    buckets = [(lo, min(lo + block, length)) for lo in range(0, length, block)]
    return {
        "teacher_forced_mean": float(teacher.mean()),
        "teacher_forced_by_position": teacher.round(4).tolist(),
        "free_running_by_position": free_mean.round(4).tolist(),
        "free_running_by_bucket": {f"{lo}-{hi}": float(free_mean[lo:hi].mean()) for lo, hi in buckets},
    }

"""Learning-rate schedule: linear warmup, cosine decay to min_lr, then flat."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minigpt_tui.training.schedule import learning_rate

MAX_LR, MIN_LR, WARMUP, DECAY = 1e-3, 1e-4, 10, 110


def lr(step: int) -> float:
    return learning_rate(step, max_lr=MAX_LR, min_lr=MIN_LR, warmup_iters=WARMUP, decay_iters=DECAY)


def test_warmup_is_linear_from_above_zero():
    values = [lr(s) for s in range(WARMUP)]
    assert values[0] == pytest.approx(MAX_LR / (WARMUP + 1))
    assert values[0] > 0  # the first step already moves the weights
    np.testing.assert_allclose(np.diff(values), MAX_LR / (WARMUP + 1), rtol=1e-12)
    assert values[-1] < MAX_LR


def test_peak_at_end_of_warmup():
    assert lr(WARMUP) == pytest.approx(MAX_LR)


def test_cosine_midpoint_is_halfway_between_max_and_min():
    midpoint = WARMUP + (DECAY - WARMUP) // 2
    assert lr(midpoint) == pytest.approx((MAX_LR + MIN_LR) / 2)
    quarter = WARMUP + (DECAY - WARMUP) // 4
    assert lr(quarter) == pytest.approx(MIN_LR + (MAX_LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi / 4)))


def test_decay_is_monotone_and_ends_at_min_lr():
    values = [lr(s) for s in range(WARMUP, DECAY + 1)]
    assert np.all(np.diff(values) <= 0)
    assert lr(DECAY - 1) > MIN_LR
    for step in (DECAY, DECAY + 1, 10 * DECAY):
        assert lr(step) == MIN_LR


def test_no_warmup_starts_at_max_lr():
    assert learning_rate(0, max_lr=MAX_LR, min_lr=MIN_LR, warmup_iters=0, decay_iters=DECAY) == pytest.approx(MAX_LR)


def test_trainer_decays_over_max_iters_unless_told_otherwise(tiny):
    assert tiny.replace(max_iters=500, lr_decay_iters=0).decay_iters == 500
    assert tiny.replace(max_iters=500, lr_decay_iters=300).decay_iters == 300

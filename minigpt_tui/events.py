"""What the trainer reports. Shells (CLI progress bar, TUI) subscribe to these; the trainer prints nothing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepEvent:
    step: int  # optimizer steps done so far
    max_iters: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float  # training throughput over the last log interval
    elapsed_s: float  # wall time of this session, evaluations included


@dataclass(frozen=True)
class EvalEvent:
    step: int
    train_loss: float
    val_loss: float
    val_perplexity: float
    val_bits_per_char: float
    train_bits_per_char: float
    best_val_loss: float
    is_best: bool


@dataclass(frozen=True)
class CheckpointEvent:
    step: int
    path: str
    kind: str  # "latest" or "best"


@dataclass(frozen=True)
class DoneEvent:
    step: int
    reason: str  # "finished", "stopped" or "diverged"
    message: str
    best_val_loss: float


Event = StepEvent | EvalEvent | CheckpointEvent | DoneEvent

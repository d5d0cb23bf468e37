"""What the trainer reports. Shells (CLI progress bar, TUI) subscribe to these; the trainer prints nothing.

``StepEvent`` and ``EvalEvent`` are also the records of a run's metrics.jsonl: a line is
``{"type": ..., **fields}`` with the same field names as in memory, written by ``to_record`` and read
back, every field checked, by ``record_from_dict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.typed import from_fields


class _Record:
    """A metrics.jsonl line: ``{"type": kind, **fields}``."""

    kind: ClassVar[str]

    def to_record(self) -> dict:
        return {"type": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class StepEvent(_Record):
    kind: ClassVar[str] = "step"
    step: int  # optimizer steps done so far
    max_iters: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float  # training throughput over the last log interval
    elapsed_s: float  # wall time of this session, evaluations included
    time: float  # wall clock (Unix seconds) when the step ended


@dataclass(frozen=True)
class EvalEvent(_Record):
    kind: ClassVar[str] = "eval"
    step: int
    train_loss: float
    val_loss: float
    val_perplexity: float
    val_bits_per_char: float
    train_bits_per_char: float
    best_val_loss: float
    is_best: bool
    time: float  # wall clock (Unix seconds)


MetricsRecord = StepEvent | EvalEvent
RECORD_TYPES: dict[str, type] = {cls.kind: cls for cls in (StepEvent, EvalEvent)}


def record_from_dict(data, where: str = "metrics record") -> MetricsRecord:
    """A metrics line back as its event; MiniGPTError names what is wrong with it."""
    if not isinstance(data, dict):
        raise MiniGPTError(f"{where} is not a JSON object")
    cls = RECORD_TYPES.get(data.get("type"))
    if cls is None:
        raise MiniGPTError(f"{where} has an unknown type {data.get('type')!r}")
    record = from_fields(cls, {k: v for k, v in data.items() if k != "type"}, where)
    if record.step < 0:
        raise MiniGPTError(f"{where}: step must be >= 0, got {record.step}")
    return record


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

"""What the trainer reports. Shells (CLI progress bar, TUI) subscribe to these; the trainer prints nothing.

``StepEvent``, ``EvalEvent`` and ``ThreadsEvent`` are also the records of a run's metrics.jsonl: a line is
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


@dataclass(frozen=True)
class ThreadsEvent(_Record):
    """The CPU threads training computes with from ``step`` on: the first choice, and every re-measurement."""

    kind: ClassVar[str] = "threads"
    step: int  # optimizer steps done when the count took effect
    threads: int
    previous: int  # the count before (0 at the first record of a session)
    reason: str  # "fixed" (--threads N), "start" (first measurement), "drift" (step times moved), "periodic"
    step_ms: dict  # measured mean milliseconds per step, by thread count ("1": 31.5, ...); empty when fixed
    time: float  # wall clock (Unix seconds)

    def __post_init__(self) -> None:
        if self.threads < 1 or self.previous < 0:
            raise ValueError(f"threads must be >= 1 (previous >= 0), got {self.threads} and {self.previous}")
        for count, ms in self.step_ms.items():
            if not (str(count).isdigit() and isinstance(ms, int | float) and not isinstance(ms, bool)):
                raise ValueError(f"step_ms maps thread counts to milliseconds, got {count!r}: {ms!r}")

    def describe(self) -> str:
        """One line: the count, why, and what was measured."""
        measured = ", ".join(f"{n}: {ms:.1f} ms" for n, ms in self.step_ms.items())
        return f"{self.threads} threads ({self.reason}{'; ' + measured if measured else ''})"


MetricsRecord = StepEvent | EvalEvent | ThreadsEvent
RECORD_TYPES: dict[str, type] = {cls.kind: cls for cls in (StepEvent, EvalEvent, ThreadsEvent)}


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


Event = StepEvent | EvalEvent | ThreadsEvent | CheckpointEvent | DoneEvent

"""Every app-wide message. Workers post them from their threads; the app routes them to the panes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual.message import Message

from minigpt_tui.experiments.keepsakes import AblationRecipe, SampleRecipe
from minigpt_tui.experiments.temperature import TemperatureRow
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.events import CheckpointEvent, DoneEvent, EvalEvent, StepEvent, ThreadsEvent
from minigpt_tui.training.runs import Metrics
from minigpt_tui.training.sampling import SamplingParams


@dataclass
class StartRun(Message):
    """The new-run form passed validation."""

    config: TrainConfig
    load_corpus: Callable[[], Corpus]  # a named dataset may need a download: called in the worker
    out: Path | None
    threads: int | str = "auto"  # --threads: a count, or auto


@dataclass
class TrainingStarted(Message):
    trainer: object  # minigpt_tui.training.trainer.Trainer, kept untyped so this module stays light
    train_text: str  # the training split, for the ablation's known-word share
    start_step: int  # where this session began (the trainer itself may be further on already)
    earlier: Metrics | None  # the run's records up to start_step, when it continues a run


@dataclass
class TrainingProgress(Message):
    steps: list[StepEvent]  # batched: a few messages per second, never one per step


@dataclass
class TrainingThreads(Message):
    event: ThreadsEvent  # the count training runs on now, and why


@dataclass
class TrainingEvaluated(Message):
    event: EvalEvent


@dataclass
class CheckpointSaved(Message):
    event: CheckpointEvent


@dataclass
class TrainingFinished(Message):
    event: DoneEvent


@dataclass
class GenerateRequest(Message):
    prompt: str
    params: SamplingParams
    length: int
    seed: int | None


@dataclass
class GenerationStarted(Message):
    recipe: SampleRecipe  # the weights (a live copy or a checkpoint), the prompt and the seed actually used


@dataclass
class GenerationText(Message):
    text: str  # one or more freshly sampled pieces


@dataclass
class GenerationFinished(Message):
    characters: int
    seconds: float
    stopped: bool


@dataclass
class AblationRequest(Message):
    temperatures: list[float]
    samples: int
    length: int


@dataclass
class AblationRowReady(Message):
    row: TemperatureRow


@dataclass
class AblationFinished(Message):
    recipe: AblationRecipe
    stopped: bool


@dataclass
class SaveSample(Message):
    text: str
    recipe: SampleRecipe | None  # what made it, written above it; None before anything was generated


@dataclass
class SaveAblation(Message):
    rows: list[TemperatureRow]
    recipe: AblationRecipe | None  # which weights, prompt and seeds made the samples

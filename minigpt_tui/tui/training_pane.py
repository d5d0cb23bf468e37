"""The training view: loss and bits/char (or perplexity) curves, and a status panel."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from backends.base import count_parameters
from minigpt_tui.config import TrainConfig
from minigpt_tui.events import EvalEvent, StepEvent
from minigpt_tui.metrics import perplexity
from minigpt_tui.runs import Metrics, Run

MAX_PLOTTED = 400  # per-step losses beyond this are averaged in buckets: cheap redraws on long runs


@dataclass
class Curves:
    """Everything the plots draw, fed by live trainer events or by a run's metrics.jsonl."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    train_eval_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    train_bpc: list[float] = field(default_factory=list)
    val_bpc: list[float] = field(default_factory=list)

    def add_steps(self, events: list[StepEvent]) -> None:
        for event in events:
            if self.steps and event.step <= self.steps[-1]:
                continue
            self.steps.append(event.step)
            self.losses.append(event.loss)

    def add_eval(self, event: EvalEvent) -> None:
        if self.eval_steps and event.step <= self.eval_steps[-1]:
            return
        self.eval_steps.append(event.step)
        self.train_eval_loss.append(event.train_loss)
        self.val_loss.append(event.val_loss)
        self.train_bpc.append(event.train_bits_per_char)
        self.val_bpc.append(event.val_bits_per_char)

    @classmethod
    def from_metrics(cls, metrics: Metrics) -> Curves:
        curves = cls()
        curves.add_steps(metrics.steps)
        for event in metrics.evals:
            curves.add_eval(event)
        return curves


def bucket_means(xs: list[int], ys: list[float], limit: int = MAX_PLOTTED) -> tuple[list[float], list[float]]:
    """At most ``limit`` points: consecutive buckets replaced by their mean (a smoothed curve)."""
    if len(xs) <= limit:
        return list(xs), list(ys)
    edges = np.linspace(0, len(xs), limit + 1).astype(int)
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    return ([float(x[a:b].mean()) for a, b in zip(edges[:-1], edges[1:], strict=True)],
            [float(y[a:b].mean()) for a, b in zip(edges[:-1], edges[1:], strict=True)])


def finite(xs: list, ys: list[float]) -> tuple[list, list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y) and y > 0]
    return [x for x, _ in kept], [y for _, y in kept]


class CurvePlot(PlotextPlot):
    """A plot redrawn only when asked (the pane throttles), always through this widget's own ``plt``."""

    def draw(self, title: str, ylabel: str, series: list[tuple[str, list, list[float]]], log_y: bool) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(title)
        plt.xlabel("step")
        plt.ylabel(ylabel)
        plt.yscale("log" if log_y else "linear")
        drawn = False
        for label, xs, ys in series:
            xs, ys = finite(xs, ys)
            if xs:
                plt.plot(xs, ys, label=label, marker="braille")
                drawn = True
        if not drawn:
            plt.text("waiting for the first points…", x=0.5, y=0.5)
            plt.xlim(0, 1)
            plt.ylim(0, 1)
        self.refresh()


@dataclass
class Status:
    """What the status panel shows; None means "not known yet"."""

    run: str = "-"
    state: str = "-"
    backend: str = "-"
    device: str = "-"
    parameters: int | None = None
    corpus: str = "-"
    model: str = "-"
    batch: str = "-"
    step: int = 0
    max_iters: int = 0
    tokens_per_s: float | None = None
    lr: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    best_val_loss: float | None = None
    note: str = ""


def clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StatusPanel(Static):
    def show(self, s: Status) -> None:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="ellipsis", no_wrap=True)
        best = "-" if s.best_val_loss is None or not math.isfinite(s.best_val_loss) else f"{s.best_val_loss:.4f}"
        rows = [
            ("run", s.run), ("state", s.state), ("backend", f"{s.backend} on {s.device}"),
            ("params", "-" if s.parameters is None else f"{s.parameters / 1e6:.3f}M"), ("model", s.model),
            ("batch", s.batch), ("corpus", s.corpus),
            ("step", f"{s.step} / {s.max_iters}"),
            ("tokens/s", "-" if s.tokens_per_s is None else f"{s.tokens_per_s:,.0f}"),
            ("lr", "-" if s.lr is None else f"{s.lr:.2e}"),
            ("elapsed", clock(s.elapsed_s)), ("ETA", clock(s.eta_s)), ("best val", best),
        ]
        for name, value in rows:
            grid.add_row(name, value)
        self.update(Group(grid, Text(f"\n{s.note}", style="dim")) if s.note else grid)


class TrainingPane(Horizontal):
    """Curves on the left, status on the right; ``redraw`` is called a few times a second at most."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.curves = Curves()
        self.status = Status()
        self.log_y = False
        self.show_perplexity = False
        self.quality_drawn: tuple | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="plots"):
            yield CurvePlot(id="loss-plot")
            yield CurvePlot(id="quality-plot")
        yield StatusPanel(id="status")

    def on_mount(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        c = self.curves
        steps, losses = bucket_means(c.steps, c.losses)
        self.query_one("#loss-plot", CurvePlot).draw(
            "loss", "nats/token",
            [("train", steps, losses), ("val", c.eval_steps, c.val_loss)], self.log_y)
        # the lower plot only changes on an evaluation or a toggle: skip rebuilding it otherwise
        quality_key = (id(c), len(c.eval_steps), self.log_y, self.show_perplexity)
        if quality_key != self.quality_drawn:
            self.quality_drawn = quality_key
            self.draw_quality()
        self.query_one(StatusPanel).show(self.status)

    def draw_quality(self) -> None:
        c = self.curves
        if self.show_perplexity:
            quality = [("train", c.eval_steps, [perplexity(v) for v in c.train_eval_loss]),
                       ("val", c.eval_steps, [perplexity(v) for v in c.val_loss])]
            self.query_one("#quality-plot", CurvePlot).draw("perplexity", "perplexity", quality, self.log_y)
        else:
            quality = [("train", c.eval_steps, c.train_bpc), ("val", c.eval_steps, c.val_bpc)]
            self.query_one("#quality-plot", CurvePlot).draw("bits per character", "bits/char", quality, self.log_y)

    def show_status(self) -> None:
        self.query_one(StatusPanel).show(self.status)


def describe(status: Status, config: TrainConfig, vocab_size: int) -> None:
    """Fill the run's fixed facts: shape, batch and parameter count."""
    c = config
    m = c.model
    status.model = f"{m.n_layer}L {m.n_head}H {m.n_embd}d ctx {m.block_size}"
    status.batch = f"{c.batch_size}×{c.grad_accum_steps}, lr {c.learning_rate:g}"
    status.parameters = count_parameters(c.with_vocab_size(vocab_size).model)
    status.max_iters = c.max_iters


def status_from_metrics(run: Run, metrics: Metrics) -> Status:
    """The status of a run read from disk: its config and the last records of its metrics.jsonl."""
    c = run.config
    records, steps, evals = metrics.records, metrics.steps, metrics.evals
    step = max((r.step for r in records), default=0)
    times = [r.time for r in records]
    status = Status(run=run.path.name, backend=c.backend, device=c.device, corpus=Path(run.data_source).name,
                    step=step)
    describe(status, c, run.tokenizer.vocab_size)
    status.state = "finished" if step >= c.max_iters else ("not started" if not records else f"stopped at {step}")
    if steps:
        status.tokens_per_s = steps[-1].tokens_per_s
        status.lr = steps[-1].lr
    if len(times) > 1:
        status.elapsed_s = times[-1] - times[0]
    if evals:
        status.best_val_loss = min(r.val_loss for r in evals)
    return status

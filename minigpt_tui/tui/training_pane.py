"""The training view: loss and bits/char (or perplexity) curves, and a status panel."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from plotext._dict import color_codes as PLOTEXT_COLOR_CODES
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from backends.base import count_parameters
from minigpt_tui.plots import BATCH_COLOR, TRAIN_COLOR, VAL_COLOR, axis_limits, step_ticks, value_ticks
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.events import EvalEvent, StepEvent, ThreadsEvent
from minigpt_tui.training.metrics import bits_per_char, perplexity
from minigpt_tui.training.runs import Metrics, Run
from minigpt_tui.tui.guarded_plot import GuardedPlot

MAX_PLOTTED = 400  # per-step losses beyond this are averaged in buckets: cheap redraws on long runs


@dataclass
class Curves:
    """Everything the plots draw, fed by live trainer events or by a run's metrics.jsonl."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
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
            self.lrs.append(event.lr)
            self.grad_norms.append(event.grad_norm)

    def add_eval(self, event: EvalEvent) -> None:
        if self.eval_steps and event.step <= self.eval_steps[-1]:
            return
        self.eval_steps.append(event.step)
        self.train_eval_loss.append(event.train_loss)
        self.val_loss.append(event.val_loss)
        self.train_bpc.append(event.train_bits_per_char)
        self.val_bpc.append(event.val_bits_per_char)

    @property
    def last_step(self) -> int:
        return max(self.steps[-1:] + self.eval_steps[-1:], default=0)

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


@dataclass(frozen=True)
class Line:
    label: str
    xs: list
    ys: list[float]
    color: str  # a plotext colour name: bright enough to read on the dark theme


TRAIN_COLORS = (BATCH_COLOR, TRAIN_COLOR, VAL_COLOR)  # per-step train loss, evaluated train, evaluated val
RUN_COLORS = ("orange", "magenta", "cyan", "green", "yellow", "red", "blue", "white")  # overlaid runs, by order
REFERENCE_COLOR = "gray"
Y_TICK_WIDTH = 7  # every y tick label padded to this width, so the two plots' x axes line up


def run_color(i: int) -> str:
    """The colour of the ``i``-th run drawn (this one first), cycling past the last."""
    return RUN_COLORS[i % len(RUN_COLORS)]


def legend(title: str, lines: list[Line]) -> Text:
    """The plot's title and a key per line, in the lines' own terminal colours: drawn above the plot, so it
    never covers a curve however small the terminal."""
    text = Text(title, style="bold")
    for line in lines:
        text.append("  ")
        text.append("━━", style=f"color({PLOTEXT_COLOR_CODES[line.color]})")
        text.append(f" {line.label}")
    return text


class CurvePlot(GuardedPlot):
    """A plot redrawn only when asked (the pane throttles), always through this widget's own ``plt``."""

    def draw(self, ylabel: str, lines: list[Line], log_y: bool, x_max: int) -> None:
        """A log y axis is drawn as log10 of the values on a linear axis, its ticks labelled with the values:
        plotext's own log scale rewrites the data in place at each build, so a second render (any refresh)
        took the log of a log and failed."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("step")
        plt.ylabel(ylabel)
        plt.xlim(0, x_max)
        ticks = step_ticks(x_max)
        plt.xticks(ticks, [str(t) for t in ticks])
        scale = math.log10 if log_y else float
        values: list[float] = []
        final = None  # the last value of the last curve (val, usually): a log axis labels it
        for line in lines:
            xs, ys = finite(line.xs, line.ys)
            if xs:
                plt.plot(xs, [scale(y) for y in ys], marker="braille", color=line.color)  # the legend is above
                values += ys
                final = ys[-1] if line.color != REFERENCE_COLOR else final
        if not values:
            plt.text("waiting for the first points…", x=x_max / 2, y=0.5, alignment="center")
            plt.ylim(0, 1)
            plt.yticks([0, 1], [" " * Y_TICK_WIDTH] * 2)
        else:
            lo, hi = axis_limits(values, log_y)
            plt.ylim(scale(lo), scale(hi))
            # one tick per two data rows at most: two ticks on one row left plotext's choice between them to chance
            rows = self.size.height - PLOT_FRAME_ROWS
            y_ticks = value_ticks(lo, hi, log_y, count=5 if rows <= 0 else max(2, min(5, (rows + 1) // 2)))
            if log_y and final is not None:  # the nearest tick moves onto it: a log axis's round ticks are far apart
                nearest = min(range(len(y_ticks)), key=lambda i: abs(math.log(y_ticks[i] / final)))
                y_ticks[nearest] = final
            plt.yticks([scale(v) for v in y_ticks], [tick_label(v) for v in y_ticks])
        self.refresh()


PLOT_FRAME_ROWS = 4  # two frame lines, the x tick labels and the axis labels: the rest of a plot's rows hold data


def tick_label(value: float) -> str:
    """Three significant digits in a fixed width (small values such as learning rates in e-notation)."""
    if abs(value) < 1e-12:  # a zero that rounding left a sign or a speck on: never "-0" or "-1.0e-17"
        value = 0.0
    text = f"{value:.1e}" if 0 < abs(value) < 0.01 else f"{value:.3g}"
    return text.rjust(Y_TICK_WIDTH)


@dataclass
class Status:
    """What the status panel shows; None means "not known yet"."""

    run: str = "-"
    state: str = "-"
    backend: str = "-"
    device: str = "-"
    parameters: int | None = None
    vocab_size: int | None = None
    corpus: str = "-"
    tokenizer: str = "-"  # e.g. "bpe (512)"
    model: str = "-"
    batch: str = "-"
    step: int = 0
    max_iters: int = 0
    tokens_per_s: float | None = None
    lr: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    best_val_loss: float | None = None
    threads: str = "-"  # the CPU threads training runs on, and why (auto's measurement, or fixed)
    saved: str = "-"  # the last checkpoint written, e.g. "best @ 1500"
    note: str = ""

    @property
    def uniform_loss(self) -> float | None:
        """ln V: the loss of a model that guesses every token with equal probability."""
        return math.log(self.vocab_size) if self.vocab_size else None


def clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


LABEL_WIDTH = 9  # the longest row name: labels never shrink to "sta…" however long a value is


class StatusPanel(Static):
    def show(self, s: Status) -> None:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True, min_width=LABEL_WIDTH)
        grid.add_column(overflow="ellipsis", no_wrap=True, ratio=1)
        best = "-" if s.best_val_loss is None or not math.isfinite(s.best_val_loss) else f"{s.best_val_loss:.4f}"
        uniform = "-" if s.uniform_loss is None else f"{s.uniform_loss:.2f} (ln {s.vocab_size})"
        rows = [
            ("run", s.run), ("state", s.state), ("backend", s.backend), ("device", s.device),
            ("params", "-" if s.parameters is None else f"{s.parameters / 1e6:.3f}M"), ("model", s.model),
            ("tokenizer", s.tokenizer),
            ("batch", s.batch), ("corpus", s.corpus),
            ("step", f"{s.step} / {s.max_iters}"),
            ("tokens/s", "-" if s.tokens_per_s is None else f"{s.tokens_per_s:,.0f}"), ("threads", s.threads),
            ("lr", "-" if s.lr is None else f"{s.lr:.2e}"),
            ("elapsed", clock(s.elapsed_s)), ("ETA", clock(s.eta_s)), ("best val", best),
            ("guessing", uniform), ("saved", s.saved),
        ]
        for name, value in rows:
            grid.add_row(name, value)
        self.update(Group(grid, Text(f"\n{s.note}", style="dim")) if s.note else grid)


QUALITY, LEARNING_RATE, GRAD_NORM = "quality", "learning rate", "grad norm"
LOWER_PLOTS = (QUALITY, LEARNING_RATE, GRAD_NORM)  # what the lower plot shows, in the order `o` cycles
# the per-step lower plots: title, y label, and the Curves field they draw
PER_STEP_PLOTS = {LEARNING_RATE: ("learning rate", "lr", "lrs"),
                  GRAD_NORM: ("gradient norm (before clipping)", "norm", "grad_norms")}


@dataclass(frozen=True)
class RunFacts:
    """What comparing runs needs beyond their curves: the tokenizer, and what a step and a token are worth."""

    tokenizer: str  # "char" or "bpe"
    vocab_size: int
    tokens_per_step: int
    tokens_per_char: float

    @classmethod
    def of(cls, run: Run) -> RunFacts:
        return cls(run.config.tokenizer, run.tokenizer.vocab_size, run.config.tokens_per_step * run.world_size,
                   run.tokens_per_char)

    @property
    def guessing_loss(self) -> float:
        """ln V: the loss of a model that gives every token the same probability."""
        return math.log(self.vocab_size)

    @property
    def guessing_bpc(self) -> float:
        return bits_per_char(self.guessing_loss, self.tokens_per_char)


@dataclass
class Compared:
    """One run of a comparison (``minigpt-tui A B ...``)."""

    name: str
    curves: Curves
    facts: RunFacts
    steps: int
    elapsed_s: float | None

    @classmethod
    def of(cls, run: Run, metrics: Metrics) -> Compared:
        curves = Curves.from_metrics(metrics)
        return cls(run.path.name, curves, RunFacts.of(run), curves.last_step, metrics.elapsed_s)

    def best(self) -> tuple[float, float] | None:
        """(best val loss, the val bits/char of that evaluation), or None before the first evaluation."""
        c = self.curves
        kept = [(loss, bpc) for loss, bpc in zip(c.val_loss, c.val_bpc, strict=True) if math.isfinite(loss)]
        return min(kept) if kept else None


def comparison_table(runs: list[Compared]) -> Table:
    table = Table(box=None, padding=(0, 1), header_style="bold")
    for name in ("run", "best val", "bits/char", "tokens seen", "steps", "wall time", "tokenizer"):
        table.add_column(name, justify="left" if name in ("run", "tokenizer") else "right", no_wrap=True)
    for i, run in enumerate(runs):
        best = run.best()
        table.add_row(Text(run.name, style=f"color({PLOTEXT_COLOR_CODES[run_color(i)]})"),
                      "-" if best is None else f"{best[0]:.4f}", "-" if best is None else f"{best[1]:.3f}",
                      f"{run.steps * run.facts.tokens_per_step:,}", str(run.steps), clock(run.elapsed_s),
                      f"{run.facts.tokenizer} ({run.facts.vocab_size})")
    return table


class TrainingPane(Horizontal):
    """Curves on the left, status on the right; ``redraw`` is called a few times a second at most.

    ``comparisons`` holds other runs drawn over this one, each named in the legend; ``facts`` describes
    this run's tokenizer, for the comparison.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.curves = Curves()
        self.comparisons: list[Compared] = []
        self.facts: RunFacts | None = None
        self.status = Status()
        self.log_y = False
        self.show_perplexity = False
        self.lower_plot = QUALITY
        self.lower_drawn: tuple | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="plots"):
            yield Static("", id="loss-legend", classes="legend")
            yield CurvePlot(id="loss-plot")
            yield Static("", id="quality-legend", classes="legend")
            yield CurvePlot(id="quality-plot")
            yield Static("", id="compare-table")
        yield StatusPanel(id="status")

    def on_mount(self) -> None:
        self.redraw()

    def cycle_lower_plot(self) -> None:
        self.lower_plot = LOWER_PLOTS[(LOWER_PLOTS.index(self.lower_plot) + 1) % len(LOWER_PLOTS)]

    def x_max(self) -> int:
        """Both plots span the same steps: to the end of the run (or the furthest compared run)."""
        ends = [self.status.max_iters, self.curves.last_step] + [c.curves.last_step for c in self.comparisons]
        return max(1, *ends)

    def runs(self) -> list[Compared]:
        """This run (as the status shows it) and the compared ones."""
        facts = self.facts or RunFacts("char", self.status.vocab_size or 1, 0, 1.0)
        this = Compared(self.status.run, self.curves, facts, self.status.step, self.status.elapsed_s)
        return [this, *self.comparisons]

    def tokenizers_differ(self) -> bool:
        """Compared runs whose tokens differ: their losses per token are not comparable, bits per character are."""
        return len({(r.facts.tokenizer, r.facts.vocab_size) for r in self.runs()}) > 1

    def redraw(self) -> None:
        x_max = self.x_max()
        title, unit, lines = self.loss_lines(x_max)
        self.query_one("#loss-legend", Static).update(legend(title, lines))
        self.query_one("#loss-plot", CurvePlot).draw(unit, lines, self.log_y, x_max)
        # the lower plot's quality view only changes on an evaluation or a toggle: skip rebuilding it otherwise
        c = self.curves
        key = (id(c), len(c.eval_steps), len(c.steps) if self.lower_plot != QUALITY else 0, self.log_y,
               self.show_perplexity, self.lower_plot, x_max, len(self.comparisons))
        if key != self.lower_drawn:
            self.lower_drawn = key
            self.draw_lower(x_max)
        table = self.query_one("#compare-table", Static)
        table.display = bool(self.comparisons)
        if self.comparisons:
            table.update(comparison_table(self.runs()))
        self.query_one(StatusPanel).show(self.status)

    def loss_lines(self, x_max: int) -> tuple[str, str, list[Line]]:
        """The upper plot: its title, y unit and lines."""
        c = self.curves
        steps, losses = bucket_means(c.steps, c.losses)
        if not self.comparisons:
            lines = [Line("train (batch)", steps, losses, TRAIN_COLORS[0]),
                     Line("train (eval)", c.eval_steps, c.train_eval_loss, TRAIN_COLORS[1]),
                     Line("val", c.eval_steps, c.val_loss, TRAIN_COLORS[2])]
            uniform = self.status.uniform_loss
            if uniform is not None:  # the loss of guessing: a model that learned anything sits well below it
                lines.append(Line(f"guessing: ln {self.status.vocab_size}", [0, x_max], [uniform, uniform],
                                  REFERENCE_COLOR))
            return "loss", "nats/token", lines
        runs = self.runs()
        if self.tokenizers_differ():  # one val curve per run in bits per character, the measure they share
            lines = [Line(r.name, r.curves.eval_steps, r.curves.val_bpc, run_color(i)) for i, r in enumerate(runs)]
            guesses = {}
            for r in runs:
                guesses.setdefault(round(r.facts.guessing_bpc, 6), []).append(r.name)
            lines += [Line(f"guessing: {', '.join(names)}", [0, x_max], [value, value], REFERENCE_COLOR)
                      for value, names in guesses.items()]
            return "val bits/char (the runs' tokenizers differ: loss per token is not comparable)", "bits/char", lines
        # one validation curve per run, named by its run; this run's batch loss for context
        lines = [Line(f"{self.status.run} (batch)", steps, losses, TRAIN_COLORS[0])]
        lines += [Line(r.name, r.curves.eval_steps, r.curves.val_loss, run_color(i)) for i, r in enumerate(runs)]
        vocab = runs[0].facts.vocab_size
        lines.append(Line(f"guessing: ln {vocab} (every run)", [0, x_max], [math.log(vocab)] * 2, REFERENCE_COLOR))
        return "val loss", "nats/token", lines

    def draw_lower(self, x_max: int) -> None:
        runs = self.runs()
        if self.lower_plot in PER_STEP_PLOTS:
            title, unit, field_name = PER_STEP_PLOTS[self.lower_plot]
            lines = [Line(r.name if self.comparisons else self.lower_plot,
                          *bucket_means(r.curves.steps, getattr(r.curves, field_name)), run_color(i))
                     for i, r in enumerate(runs[: len(self.comparisons) + 1])]
        else:
            def quality(losses: list[float], bpc: list[float]) -> list[float]:
                return [perplexity(v) for v in losses] if self.show_perplexity else bpc

            if self.comparisons:
                lines = [Line(r.name, r.curves.eval_steps, quality(r.curves.val_loss, r.curves.val_bpc), run_color(i))
                         for i, r in enumerate(runs)]
            else:
                c = self.curves
                lines = [Line("train", c.eval_steps, quality(c.train_eval_loss, c.train_bpc), TRAIN_COLORS[1]),
                         Line("val", c.eval_steps, quality(c.val_loss, c.val_bpc), TRAIN_COLORS[2])]
            title, unit = ("perplexity", "perplexity") if self.show_perplexity else ("bits per character", "bits/char")
        self.query_one("#quality-legend", Static).update(legend(title, lines))
        self.query_one("#quality-plot", CurvePlot).draw(unit, lines, self.log_y, x_max)

    def show_status(self) -> None:
        self.query_one(StatusPanel).show(self.status)


def describe(status: Status, config: TrainConfig, vocab_size: int) -> None:
    """Fill the run's fixed facts: shape, batch, parameter count and vocabulary size."""
    c = config
    m = c.model
    status.model = f"{m.n_layer}L {m.n_head}H {m.n_embd}d ctx {m.block_size}"
    status.batch = f"{c.batch_size}×{c.grad_accum_steps}, lr {c.learning_rate:g}, {c.optim.optimizer}"
    status.parameters = count_parameters(c.with_vocab_size(vocab_size).model)
    status.vocab_size = vocab_size
    status.tokenizer = f"{c.tokenizer} ({vocab_size})"
    status.max_iters = c.max_iters


def status_from_metrics(run: Run, metrics: Metrics, checkpoint_step: int | None = None) -> Status:
    """The status of a run read from disk: its config, the last records of its metrics.jsonl and the step of
    its latest checkpoint (where continuing resumes; metrics log only every log_interval steps)."""
    c = run.config
    records, steps, evals = metrics.records, metrics.steps, metrics.evals
    logged = max((r.step for r in records), default=0)
    step = logged if checkpoint_step is None else checkpoint_step
    # runs made before the device was recorded say so, rather than print "auto" as a device
    device = run.device_used or (f"{c.device} (not recorded)" if c.device == "auto" else c.device)
    status = Status(run=run.path.name, backend=c.backend, device=device, corpus=Path(run.data_source).name,
                    step=step)
    describe(status, c, run.tokenizer.vocab_size)
    status.state = "finished" if step >= c.max_iters else ("not started" if not records else f"stopped at {step}")
    if steps:
        status.tokens_per_s = steps[-1].tokens_per_s
        status.lr = steps[-1].lr
    status.elapsed_s = metrics.elapsed_s
    if evals:
        status.best_val_loss = min(r.val_loss for r in evals)
    threads = [r for r in records if isinstance(r, ThreadsEvent)]
    if threads:
        status.threads = threads_label(threads[-1])
    return status


def threads_label(event: ThreadsEvent) -> str:
    """``2 (auto: start)``, ``1 (fixed)``: the count and what set it."""
    return f"{event.threads} (fixed)" if event.reason == "fixed" else f"{event.threads} (auto: {event.reason})"

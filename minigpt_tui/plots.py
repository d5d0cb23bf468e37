"""Charts of runs and experiments: PNG through matplotlib, text through plotext, same data for both.

Figures are built with ``matplotlib.figure.Figure`` (rendered by Agg on save) and plotext figure
instances, never the pyplot / plotext global state, so exporting from a TUI worker thread is safe.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import plotext
from matplotlib.figure import Figure
from plotext._figure import _figure_class as TextFigure

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write, atomic_write_text
from minigpt_tui.training.datasets import sha256
from minigpt_tui.training.events import EvalEvent, StepEvent
from minigpt_tui.training.runs import METRICS_FILE, read_metrics

PNG_DPI = 100
PNG_METADATA = {"Software": None}  # no version stamp: re-exporting the same data gives the same bytes
TEXT_SIZE = (78, 20)
TEXT_MARKERS = ("dot", "x", "+", "o", "*", "#", "@", "%")
# one colour per curve role in every chart, PNG and terminal alike (plotext names; PNG_COLORS for matplotlib)
BATCH_COLOR, TRAIN_COLOR, VAL_COLOR = "cyan", "green", "orange"
PNG_COLORS = {"cyan": "#17becf", "green": "#2ca02c", "orange": "#ff7f0e", "magenta": "#e377c2", "yellow": "#bcbd22",
              "red": "#d62728", "blue": "#1f77b4", "white": "#7f7f7f", "gray": "#7f7f7f"}


@dataclass(frozen=True)
class Series:
    label: str
    x: list[float]
    y: list[float]
    faint: bool = False  # context, like the per-step batch loss: drawn thin and transparent
    color: str | None = None  # a plotext colour name (PNG_COLORS maps it); None: the chart's colour cycle


@dataclass(frozen=True)
class Chart:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    logy: bool = False
    logx: bool = False
    vline: float | None = None  # a marked x position, e.g. the trained context length


@dataclass(frozen=True)
class RunCurves:
    label: str
    evals: list[EvalEvent]  # in step order
    steps: list[StepEvent]
    warning: str | None = None  # about damaged metrics lines that were skipped


def load_curves(run_dir: Path, label: str | None = None) -> RunCurves:
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise MiniGPTError(f"{run_dir} is not a run folder (no {METRICS_FILE})")
    metrics = read_metrics(run_dir / METRICS_FILE)
    if not metrics.evals:
        raise MiniGPTError(f"run {run_dir} has no evaluations yet: nothing to plot (train past the first eval)")
    return RunCurves(label or run_dir.name, metrics.evals, metrics.steps, metrics.warning(run_dir / METRICS_FILE))


def _column(records: list[StepEvent] | list[EvalEvent], name: str) -> tuple[list[float], list[float]]:
    """Steps and values of one field; a non-finite value (a diverged loss, an infinite perplexity) is a gap."""
    values = [float(getattr(r, name)) for r in records]
    return [r.step for r in records], [v if math.isfinite(v) else math.nan for v in values]


def _finite_points(series: Series) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(series.x, series.y, strict=True) if math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def run_charts(runs: list[RunCurves]) -> dict[str, Chart]:
    """The three standard charts of one or several runs, keyed by file-name suffix."""
    single = len(runs) == 1
    loss, ppl, bpc = [], [], []
    for run in runs:
        prefix = "" if single else f"{run.label} "
        # one run: train and val keep their role colours, as in the app; several: the colour cycle per series
        train, val = (TRAIN_COLOR, VAL_COLOR) if single else (None, None)
        if single and run.steps:
            loss.append(Series("train (batch)", *_column(run.steps, "loss"), faint=True, color=BATCH_COLOR))
        loss.append(Series(f"{prefix}train", *_column(run.evals, "train_loss"), color=train))
        loss.append(Series(f"{prefix}val", *_column(run.evals, "val_loss"), color=val))
        ppl.append(Series(f"{prefix}val", *_column(run.evals, "val_perplexity"), color=val))
        if single:
            bpc.append(Series("train", *_column(run.evals, "train_bits_per_char"), color=train))
        bpc.append(Series(f"{prefix}val", *_column(run.evals, "val_bits_per_char"), color=val))
    return {
        "loss": Chart("Cross-entropy loss", "step", "loss (nats/token)", loss),
        "perplexity": Chart("Validation perplexity", "step", "perplexity (per token, log scale)", ppl, logy=True),
        "bpc": Chart("Bits per character", "step", "bits/char", bpc),
    }


def wall_clock_chart(run_dirs: list[Path], labels: list[str] | None = None, target: float | None = None) -> Chart:
    """Val loss (the runs' own estimates) against seconds since each run's first evaluation: the
    speedrun's measure, where a faster step and a better step both count. ``target`` draws a level."""
    series = []
    for i, run_dir in enumerate(run_dirs):
        curves = load_curves(Path(run_dir), labels[i] if labels else None)
        start = curves.evals[0].time
        series.append(Series(curves.label, [r.time - start for r in curves.evals], [r.val_loss for r in curves.evals]))
    if target is not None and series:
        end = max(max(s.x) for s in series)
        series.append(Series(f"val {target}", [0.0, end], [target, target], faint=True))
    return Chart("Val loss vs wall-clock time", "seconds (evaluations included)", "val loss (nats/token)", series)


def save_png(chart: Chart, path: Path, size: tuple[float, float] = (7.0, 4.2)) -> Path:
    return write_png(chart_figure(chart, size), path)


def chart_figure(chart: Chart, size: tuple[float, float] = (7.0, 4.2)) -> Figure:
    """The chart as a matplotlib figure (not drawn yet)."""
    fig = Figure(figsize=size, dpi=PNG_DPI, layout="constrained")
    ax = fig.add_subplot()
    for s in chart.series:
        if s.faint:
            style = dict(linewidth=0.8, alpha=0.35)
        else:
            style = dict(linewidth=1.8, marker="o" if len(s.x) <= 12 else None, markersize=4)
        if s.color is not None:
            style["color"] = PNG_COLORS[s.color]
        ax.plot(s.x, s.y, label=s.label, **style)
    if chart.vline is not None:
        ax.axvline(chart.vline, color="grey", linestyle="--", linewidth=1)
    ax.set(title=chart.title, xlabel=chart.xlabel, ylabel=chart.ylabel)
    if chart.logy:
        ax.set_yscale("log")
        mark_final_values(ax, chart)
    if chart.logx:
        ax.set_xscale("log", base=2)
        xs = sorted({x for s in chart.series for x in s.x})
        if len(xs) <= 12:  # label the measured points (16, 32, ...) rather than powers of two
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def mark_final_values(ax, chart: Chart) -> None:
    """A log axis over a narrow range may have no labelled tick near the curves: label each final value."""
    finals = sorted({ys[-1] for s in chart.series if not s.faint for ys in [_finite_points(s)[1]] if ys})
    if finals:
        ax.set_yticks(finals, [f"{v:.3g}" for v in finals], minor=True)


def write_png(fig: Figure, path: Path, dpi: float | str = "figure") -> Path:
    """``fig`` as a PNG at ``path`` (written whole or not at all), its folder made if need be."""
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", metadata=PNG_METADATA, dpi=dpi))
    return path


def render_text(chart: Chart, size: tuple[int, int] = TEXT_SIZE, color: bool = False) -> str:
    """The chart as terminal text (plotext); without ``color`` one marker per series tells them apart."""
    fig = TextFigure()
    fig.plotsize(*size)
    fig.theme("clear")
    drawn = False
    for i, s in enumerate(chart.series):
        xs, ys = _finite_points(s)  # plotext has no gaps: a non-finite point is left out
        if s.faint or not xs:
            continue
        style = {"marker": "braille", "color": s.color} if color and s.color else {
            "marker": "braille" if color else TEXT_MARKERS[i % len(TEXT_MARKERS)]}
        fig.plot(xs, ys, label=s.label, **style)
        drawn = True
    if chart.vline is not None:
        fig.vertical_line(chart.vline)
    if chart.logy and drawn:  # a log axis over no finite point at all breaks plotext
        fig.yscale("log")
    fig.title(chart.title)
    fig.xlabel(chart.xlabel)
    fig.ylabel(chart.ylabel)
    try:
        text = fig.build()
    except (IndexError, ValueError, ZeroDivisionError) as exc:  # plotext fails on some degenerate inputs
        raise MiniGPTError(f"cannot draw the chart {chart.title!r} as text: {type(exc).__name__}: {exc}") from None
    return text if color else plotext.uncolorize(text)


def save_chart(chart: Chart, out: Path, stem: str) -> list[Path]:
    """``<stem>.png`` and ``<stem>.txt`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text_path = out / f"{stem}.txt"
    atomic_write_text(text_path, render_text(chart) + "\n")
    return [save_png(chart, out / f"{stem}.png"), text_path]


MAX_STEM = 120  # leaves room for "-perplexity.png" and the temporary file's prefix and suffix within NAME_MAX


def file_stem(labels: list[str]) -> str:
    """A deterministic, file-system-safe name for a set of runs, e.g. ``baseline`` or ``ctx16+ctx64``; one
    too long for a file name is cut and given a digest of the whole, so different sets still differ."""
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(labels)).lstrip(".") or "runs"
    if len(stem) > MAX_STEM:
        stem = f"{stem[:MAX_STEM - 13]}+{sha256(stem.encode())[:12]}"
    return stem


def export_wall_clock(run_dirs: list[Path], out: Path, name: str | None = None,
                      target: float | None = None) -> list[Path]:
    """The wall-clock chart of the runs as ``<name>-wall.png`` and ``.txt`` (name: the runs' file stem)."""
    chart = wall_clock_chart(run_dirs, target=target)
    return save_chart(chart, out, f"{name or file_stem([Path(d).name for d in run_dirs])}-wall")


def default_plots_dir(run_dirs: list[Path]) -> Path:
    """A run's own plots/ folder: exports never land in the repository's tracked visualizations/ by accident."""
    return Path(run_dirs[0]) / "plots"


def export_plots(
    run_dirs: list[Path], out: Path, name: str | None = None, on_warning: Callable[[str], None] | None = None
) -> list[Path]:
    """Loss, perplexity and bits/char of the runs (overlaid) as PNG and text; the paths written.

    ``on_warning`` hears about damaged metrics lines, which are skipped."""
    if not run_dirs:
        raise MiniGPTError("give at least one run folder")
    runs = [load_curves(Path(d)) for d in run_dirs]
    for run in runs:
        if run.warning and on_warning is not None:
            on_warning(run.warning)
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # two runs/<x>/baseline folders: tell them apart by their parent
        runs = [load_curves(Path(d), f"{Path(d).parent.name}/{Path(d).name}") for d in run_dirs]
        labels = [r.label for r in runs]
    stem = name or file_stem(labels)
    paths = []
    for suffix, chart in run_charts(runs).items():
        paths += save_chart(chart, out, f"{stem}-{suffix}")
    return paths


def save_sample_table(columns: list[tuple[str, str]], path: Path, width: int = 34, max_lines: int = 16) -> Path:
    """Side-by-side text samples as a PNG: one column per (heading, text), wrapped and cropped."""
    height = 0.155 * max_lines + 0.6  # inches: 8-point monospace lines, plus the headings
    fig = Figure(figsize=(max(4.0, 3.3 * len(columns)), height), dpi=PNG_DPI)
    for i, (heading, text) in enumerate(columns):
        x = (i + 0.04) / len(columns)
        fig.text(x, 1 - 0.1 / height, heading, fontsize=11, fontweight="bold", va="top")
        fig.text(x, 1 - 0.45 / height, wrap_sample(text, width, max_lines), fontsize=8, family="monospace", va="top")
    return write_png(fig, path)


def wrap_sample(text: str, width: int, max_lines: int) -> str:
    """Keep the sample's own line breaks, wrap long lines, crop to ``max_lines``."""
    lines = []
    for line in text.strip("\n").split("\n"):
        lines += textwrap.wrap(line, width) or [""]
    return "\n".join(lines[:max_lines])


def axis_limits(values: list[float], log: bool = False, pad: float = 0.05) -> tuple[float, float]:
    """A y range around ``values``; a single value gets a window around it instead of a sliver of rounding noise."""
    lo, hi = min(values), max(values)
    if log:
        if hi <= lo * 1.0001:
            return lo / 1.25, hi * 1.25
        ratio = (hi / lo) ** pad
        return lo / ratio, hi * ratio
    if hi - lo <= 1e-4 * max(1.0, abs(hi)):
        span = max(abs(hi) * 0.1, 0.1)
    else:
        span = (hi - lo) * pad
    # values that are never negative (a learning rate, a loss) get no negative tick
    return (max(lo - span, 0.0) if lo >= 0 else lo - span), hi + span


def step_ticks(x_max: int, count: int = 5) -> list[int]:
    """Whole-step ticks from 0 to ``x_max`` at a round interval (1, 2 or 5 times a power of ten)."""
    if x_max <= 1:
        return [0, 1]
    raw = x_max / (count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    interval = max(1, int(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)))
    return list(range(0, x_max + 1, interval))


def value_ticks(lo: float, hi: float, log: bool = False, count: int = 5) -> list[float]:
    """Evenly spaced y ticks (geometrically on a log axis) from ``lo`` to ``hi``."""
    if log:
        return [lo * (hi / lo) ** (i / (count - 1)) for i in range(count)]
    return [lo + (hi - lo) * i / (count - 1) for i in range(count)]

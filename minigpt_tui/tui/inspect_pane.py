"""The inspect view: a text drawn with each token's surprisal as its colour and the attention of
the cursor's position as the background; at the cursor, the next-token distribution as the sampling
settings reshape it, and every head of the chosen layer side by side.

The forward pass runs in a thread worker, over a copy of the training weights during training
(refreshed at each evaluation) or the run's latest checkpoint; everything after it (the
distribution under new settings, another head) is cheap and redrawn at once on the UI thread.

Causal controls: ``x`` knocks the selected head out (zero-ablation) and back in, and the text is read
again, so the chart and the surprisal colours show what the head was doing; the lens strip shows each
layer's top guess at the cursor; ``[`` and ``]`` step through the run's snapshots (its weights at every
evaluation) and back to the current weights.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from rich.style import Style
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input, Label, Static
from textual.worker import get_current_worker

from backends.base import HeadAblation
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.inspection.inspector import Inspection, NextTokens, excerpt, inspect_text
from minigpt_tui.inspection.lens import Unembedding, logit_lens
from minigpt_tui.inspection.text import CURSOR, attention_background, label, shown_inline, surprisal_color
from minigpt_tui.training.corpus import corpus_for_run
from minigpt_tui.training.data import split_text
from minigpt_tui.training.runs import model_at, snapshot_steps
from minigpt_tui.training.sampling import SamplingParams
from minigpt_tui.training.tokenizer import Tokenizer
from minigpt_tui.tui.fields import read_number
from minigpt_tui.tui.guarded_plot import GuardedPlot

EXCERPT_CONTEXTS = 4  # the default text is this many contexts of the validation split
# the chart's two bars per candidate, as plotext names them and as the same ANSI colours in rich
RAW_COLOR, SAMPLED_COLOR = "blue+", "orange+"
RAW_RICH, SAMPLED_RICH = "color(12)", "color(11)"


@dataclass
class InspectionReady(Message):
    """The worker read ``text`` with the weights named by ``source``."""

    text: str
    inspection: Inspection
    tokenizer: Tokenizer
    source: str
    unembedding: Unembedding | None = None  # the weights' final LayerNorm and head, for the lens strip


@dataclass
class InspectionFailed(Message):
    error: str


@dataclass
class CursorMoved(Message):
    position: int


class TokenText(Widget, can_focus=True):
    """The tokens, wrapped to the widget's width; foreground = surprisal, background = attention from
    the cursor. Arrow keys and clicks move the cursor; the rows around it are shown."""

    BINDINGS = [
        Binding("left", "move(-1)", "←", show=False),
        Binding("right", "move(1)", "→", show=False),
        Binding("up", "line(-1)", "↑", show=False),
        Binding("down", "line(1)", "↓", show=False),
        Binding("home", "jump(0)", show=False),
        Binding("end", "jump(-1)", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.inspection: Inspection | None = None
        self.weights: np.ndarray | None = None  # attention from the cursor, one entry per token
        self.cursor = 0
        self.rows: list[list[tuple[int, str]]] = []  # per screen row: (token, what is drawn)
        self.token_row: list[int] = []

    def show(self, inspection: Inspection, cursor: int, weights: np.ndarray) -> None:
        self.inspection, self.cursor, self.weights = inspection, cursor, weights
        self.refresh()

    def layout_rows(self, width: int) -> None:
        """Wrap the tokens to ``width`` columns; a newline token ends its row."""
        rows: list[list[tuple[int, str]]] = [[]]
        used = 0
        self.token_row = []
        for i, piece in enumerate(self.inspection.pieces):
            drawn = shown_inline(piece)
            if used + len(drawn) > width and rows[-1]:
                rows.append([])
                used = 0
            rows[-1].append((i, drawn))
            self.token_row.append(len(rows) - 1)
            used += len(drawn)
            if piece.endswith("\n"):
                rows.append([])
                used = 0
        self.rows = rows

    def first_row(self) -> int:
        height = max(1, self.content_size.height)
        centred = self.token_row[self.cursor] - height // 2
        return max(0, min(centred, len(self.rows) - height))

    def render(self) -> Text:
        if self.inspection is None:
            return Text("reading the text…", style="dim")
        self.layout_rows(max(1, self.content_size.width))
        peak = float(self.weights.max()) if self.weights is not None else 0.0
        surprisal = self.inspection.surprisal_bits
        text = Text(no_wrap=True, overflow="crop")
        top = self.first_row()
        for r, row in enumerate(self.rows[top : top + max(1, self.content_size.height)]):
            if r:
                text.append("\n")
            for i, drawn in row:
                background = attention_background(float(self.weights[i]), peak) if self.weights is not None else None
                style = Style(color=surprisal_color(float(surprisal[i])), bgcolor=background)
                text.append(drawn, style + CURSOR if i == self.cursor else style)
        return text

    def highlighted(self) -> dict[int, str]:
        """Token -> its attention background, for the tokens that have one (what the head looks at)."""
        if self.weights is None:
            return {}
        peak = float(self.weights.max())
        backgrounds = {i: attention_background(float(w), peak) for i, w in enumerate(self.weights)}
        return {i: color for i, color in backgrounds.items() if color is not None}

    def action_move(self, delta: int) -> None:
        if self.inspection is not None:
            self.post_message(CursorMoved(min(max(self.cursor + delta, 0), self.inspection.length - 1)))

    def action_jump(self, position: int) -> None:
        if self.inspection is not None:
            self.post_message(CursorMoved(position % self.inspection.length))

    def action_line(self, delta: int) -> None:
        """The token in the same column of the row above or below (the last one when that row is shorter)."""
        if self.inspection is None or not self.token_row:
            return
        row = self.token_row[self.cursor] + delta
        if not 0 <= row < len(self.rows) or not self.rows[row]:
            return
        column = self.column_of(self.cursor)
        target, start = self.rows[row][-1][0], 0
        for i, drawn in self.rows[row]:
            if start + len(drawn) > column:
                target = i
                break
            start += len(drawn)
        self.post_message(CursorMoved(target))

    def column_of(self, token: int) -> int:
        column = 0
        for i, drawn in self.rows[self.token_row[token]]:
            if i == token:
                return column
            column += len(drawn)
        return column

    def on_click(self, event: events.Click) -> None:
        if self.inspection is None or not self.rows:
            return
        self.focus()
        row = self.first_row() + event.y
        if not 0 <= row < len(self.rows):
            return
        column = 0
        for i, drawn in self.rows[row]:
            if column <= event.x < column + len(drawn):
                self.post_message(CursorMoved(i))
                return
            column += len(drawn)


class NextTokenChart(GuardedPlot):
    """The candidates' probability at T=1 beside the one sampling draws from, through this widget's ``plt``."""

    def draw(self, view: NextTokens | None) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if view is None:
            plt.title("next token")
        else:
            shown_count = max(3, min(len(view.candidates), (self.size.width - 8) // 5))
            candidates = view.candidates[:shown_count]
            names = [label(c.text) for c in candidates]
            plt.multiple_bar(names, [[c.probability for c in candidates], [c.sampled for c in candidates]],
                             color=[RAW_COLOR, SAMPLED_COLOR])
            # the axis fits the tallest bar: a flat distribution's small bars are still readable
            tallest = max(max(c.probability, c.sampled) for c in candidates)
            plt.ylim(0, min(1.0, max(0.05, tallest * 1.1)))
            plt.title(f"next token: H {view.entropy_bits:.2f} bits")
        self.refresh()


def head_strips(inspection: Inspection, layer: int, chosen: int, cursor: int, width: int,
                ablated: frozenset[tuple[int, int]] = frozenset()) -> Text:
    """Every head of ``layer``: the tokens before the cursor with that head's attention as background
    (a knocked-out head is marked ✗: its attention is still drawn, its output no longer counts)."""
    text = Text(f"layer {layer}, every head from the cursor:", style="dim")
    first = cursor
    used = len(shown_inline(inspection.pieces[cursor]))
    while first > 0 and used + len(shown_inline(inspection.pieces[first - 1])) <= width - 4:
        first -= 1
        used += len(shown_inline(inspection.pieces[first]))
    for head in range(inspection.n_head):
        weights = inspection.attention[layer, head, cursor]
        peak = float(weights.max())
        mark = "✗" if (layer, head) in ablated else " "
        text.append(f"\n{'▶' if head == chosen else ' '}H{head}{mark}", style="bold" if head == chosen else "dim")
        for i in range(first, cursor + 1):
            background = attention_background(float(weights[i]), peak)
            drawn = shown_inline(inspection.pieces[i])
            text.append(drawn, CURSOR if i == cursor else Style(bgcolor=background))
    return text


def lens_strip(lens_depths: list[NextTokens]) -> Text:
    """Each depth's top guess at the cursor: E (the embedding alone), then after each block."""
    text = Text("lens", style="dim")
    for depth, view in enumerate(lens_depths):
        top = view.candidates[0]
        text.append(f" {'E' if depth == 0 else f'B{depth - 1}'}:", style="dim")
        text.append(label(top.text), style="bold")
        text.append(f"{top.probability:.2f}".removeprefix("0"))
    return text


def steps_strip(steps: list[int], shown: int | None, width: int) -> Text:
    """A slider over the snapshots: a track with the shown one marked, and where it sits."""
    if not steps:
        return Text("snapshots: none (train with --snapshots to scrub through training)", style="dim")
    stops = len(steps) + 1  # every snapshot, then the current weights
    index = steps.index(shown) if shown in steps else stops - 1
    track = max(4, min(stops * 2, width - 34))
    knob = round(index / max(1, stops - 1) * (track - 1))
    where = f"step {shown}" if shown is not None else "current weights"
    return Text.assemble(("[ ", "dim"), "━" * knob, ("●", "bold"), "━" * (track - 1 - knob), (" ]", "dim"),
                         f" {where} · snapshots {steps[0]}..{steps[-1]}")


class InspectPane(Vertical):
    """Controls on top; the text and the heads on the left, the next-token chart on the right."""

    BINDINGS = [
        Binding("x", "toggle_head", "Head off/on"),
        Binding("left_square_bracket", "step(-1)", "Earlier", key_display="["),
        Binding("right_square_bracket", "step(1)", "Later", key_display="]"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.inspection: Inspection | None = None
        self.tokenizer: Tokenizer | None = None
        self.inspected_text: str | None = None
        self.model = None  # (backend, tokenizer, source) the worker reads with; None: load on next read
        self.source = "-"
        self.cursor = 0
        self.params = SamplingParams(1.0)
        self.attn_layer = self.attn_head = 0
        self.view: NextTokens | None = None
        self.ablated: set[tuple[int, int]] = set()  # (layer, head) knocked out
        self.snapshot: int | None = None  # the snapshot step shown; None: the current weights
        self.unembedding: Unembedding | None = None
        self.stale = True  # the weights changed since the last read
        # a superseded worker thread may still be running: one forward at a time over the shared backend
        self.read_lock = threading.Lock()

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("text")
            yield Input("", placeholder="text to inspect (empty: from the validation split)", compact=True,
                        id="inspect-text")
        with Horizontal(classes="row"):
            yield Label("temp")
            yield Input("1.0", type="number", compact=True, id="inspect-temperature")
            yield Label("top-k")
            yield Input("", type="integer", placeholder="all", compact=True, id="inspect-top-k")
            yield Label("top-p")
            yield Input("", type="number", placeholder="1.0", compact=True, id="inspect-top-p")
            yield Label("layer")
            yield Input("0", type="integer", compact=True, id="inspect-layer")
            yield Label("head")
            yield Input("0", type="integer", compact=True, id="inspect-head")
        yield Static("weights: -", id="inspect-status")
        with Horizontal(id="inspect-body"):
            with Vertical(id="inspect-left"):
                yield TokenText(id="inspect-tokens")
                yield Static("", id="inspect-heads")
                yield Static("", id="inspect-lens")
                yield Static("", id="inspect-steps")
            with Vertical(id="inspect-side"):
                yield NextTokenChart(id="inspect-chart")
                yield Static("", id="inspect-summary")

    # ---- reading the text (worker)

    def on_show(self) -> None:
        if self.stale:
            self.read()

    def weights_changed(self, visible: bool) -> None:
        """New weights (an evaluation, another run): read again now if on screen, else when shown."""
        self.model = None
        self.stale = True
        if visible:
            self.read()

    def read(self) -> None:
        self.stale = False
        self.read_worker(self.query_one("#inspect-text", Input).value.replace("\\n", "\n"), self.model is None,
                         self.snapshot, frozenset(self.ablated))

    def load_weights(self, step: int | None):
        """(backend, tokenizer, description) of the snapshot at ``step``, or the app's current weights."""
        if step is None:
            return self.app.current_model()
        run = self.app.run_info
        backend, _ = model_at(run, step=step)
        return backend, run.tokenizer, f"snapshot (step {step})"

    @work(thread=True, exclusive=True, group="inspection", exit_on_error=False)
    def read_worker(self, text: str, reload: bool, step: int | None = None,
                    ablated: frozenset[tuple[int, int]] = frozenset()) -> None:
        worker = get_current_worker()
        try:
            with self.read_lock:
                if worker.is_cancelled:
                    return
                if reload or self.model is None:
                    self.model = self.load_weights(step)
                backend, tokenizer, source = self.model
                self.app.limit_threads(backend)
                if not text:
                    val_text = split_text(corpus_for_run(self.app.run_info, None, None).text)[1]
                    text = excerpt(val_text, EXCERPT_CONTEXTS * backend.config.block_size)
                inspection = inspect_text(backend, tokenizer, text, head_ablation(backend.config, ablated))
                unembedding = Unembedding.of(backend)
        except MiniGPTError as exc:
            self.post_message(InspectionFailed(str(exc)))
            return
        if not worker.is_cancelled:
            self.post_message(InspectionReady(text, inspection, tokenizer, source, unembedding))

    @on(InspectionReady)
    def inspection_ready(self, message: InspectionReady) -> None:
        message.stop()
        same_text = message.text == self.inspected_text
        self.inspection, self.tokenizer, self.source = message.inspection, message.tokenizer, message.source
        self.unembedding = message.unembedding
        self.inspected_text = message.text
        field = self.query_one("#inspect-text", Input)
        if not field.value:
            with field.prevent(Input.Changed):
                field.value = message.text.replace("\n", "\\n")
        length = self.inspection.length
        self.cursor = min(self.cursor, length - 1) if same_text else length - 1
        self.attn_layer = min(self.attn_layer, self.inspection.n_layer - 1)
        self.attn_head = min(self.attn_head, self.inspection.n_head - 1)
        self.redraw()

    @on(InspectionFailed)
    def inspection_failed(self, message: InspectionFailed) -> None:
        message.stop()
        self.show_status(f"error: {message.error}", error=True)

    # ---- controls (UI thread: cheap)

    @on(Input.Changed, "#inspect-text")
    def text_changed(self) -> None:
        self.read()

    @on(Input.Changed, "#inspect-temperature, #inspect-top-k, #inspect-top-p, #inspect-layer, #inspect-head")
    def settings_changed(self) -> None:
        try:
            self.params = SamplingParams(self.number("inspect-temperature", float, 1.0),
                                         self.number("inspect-top-k", int, None),
                                         self.number("inspect-top-p", float, None))
            layer, head = self.number("inspect-layer", int, 0), self.number("inspect-head", int, 0)
            if self.inspection is not None:
                self.inspection.check_head(layer, head)
        except MiniGPTError as exc:
            self.show_status(f"error: {exc}", error=True)
            return
        self.attn_layer, self.attn_head = layer, head
        self.redraw()

    def action_toggle_head(self) -> None:
        """Knock the selected head out, or back in, and read the text again."""
        head = (self.attn_layer, self.attn_head)
        self.ablated ^= {head}
        self.read()

    def action_step(self, delta: int) -> None:
        """The previous or next snapshot (after the last: the current weights again)."""
        steps = snapshot_steps(self.app.run_info) if self.app.run_info is not None else []
        if not steps:
            self.show_status("no snapshots in this run: train with --snapshots to scrub through training", error=True)
            return
        stops: list[int | None] = [*steps, None]
        index = stops.index(self.snapshot) if self.snapshot in stops else len(stops) - 1
        self.snapshot = stops[min(max(index + delta, 0), len(stops) - 1)]
        self.model = None
        self.read()

    def number(self, widget_id: str, kind: type, default):
        return read_number(self, widget_id, kind, default, widget_id.removeprefix("inspect-"))

    @on(CursorMoved)
    def cursor_moved(self, message: CursorMoved) -> None:
        message.stop()
        self.cursor = message.position
        self.redraw()

    # ---- drawing

    def redraw(self) -> None:
        inspection = self.inspection
        if inspection is None:
            return
        self.view = inspection.next_tokens(self.cursor, self.params, self.tokenizer)
        weights = inspection.attention_from(self.cursor, self.attn_layer, self.attn_head)
        self.query_one(TokenText).show(inspection, self.cursor, weights)
        heads = self.query_one("#inspect-heads", Static)
        heads.update(head_strips(inspection, self.attn_layer, self.attn_head, self.cursor, max(8, heads.size.width),
                                 frozenset(self.ablated)))
        if self.unembedding is not None:
            lens = logit_lens(self.unembedding, inspection, self.cursor, self.tokenizer, k=1)
            self.query_one("#inspect-lens", Static).update(lens_strip(lens.depths))
        steps = snapshot_steps(self.app.run_info) if self.app.run_info is not None else []
        self.query_one("#inspect-steps", Static).update(steps_strip(steps, self.snapshot,
                                                                    max(8, heads.size.width)))
        self.query_one(NextTokenChart).draw(self.view)
        v = self.view
        actual = ""
        if v.actual is not None:
            actual = f"; actual '{label(self.tokenizer.decode([v.actual]))}' p={v.actual_probability:.2f}"
        summary = Text.assemble(("■", RAW_RICH), " T=1 ", ("■", SAMPLED_RICH),
                                f" sampled: kept {v.kept} ({v.kept_mass:.0%} of the mass), H {v.entropy_bits:.2f} "
                                f"bits ({v.entropy_bits_raw:.2f} at T=1){actual}")
        self.query_one("#inspect-summary", Static).update(summary)
        piece = label(inspection.pieces[self.cursor])
        bits = inspection.surprisal_bits[self.cursor]
        surprise = "" if np.isnan(bits) else f", {bits:.1f} bits"
        knocked_out = f" · off: {' '.join(f'L{la}H{h}' for la, h in sorted(self.ablated))}" if self.ablated else ""
        self.show_status(f"weights: {self.source} · cursor {self.cursor} '{piece}'{surprise} · "
                         f"L{self.attn_layer} H{self.attn_head}{knocked_out}")

    def show_status(self, text: str, error: bool = False) -> None:
        self.query_one("#inspect-status", Static).update(Text(text, style="bold red" if error else ""))


def head_ablation(config, ablated: frozenset[tuple[int, int]]) -> HeadAblation | None:
    """Zero-ablation of the ``ablated`` heads that exist in a model of ``config`` (None: none)."""
    mask = np.zeros((config.n_layer, config.n_head), bool)
    for layer, head in ablated:
        if layer < config.n_layer and head < config.n_head:
            mask[layer, head] = True
    return HeadAblation(mask) if mask.any() else None

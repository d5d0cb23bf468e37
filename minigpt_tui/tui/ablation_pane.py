"""The temperature ablation view: one row per temperature, coherence next to diversity."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Static

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.temperature import (
    TemperatureRow,
    degenerate_cell,
    parse_temperatures,
    ratio_cell,
    sample_heading,
    shown_sample,
)
from minigpt_tui.tui.messages import AblationRequest, SaveAblation

COLUMNS = ("T", "NLL/tok", "degenerate", "dist-1", "dist-2", "dist-3", "repeats", "known words", "entropy", "sample")
EXCERPT = 60  # characters of the first sample shown in the table


def excerpt(text: str, width: int = EXCERPT) -> str:
    flat = " ⏎ ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class AblationPane(Vertical):
    BINDINGS = [Binding("escape", "app.stop_generation", "Stop"), Binding("ctrl+s", "save", "Save table")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[TemperatureRow] = []
        self.source = ""  # the weights the rows were sampled from

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("temperatures")
            yield Input("0.5, 1.0, 1.5", compact=True, id="temperatures")
            yield Label("samples")
            yield Input("3", type="integer", compact=True, id="samples")
            yield Label("length")
            yield Input("200", type="integer", compact=True, id="ablation-length")
            yield Button("Run", variant="primary", compact=True, id="run-ablation")
            yield Button("Save", compact=True, id="save-ablation",
                         tooltip="Save the table and samples to RUN_DIR/ablations (Ctrl+S)")
        yield Static("NLL/tok: how surprising the sample is to the model (coherence, lower is surer); degenerate: "
                     "blank or looping samples, left out of the rest; dist-n: share of distinct word n-grams "
                     "(diversity); repeats: word bigrams repeated within a sample; known words: share found in the "
                     "training text.",
                     id="ablation-help")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="ablation-table")
        yield Static("", id="ablation-sample")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)

    @on(Input.Submitted)
    @on(Button.Pressed, "#run-ablation")
    def request(self) -> None:
        try:
            temperatures = parse_temperatures(self.query_one("#temperatures", Input).value)
            samples = int(self.query_one("#samples", Input).value or 0)
            length = int(self.query_one("#ablation-length", Input).value or 0)
        except (MiniGPTError, ValueError) as exc:
            self.app.notify(str(exc), severity="error")
            return
        if samples < 1 or length < 1:
            self.app.notify("samples and length must be at least 1", severity="error")
            return
        self.post_message(AblationRequest(temperatures, samples, length))

    @on(Button.Pressed, "#save-ablation")
    def action_save(self) -> None:
        self.post_message(SaveAblation(list(self.rows), self.source))

    def started(self, source: str) -> None:
        self.rows = []
        self.source = source
        self.query_one(DataTable).clear()
        self.query_one("#ablation-sample", Static).update(f"sampling from {source}…")
        self.query_one("#run-ablation", Button).disabled = True

    def add_row(self, row: TemperatureRow) -> None:
        self.rows.append(row)
        self.query_one(DataTable).add_row(
            f"{row.temperature:g}", f"{row.mean_nll:.3f}", degenerate_cell(row), ratio_cell(row.distinct_1),
            ratio_cell(row.distinct_2), ratio_cell(row.distinct_3), ratio_cell(row.repeated_ngram_rate, True),
            ratio_cell(row.known_word_share, True), f"{row.mean_entropy:.2f}",
            excerpt(shown_sample(row.samples[0])) if row.samples else "")

    def finished(self, note: str, source: str = "") -> None:
        self.source = source or self.source
        self.query_one("#run-ablation", Button).disabled = False
        self.query_one("#ablation-sample", Static).update(note)

    @on(DataTable.RowHighlighted)
    def show_sample(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self.rows):
            row = self.rows[event.cursor_row]
            text = f"[b]{sample_heading(row)}[/b]\n{shown_sample(row.samples[0])}"
            self.query_one("#ablation-sample", Static).update(text)

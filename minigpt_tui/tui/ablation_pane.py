"""The temperature ablation view: one row per temperature, coherence next to diversity."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Static

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.keepsakes import AblationRecipe
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
    BINDINGS = [Binding("escape", "app.stop_generation", "Stop"), Binding("ctrl+s", "save", "Save table"),
                Binding("left_square_bracket", "page(-1)", "Prev sample", key_display="["),
                Binding("right_square_bracket", "page(1)", "Next sample", key_display="]")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[TemperatureRow] = []
        self.recipe: AblationRecipe | None = None  # the weights, prompt and seeds the rows were sampled with
        self.shown_row = self.shown_sample = 0  # the sample below the table: which temperature, which of its samples

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("temperatures")
            yield Input("0.5, 1.0, 1.5", compact=True, id="temperatures")
            yield Label("samples")
            yield Input("3", type="integer", compact=True, id="samples")
            yield Label("length")
            yield Input("200", type="integer", compact=True, id="ablation-length")
            yield Button("Run", variant="primary", compact=True, id="run-ablation")
            yield Button("Stop", compact=True, id="stop-ablation", disabled=True)
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

    @on(Button.Pressed, "#stop-ablation")
    def stop_pressed(self) -> None:
        self.app.run_action("stop_generation")

    @on(Button.Pressed, "#save-ablation")
    def action_save(self) -> None:
        self.post_message(SaveAblation(list(self.rows), self.recipe))

    def started(self, source: str) -> None:
        self.rows = []
        self.recipe = None
        self.query_one(DataTable).clear()
        self.query_one("#ablation-sample", Static).update(f"sampling from {source}…")
        self.query_one("#run-ablation", Button).disabled = True
        self.query_one("#stop-ablation", Button).disabled = False
        self.query_one(DataTable).focus()  # the arrows go through the rows as they arrive, [ ] through the samples

    def add_row(self, row: TemperatureRow) -> None:
        self.rows.append(row)
        self.query_one(DataTable).add_row(
            f"{row.temperature:g}", f"{row.mean_nll:.3f}", degenerate_cell(row), ratio_cell(row.distinct_1),
            ratio_cell(row.distinct_2), ratio_cell(row.distinct_3), ratio_cell(row.repeated_ngram_rate, True),
            ratio_cell(row.known_word_share, True), f"{row.mean_entropy:.2f}",
            excerpt(shown_sample(row.samples[0])) if row.samples else "")

    def finished(self, note: str, recipe: AblationRecipe | None = None) -> None:
        self.recipe = recipe or self.recipe
        self.query_one("#run-ablation", Button).disabled = False
        self.query_one("#stop-ablation", Button).disabled = True
        if self.rows:  # the highlighted temperature's sample stays in view, the note above it
            self.show_sample(min(self.shown_row, len(self.rows) - 1), self.shown_sample, note)
        else:
            self.query_one("#ablation-sample", Static).update(note)

    @on(DataTable.RowHighlighted)
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_sample(event.cursor_row, 0)

    def action_page(self, delta: int) -> None:
        """The previous or next sample of the highlighted temperature, on into the neighbouring temperatures."""
        if not self.rows:
            return
        flat = [(r, i) for r, row in enumerate(self.rows) for i in range(len(row.samples))]
        if not flat:
            return
        here = flat.index((self.shown_row, self.shown_sample)) if (self.shown_row, self.shown_sample) in flat else 0
        row, sample = flat[(here + delta) % len(flat)]
        table = self.query_one(DataTable)
        if row != table.cursor_row:
            with self.prevent(DataTable.RowHighlighted):
                table.move_cursor(row=row)
        self.show_sample(row, sample)

    def show_sample(self, row_index: int, sample: int, note: str = "") -> None:
        if not 0 <= row_index < len(self.rows) or not 0 <= sample < len(self.rows[row_index].samples):
            return
        row = self.rows[row_index]
        self.shown_row, self.shown_sample = row_index, sample
        self.query_one("#ablation-sample", Static).update(
            Text.assemble((f"{note}\n" if note else "", "dim"), (sample_heading(row, sample), "bold"),
                          f"  sample {sample + 1} of {len(row.samples)}",
                          (" ([ ] page through every sample)", "dim"), f"\n{shown_sample(row.samples[sample])}"))

"""The small dialog `c` opens: how many more steps to train the run on screen."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static


class ContinueDialog(ModalScreen[int | None]):
    """Dismissed with the number of extra steps, or None on Escape."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, run: str, done: int, suggested: int) -> None:
        super().__init__()
        self.run, self.done, self.suggested = run, done, suggested

    def compose(self) -> ComposeResult:
        with Vertical(id="continue-dialog"):
            yield Label(f"Continue [b]{self.run}[/b] from step {self.done} for how many more steps?")
            yield Input(str(self.suggested), type="integer", compact=True, id="extra-steps")
            yield Static("Enter starts, Escape cancels. Past the end of its cosine the learning rate stays at "
                         "min_lr.", id="continue-help")
            yield Static("", id="continue-error")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text.isdigit() or int(text) < 1:
            self.query_one("#continue-error", Static).update("✗ a whole number of steps, at least 1")
            return
        self.dismiss(int(text))

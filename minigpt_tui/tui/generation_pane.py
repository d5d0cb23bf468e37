"""The generation view: a prompt, the sampling knobs, and the text as it streams in."""

from __future__ import annotations

from functools import partial

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static, TextArea

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.keepsakes import SampleRecipe
from minigpt_tui.training.sampling import DEFAULT_TEMPERATURE, SamplingParams
from minigpt_tui.tui.fields import read_number
from minigpt_tui.tui.messages import GenerateRequest, SaveSample


class GenerationPane(Vertical):
    BINDINGS = [Binding("escape", "app.stop_generation", "Stop sampling"), Binding("ctrl+s", "save", "Save sample")]
    source = "weights: -"
    recipe: SampleRecipe | None = None  # what made the text on screen

    def compose(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("prompt")
            yield Input("", placeholder="text to continue (empty: a newline)", compact=True, id="prompt")
            yield Button("Generate", variant="primary", compact=True, id="generate")
            yield Button("Stop", compact=True, id="stop-generation", disabled=True)
            yield Button("Save", compact=True, id="save-sample", tooltip="Save the text to RUN_DIR/samples (Ctrl+S)")
        with Horizontal(classes="row"):
            yield Label("temp")
            # empty means the placeholder: the default temperature, top-k/top-p off, a random seed
            yield Input("", type="number", placeholder=f"{DEFAULT_TEMPERATURE:g}", valid_empty=True, compact=True,
                        id="temperature")
            yield Label("top-k")
            yield Input("", type="integer", placeholder="all", valid_empty=True, compact=True, id="top-k")
            yield Label("top-p")
            yield Input("", type="number", placeholder="1.0", valid_empty=True, compact=True, id="top-p")
            yield Label("length")
            yield Input("300", type="integer", compact=True, id="length")
            yield Label("seed")
            yield Input("", type="integer", placeholder="random", valid_empty=True, compact=True, id="seed")
        yield Static("weights: -", id="generation-source")
        yield TextArea("", read_only=True, soft_wrap=True, id="generation-output")

    @on(Input.Submitted)
    @on(Button.Pressed, "#generate")
    def request(self) -> None:
        try:
            request = self.read_request()
        except MiniGPTError as exc:
            self.app.notify(str(exc), severity="error")
            return
        self.post_message(request)

    @on(Button.Pressed, "#stop-generation")
    def stop_pressed(self) -> None:
        self.app.run_action("stop_generation")

    @on(Button.Pressed, "#save-sample")
    def action_save(self) -> None:
        self.post_message(SaveSample(self.query_one("#generation-output", TextArea).text, self.recipe))

    def read_request(self) -> GenerateRequest:
        number = partial(read_number, self)
        length = number("length", int, 300)
        if length < 1:
            raise MiniGPTError(f"length must be at least 1, got {length}")
        params = SamplingParams(number("temperature", float, DEFAULT_TEMPERATURE), number("top-k", int, None),
                                number("top-p", float, None))
        prompt = self.query_one("#prompt", Input).value.replace("\\n", "\n") or "\n"
        return GenerateRequest(prompt, params, length, number("seed", int, None))

    def started(self, recipe: SampleRecipe) -> None:
        self.recipe = recipe
        self.source = f"weights: {recipe.source} · seed {recipe.seed}"
        self.query_one("#generation-source", Static).update(self.source)
        output = self.query_one("#generation-output", TextArea)
        output.text = recipe.prompt
        self.set_running(True)

    def append(self, text: str) -> None:
        output = self.query_one("#generation-output", TextArea)
        output.insert(text, output.document.end)
        output.scroll_end(animate=False)

    def finished(self, summary: str) -> None:
        self.query_one("#generation-source", Static).update(f"{self.source}  ·  {summary}")
        self.set_running(False)

    def set_running(self, running: bool) -> None:
        self.query_one("#generate", Button).disabled = running
        self.query_one("#stop-generation", Button).disabled = not running

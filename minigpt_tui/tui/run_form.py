"""The new-run form: corpus, preset, backend, device and the key hyper-parameters, validated as you type."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.widgets import Button, Input, Label, Select, Static

from backends import available_backends
from backends.base import OPTIMIZERS
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.config import PRESETS, TOKENIZERS, TrainConfig, build_config, field_type
from minigpt_tui.training.data import read_corpus
from minigpt_tui.training.datasets import load_dataset
from minigpt_tui.training.runs import holds_checkpoints
from minigpt_tui.training.threads import AUTO, parse_threads
from minigpt_tui.tui.messages import StartRun

CUSTOM = "custom"  # the preset shown when the app was handed a ready config
FROM_PATH = "path"
CORPORA = [("tiny Shakespeare", "shakespeare"), ("Python docs", "python-docs"), ("a file or folder", FROM_PATH)]
DEVICES = ("auto", "cpu", "cuda", "mps")
CHOICES = ("backend", "device", "tokenizer", "optimizer")  # the fields chosen from a list
# the hyper-parameters the form exposes; everything else comes from the preset
FIELDS = ("max_iters", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "learning_rate", "dropout",
          "eval_interval", "seed")


class RunForm(VerticalScroll):
    """Posts ``StartRun`` on Enter (or the Start button) once everything validates."""

    def __init__(self, *, config: TrainConfig | None = None, data: Path | None = None, dataset: str | None = None,
                 out: Path | None = None, threads: int | str = AUTO, id: str | None = None) -> None:
        super().__init__(id=id)
        self.initial_threads = str(threads)
        self.presets = {name: dict(values) for name, values in PRESETS.items()}
        if config is not None:
            self.presets[CUSTOM] = config.to_flat()
        self.initial_preset = CUSTOM if config is not None else "baby"
        self.initial_corpus = FROM_PATH if data is not None else (dataset or "shakespeare")
        self.initial_path = str(data) if data is not None else ""
        self.initial_out = str(out) if out is not None else ""

    def compose(self) -> ComposeResult:
        yield Static("[b]New training run[/b]  Enter starts it; every field is checked as you type.", classes="title")
        with Grid(id="form-grid"):
            yield Label("corpus")
            yield Select(CORPORA, value=self.initial_corpus, allow_blank=False, compact=True, id="corpus")
            yield Label("path")
            yield Input(self.initial_path, placeholder="file or folder of .txt", compact=True, id="path")
            yield Label("preset")
            yield Select([(name, name) for name in self.presets], value=self.initial_preset, allow_blank=False,
                         compact=True, id="preset")
            yield Label("backend")
            yield self.choice("backend", available_backends(), "torch")
            yield Label("device")
            yield self.choice("device", DEVICES, "auto")
            yield Label("tokenizer")
            yield self.choice("tokenizer", TOKENIZERS, "char")
            yield Label("vocab_size")
            yield Input(self.preset_value(self.initial_preset, "vocab_size"), compact=True, id="vocab_size",
                        type="integer", tooltip="BPE only: the vocabulary to learn (a character one is the alphabet)")
            yield Label("optimizer")
            yield self.choice("optimizer", OPTIMIZERS, "adamw")
            yield Label("run folder")
            yield Input(self.initial_out, placeholder="runs/<timestamp>", compact=True, id="out")
            yield Label("threads")
            yield Input(self.initial_threads, placeholder="auto or a count", compact=True, id="threads")
            for name in FIELDS:
                yield Label(name)
                yield Input(self.preset_value(self.initial_preset, name), compact=True, id=name,
                            type="integer" if field_type(name) is int else "number")
        yield Static("", id="form-error")
        with Horizontal(id="form-buttons"):
            yield Button("Start training", variant="primary", id="start")

    def choice(self, name: str, options, default: str) -> Select:
        """A select over ``options`` that also offers the value handed in (``cuda:1``, a plugin backend)."""
        value = self.presets[self.initial_preset].get(name, default)
        names = list(dict.fromkeys([*options, value]))
        return Select([(option, option) for option in names], value=value, allow_blank=False, compact=True, id=name)

    def preset_value(self, preset: str, name: str) -> str:
        value = self.presets[preset].get(name, TrainConfig().get(name))
        return repr(value) if isinstance(value, float) else str(value)

    def on_mount(self) -> None:
        self.query_one("#path", Input).disabled = self.initial_corpus != FROM_PATH
        self.query_one("#vocab_size", Input).disabled = self.query_one("#tokenizer", Select).value != "bpe"
        self.validate()
        self.query_one("#start", Button).focus()  # Enter starts a run straight away

    @on(Select.Changed, "#preset")
    def preset_changed(self, event: Select.Changed) -> None:
        preset = str(event.value)
        for name in (*FIELDS, "vocab_size"):
            self.query_one(f"#{name}", Input).value = self.preset_value(preset, name)
        for name in ("tokenizer", "optimizer"):  # a preset's own (speedrun: Muon) come with it; backend and device stay
            self.query_one(f"#{name}", Select).value = self.presets[preset].get(name, TrainConfig().get(name))

    @on(Select.Changed, "#tokenizer")
    def tokenizer_changed(self, event: Select.Changed) -> None:
        self.query_one("#vocab_size", Input).disabled = event.value != "bpe"
        self.validate()

    @on(Select.Changed, "#corpus")
    def corpus_changed(self, event: Select.Changed) -> None:
        self.query_one("#path", Input).disabled = event.value != FROM_PATH
        self.validate()

    @on(Input.Changed)
    @on(Select.Changed, "#backend, #device, #optimizer")
    def fields_changed(self) -> None:
        self.validate()

    @on(Input.Submitted)
    @on(Button.Pressed, "#start")
    def submit(self) -> None:
        config = self.validate()
        if config is None:
            return
        corpus_choice = self.query_one("#corpus", Select).value
        if corpus_choice == FROM_PATH:
            try:
                corpus = read_corpus(Path(self.query_one("#path", Input).value.strip()))
            except MiniGPTError as exc:
                self.show_error(str(exc))
                return

            def load_corpus():
                return corpus
        else:
            def load_corpus():
                return load_dataset(str(corpus_choice))
        out = self.query_one("#out", Input).value.strip()
        threads = parse_threads(self.query_one("#threads", Input).value)  # validate() checked it
        self.post_message(StartRun(config, load_corpus, Path(out) if out else None, threads))

    def validate(self) -> TrainConfig | None:
        """The config the form describes, or None with the problem shown under the fields."""
        overrides = {name: self.query_one(f"#{name}", Select).value for name in CHOICES}
        problems = []
        fields = (*FIELDS, "vocab_size") if overrides["tokenizer"] == "bpe" else FIELDS
        for name in fields:
            field = self.query_one(f"#{name}", Input)
            try:
                overrides[name] = field_type(name)(field.value.strip())
                field.remove_class("-invalid")
            except ValueError:
                field.add_class("-invalid")
                problems.append(f"{name} must be a{'n integer' if field_type(name) is int else ' number'}")
        threads = self.query_one("#threads", Input)
        try:
            parse_threads(threads.value)
            threads.remove_class("-invalid")
        except MiniGPTError as exc:
            threads.add_class("-invalid")
            problems.append(str(exc))
        if self.query_one("#corpus", Select).value == FROM_PATH and not self.query_one("#path", Input).value.strip():
            problems.append("give the path of a text file or folder")
        out = self.query_one("#out", Input).value.strip()
        if out and holds_checkpoints(Path(out)):  # checked here, so the form stays open and nothing is touched
            problems.append(f"{out} already holds a run: choose another run folder, or open that run "
                            f"(minigpt-tui {out}) and press c to continue it")
        if problems:
            self.show_error("; ".join(problems))
            return None
        preset = str(self.query_one("#preset", Select).value)
        try:
            config = build_config("baby", {**self.presets[preset], **overrides})
        except MiniGPTError as exc:
            self.show_error(str(exc))
            return None
        self.show_error("")
        return config

    def show_error(self, message: str) -> None:
        error = self.query_one("#form-error", Static)
        error.update(f"✗ {message}" if message else "")
        error.set_class(bool(message), "-shown")
        self.query_one("#start", Button).disabled = bool(message)

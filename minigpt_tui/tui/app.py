"""The Textual app: routes messages between the panes and the workers that drive the core.

Training, sampling and the ablation run in thread workers. The trainer's callback batches step
events into a few messages per second, and the plots redraw at most ``redraw_interval`` apart, so
the UI costs the training loop almost nothing.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import ContentSwitcher, Footer, Header, TabbedContent, TabPane, Tabs
from textual.worker import Worker, WorkerState, get_current_worker

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.keepsakes import AblationRecipe, SampleRecipe, save_sample, save_temperature_table
from minigpt_tui.experiments.temperature import default_prompt, temperature_ablation
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.corpus import corpus_for_run, corpus_splits, training_text
from minigpt_tui.training.data import split_text
from minigpt_tui.training.datasets import DATASETS
from minigpt_tui.training.events import CheckpointEvent, DoneEvent, EvalEvent, Event, StepEvent, ThreadsEvent
from minigpt_tui.training.runs import (
    Run,
    build_backend,
    checkpoint_state,
    default_run_dir,
    is_locked,
    load_model,
    open_run,
    read_metrics,
)
from minigpt_tui.training.sampling import decode_step, generate_text
from minigpt_tui.training.threads import AUTO, ENV_VAR, apply_threads, default_threads, parse_threads, spare_threads
from minigpt_tui.training.trainer import continuation_target, new_training, resume_training
from minigpt_tui.tui.ablation_pane import AblationPane
from minigpt_tui.tui.continue_dialog import ContinueDialog
from minigpt_tui.tui.generation_pane import GenerationPane
from minigpt_tui.tui.help_screen import HelpScreen
from minigpt_tui.tui.inspect_pane import InspectPane
from minigpt_tui.tui.messages import (
    AblationFinished,
    AblationRequest,
    AblationRowReady,
    CheckpointSaved,
    GenerateRequest,
    GenerationFinished,
    GenerationStarted,
    GenerationText,
    SaveAblation,
    SaveSample,
    StartRun,
    TrainingEvaluated,
    TrainingFinished,
    TrainingProgress,
    TrainingStarted,
    TrainingThreads,
)
from minigpt_tui.tui.output import log, set_up_output
from minigpt_tui.tui.run_form import RunForm
from minigpt_tui.tui.terminal import check_terminal
from minigpt_tui.tui.training_pane import (
    Compared,
    Curves,
    RunFacts,
    Status,
    TrainingPane,
    describe,
    status_from_metrics,
    threads_label,
)

STREAM_INTERVAL = 0.03  # seconds between generated-text messages: smooth, yet not one message per token
ABLATION_SEED = 0  # as `minigpt ablate temperature` defaults: sample i uses seed + i


@dataclass(frozen=True)
class Weights:
    """The weights sampling uses, and where they came from."""

    backend: object  # a backends.base.Backend: a private copy, never the training model
    tokenizer: object
    source: str  # in words, e.g. "latest checkpoint (step 8)"
    step: int
    checkpoint: str | None  # "latest" for a checkpoint's weights, None for a live copy


class EventRelay:
    """Trainer callback (runs on the training thread): forwards events as app messages.

    Step events are batched and posted at most every ``interval`` seconds; a pause flushes them so
    the paused screen is up to date.
    """

    def __init__(self, app: App, trainer, interval: float) -> None:
        self.app, self.trainer, self.interval = app, trainer, interval
        self.pending: list[StepEvent] = []
        self.last_post = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, StepEvent):
            self.pending.append(event)
            if time.monotonic() - self.last_post >= self.interval or self.trainer.paused:
                self.flush()
            return
        self.flush()
        if isinstance(event, EvalEvent):
            self.app.post_message(TrainingEvaluated(event))
        elif isinstance(event, CheckpointEvent):
            self.app.post_message(CheckpointSaved(event))
        elif isinstance(event, ThreadsEvent):
            self.app.post_message(TrainingThreads(event))
        elif isinstance(event, DoneEvent):
            self.app.post_message(TrainingFinished(event))

    def flush(self) -> None:
        if self.pending:
            self.app.post_message(TrainingProgress(self.pending))
            self.pending = []
        self.last_post = time.monotonic()


class MiniGPTApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "minigpt"
    ENABLE_COMMAND_PALETTE = False  # its footer entry would push the real keys off an 80-column screen
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("n", "new_run", "New run"),
        Binding("p", "pause", "Pause"),
        Binding("p", "resume", "Resume"),  # the footer names what p does now
        Binding("s", "stop_training", "Stop"),
        Binding("c", "continue_training", "Continue"),
        Binding("l", "toggle_log", "Log y"),
        Binding("b", "toggle_quality", "bpc/ppl"),
        Binding("o", "cycle_lower_plot", "lr/grad"),
        Binding("t", "show_tab('train-tab')", "Training", show=False),
        Binding("g", "show_tab('generate-tab')", "Generate", show=False),
        Binding("a", "show_tab('ablation-tab')", "Ablation", show=False),
        Binding("i", "show_tab('inspect-tab')", "Inspect", show=False),
        # from any field (the Generate and Ablation views also stop their sampling): the keys work again
        Binding("escape", "stop_generation", "Leave field", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, *, run_dir: Path | None = None, compare: tuple[Path, ...] = (),
                 config: TrainConfig | None = None, data: Path | None = None, dataset: str | None = None,
                 out: Path | None = None, threads: int | str | None = None, redraw_interval: float = 0.5,
                 poll_interval: float = 1.0) -> None:
        super().__init__()
        # --threads: training's setting (the form can change it per run); by default $MINIGPT_THREADS, else auto
        self.threads = default_threads() if threads is None else threads
        self.helper_threads: int | None = None  # auto's measured count for sampling and inspection when idle
        self.run_dir, self.config, self.data, self.dataset, self.out = run_dir, config, data, dataset, out
        self.compare = compare  # more run folders whose curves are drawn over the opened run's
        self.redraw_interval, self.poll_interval = redraw_interval, poll_interval
        self.run_info: Run | None = None  # the run on screen, opened or being trained
        self.trainer = None  # set while this app trains
        self.training = False  # a training worker is preparing or running
        self.quitting = False
        self.crash: BaseException | None = None  # an exception nothing handled, which ended the app
        self.following = False  # another process is appending to the opened run's metrics
        self.train_text: str | None = None
        self.metrics_stamp: tuple[int, float] | None = None
        self.metrics_warned: list[int] = []  # damaged metrics lines already reported
        self.dirty = False
        self.session_start_step = 0  # for the ETA: steps done by this session over its elapsed time
        self.earlier_elapsed_s = 0.0  # training time of the sessions before this one (elapsed adds up)
        self.starting_new_run = False  # the training worker is preparing a new run (not continuing one)
        self.generation_stop = threading.Event()
        self.stream_interval = STREAM_INTERVAL

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"):
            with TabPane("Training", id="train-tab"):
                with ContentSwitcher(initial="form", id="train-switcher"):
                    yield RunForm(config=self.config, data=self.data, dataset=self.dataset, out=self.out,
                                  threads=self.threads, id="form")
                    yield TrainingPane(id="training")
            with TabPane("Generate", id="generate-tab"):
                yield GenerationPane(id="generation")
            with TabPane("Ablation", id="ablation-tab"):
                yield AblationPane(id="ablation")
            with TabPane("Inspect", id="inspect-tab"):
                yield InspectPane(id="inspect")
        yield Footer()

    def query_main(self, selector, expect_type=None):
        """A widget of the main screen, also while a dialog or the help is on top (``query_one`` searches only
        the screen on top, so a training message arriving under the help screen would miss its pane)."""
        if not self.screen_stack:  # shutting down
            raise NoMatches(f"no main screen for {selector}")
        screen = self.screen_stack[0]
        return screen.query_one(selector) if expect_type is None else screen.query_one(selector, expect_type)

    @property
    def pane(self) -> TrainingPane:
        return self.query_main(TrainingPane)

    def on_mount(self) -> None:
        self.set_interval(self.redraw_interval, self.redraw_if_dirty)
        self.set_interval(self.poll_interval, self.poll_metrics)
        if self.run_dir is not None:
            try:
                self.open_existing(self.run_dir)
                runs = [open_run(path) for path in self.compare]
                self.pane.comparisons = [Compared.of(run, read_metrics(run.metrics_path)) for run in runs]
            except MiniGPTError as exc:
                self.notify(str(exc), title="cannot open the run", severity="error")

    def notify(self, message: str, *, title: str = "", severity: str = "information", **kwargs) -> None:
        """Every notification also goes to the log (--log-file, or a redirected stderr)."""
        log.log(logging.ERROR if severity == "error" else logging.INFO, "%s%s", f"{title}: " if title else "", message)
        super().notify(message, title=title, severity=severity, **kwargs)

    # ---- errors: every worker failure lands here, as a notification, never a crash

    def _handle_exception(self, error: Exception) -> None:
        """An exception nothing handled (a bug): its traceback goes to the log before Textual ends the app,
        whose exit code is then 1 (``main`` passes it on)."""
        log.critical("internal error: the app stopped", exc_info=error)
        self.crash = error
        super()._handle_exception(error)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        message = str(error) if isinstance(error, MiniGPTError) else f"{type(error).__name__}: {error}"
        if not isinstance(error, MiniGPTError):
            log.error("%s worker", event.worker.group, exc_info=error)
        self.notify(message, title=f"{event.worker.group} failed", severity="error", timeout=10)
        if event.worker.group == "training":
            self.training, self.trainer = False, None
            if self.quitting:
                self.exit()
            elif self.starting_new_run or self.run_info is None:  # the run on screen (if any) is untouched
                self.query_main("#train-switcher", ContentSwitcher).current = "form"
                self.query_main(RunForm).show_error(message)
                if self.run_info is not None:
                    self.reload_metrics()
            else:  # back to the run that was on screen before
                self.reload_metrics()
                self.pane.status.state = "training failed"
        elif event.worker.group == "generation":
            self.query_main(GenerationPane).set_running(False)
        elif event.worker.group == "ablation":
            self.query_main(AblationPane).finished("")
        self.refresh_bindings()

    # ---- opening and following a run on disk

    def open_existing(self, path: Path) -> None:
        run = open_run(path)
        # a run another process trains (it holds the lock) is followed read-only
        self.run_info, self.train_text, self.following = run, None, is_locked(run.path)
        self.pane.facts = RunFacts.of(run)
        self.sub_title = run.path.name
        self.reload_metrics()
        self.inspect_new_weights()
        self.query_main("#train-switcher", ContentSwitcher).current = "training"
        self.refresh_bindings()
        self.call_after_refresh(self.redraw_if_dirty)  # an opened run shows its curves at once, not a tick later

    def reload_metrics(self) -> None:
        run = self.run_info
        metrics = read_metrics(run.metrics_path)
        if metrics.damaged_lines and self.metrics_warned != metrics.damaged_lines:
            self.metrics_warned = metrics.damaged_lines
            self.notify(metrics.warning(run.metrics_path), severity="warning")
        self.pane.curves = Curves.from_metrics(metrics)
        note = self.pane.status.note if self.following else ""
        self.pane.status = status_from_metrics(run, metrics, None if self.following else self.checkpoint_step(run))
        if self.following:
            self.pane.status.state = f"following: another process trains it (step {self.pane.status.step})"
        self.pane.status.note = note
        self.metrics_stamp = self.stamp(run.metrics_path)
        self.dirty = True

    def checkpoint_step(self, run: Run) -> int | None:
        """The step of the run's latest checkpoint (where continuing resumes), None if it has none or it is damaged."""
        if not run.has_checkpoint("latest"):
            return None
        try:
            return checkpoint_state(run).step
        except MiniGPTError as exc:
            self.notify(str(exc), title="the latest checkpoint is damaged", severity="warning")
            return None

    @staticmethod
    def stamp(path: Path) -> tuple[int, float] | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return stat.st_size, stat.st_mtime

    def poll_metrics(self) -> None:
        """Cheap follow of a run trained elsewhere: one stat() per tick, a re-read only when it grew."""
        if self.training or self.run_info is None:
            return
        stamp = self.stamp(self.run_info.metrics_path)
        if stamp != self.metrics_stamp:
            self.following = True
            self.reload_metrics()
            self.refresh_bindings()

    def redraw_if_dirty(self) -> None:
        if self.dirty:
            self.dirty = False
            try:
                self.pane.redraw()
            except NoMatches:  # the app is shutting down and the plots are gone
                pass

    # ---- training

    @on(StartRun)
    def start_run(self, message: StartRun) -> None:
        if self.training:
            self.notify("a run is training: stop it (s) before starting another", severity="warning")
            return
        out = message.out or default_run_dir()

        self.threads = message.threads

        def prepare():
            corpus = message.load_corpus()
            return new_training(message.config, corpus, out, threads=message.threads), split_text(corpus.text)[0]

        self.pane.curves = Curves()
        self.pane.comparisons = []
        self.pane.status, self.pane.facts = Status(run=out.name), None  # nothing of the run on screen carries over
        self.starting_new_run = True
        self.begin_training(prepare, f"preparing {out.name}…")

    def begin_training(self, prepare: Callable, state: str) -> None:
        self.training, self.following = True, False
        self.pane.status.state = state
        self.pane.status.note = ""
        self.dirty = True
        self.query_main("#train-switcher", ContentSwitcher).current = "training"
        self.query_main(TabbedContent).active = "train-tab"
        self.refresh_bindings()
        self.train_worker(prepare)

    @work(thread=True, exclusive=True, group="training", exit_on_error=False)
    def train_worker(self, prepare: Callable) -> None:
        trainer, train_text = prepare()
        trainer.callbacks.append(EventRelay(self, trainer, self.redraw_interval))
        # read before the first step: by the time the app handles the message the trainer is steps further
        start_step = trainer.step
        earlier = read_metrics(trainer.run_dir.metrics_path).up_to(start_step) if start_step else None
        self.post_message(TrainingStarted(trainer, train_text, start_step, earlier))
        trainer.run()

    @on(TrainingStarted)
    def training_started(self, message: TrainingStarted) -> None:
        trainer = message.trainer
        self.trainer, self.train_text, self.run_info = trainer, message.train_text, trainer.run_dir
        self.starting_new_run = False
        if self.quitting:
            trainer.request_stop()
        self.sub_title = trainer.run_dir.path.name
        self.earlier_elapsed_s = 0.0
        if message.earlier is not None:
            self.pane.curves = Curves.from_metrics(message.earlier)
            self.earlier_elapsed_s = message.earlier.elapsed_s or 0.0
        self.pane.facts = RunFacts.of(trainer.run_dir)
        s = self.pane.status
        c = trainer.config
        s.run, s.state = trainer.run_dir.path.name, "training"
        s.backend, s.device = trainer.backend.name, trainer.backend.device
        describe(s, c, trainer.run_dir.tokenizer.vocab_size)
        s.corpus = Path(trainer.run_dir.data_source).name
        s.step = message.start_step
        s.best_val_loss = trainer.best_val_loss
        self.session_start_step = message.start_step
        self.dirty = True
        self.refresh_bindings()
        self.inspect_new_weights()

    @on(TrainingProgress)
    def training_progress(self, message: TrainingProgress) -> None:
        last = message.steps[-1]
        self.pane.curves.add_steps(message.steps)
        s = self.pane.status
        s.step, s.max_iters, s.lr = last.step, last.max_iters, last.lr
        s.elapsed_s = self.earlier_elapsed_s + last.elapsed_s
        if last.tokens_per_s > 0:
            s.tokens_per_s = last.tokens_per_s
        done = last.step - self.session_start_step
        s.eta_s = last.elapsed_s / done * (last.max_iters - last.step) if done > 0 else None
        self.dirty = True

    @on(TrainingEvaluated)
    def training_evaluated(self, message: TrainingEvaluated) -> None:
        self.pane.curves.add_eval(message.event)
        self.pane.status.best_val_loss = message.event.best_val_loss
        self.dirty = True
        self.inspect_new_weights()

    @on(TrainingThreads)
    def training_threads(self, message: TrainingThreads) -> None:
        self.pane.status.threads = threads_label(message.event)
        self.dirty = True

    @on(CheckpointSaved)
    def checkpoint_saved(self, message: CheckpointSaved) -> None:
        self.pane.status.saved = f"{message.event.kind} @ {message.event.step}"
        self.dirty = True

    @on(TrainingFinished)
    def training_finished(self, message: TrainingFinished) -> None:
        event = message.event
        self.training, self.trainer = False, None
        self.pane.status.state = event.reason  # the step is on its own line
        self.pane.status.step = event.step  # the checkpoint's step: a stop between log lines is not lost
        self.pane.status.eta_s = None
        self.pane.status.note = event.message
        self.metrics_stamp = self.stamp(self.run_info.metrics_path)
        self.dirty = True
        self.refresh_bindings()
        self.inspect_new_weights()
        if self.quitting:
            self.exit()
            return
        self.notify(event.message, title=f"training {event.reason}",
                    severity="information" if event.reason == "finished" else "warning")

    def inspect_new_weights(self) -> None:
        """The inspect view reads its text again with the new weights: now if on screen, else when shown."""
        self.query_main(InspectPane).weights_changed(self.query_main(TabbedContent).active == "inspect-tab")

    def action_pause(self) -> None:
        if self.trainer is not None and not self.trainer.paused:
            self.trainer.pause()
            self.pane.status.state = "paused (p resumes)"
            self.pane.show_status()
            self.refresh_bindings()

    def action_resume(self) -> None:
        if self.trainer is not None and self.trainer.paused:
            self.trainer.resume()
            self.pane.status.state = "training"
            self.pane.show_status()
            self.refresh_bindings()

    def action_stop_training(self) -> None:
        if self.trainer is not None:
            self.trainer.request_stop()
            self.pane.status.state = "stopping: saving a checkpoint…"
            self.pane.show_status()

    def action_continue_training(self) -> None:
        if self.training or self.run_info is None:
            return
        if is_locked(self.run_info.path):  # its writer holds the lock; once it ends, this app may continue the run
            self.notify("another process is training this run; continue it when that one stops", severity="warning")
            return
        run = self.run_info
        done = self.pane.status.step
        # offered: the core's policy (the rest of a stopped run, as many steps again for a finished one); the
        # user decides
        suggested = continuation_target(run.config, done) - done

        def chosen(extra: int | None) -> None:
            if extra is not None:
                self.continue_for(run, done, extra)

        self.push_screen(ContinueDialog(run.path.name, done, suggested), chosen)

    def continue_for(self, run: Run, done: int, extra: int) -> None:
        target = done + extra

        def prepare():
            corpus = corpus_for_run(run, None, None)
            resumed = resume_training(run.path, corpus, {"max_iters": target}, threads=self.threads)
            return resumed, split_text(corpus.text)[0]

        self.starting_new_run = False
        self.begin_training(prepare, f"resuming from step {done} towards {target}…")

    def action_new_run(self) -> None:
        if self.training:
            self.notify("a run is training: stop it (s) before starting another", severity="warning")
            return
        self.query_main(TabbedContent).active = "train-tab"
        self.query_main("#train-switcher", ContentSwitcher).current = "form"
        self.refresh_bindings()

    def action_toggle_log(self) -> None:
        self.pane.log_y = not self.pane.log_y
        self.pane.redraw()

    def action_toggle_quality(self) -> None:
        self.pane.show_perplexity = not self.pane.show_perplexity
        self.pane.redraw()

    def action_cycle_lower_plot(self) -> None:
        self.pane.cycle_lower_plot()
        self.pane.redraw()

    def action_show_tab(self, tab: str) -> None:
        self.query_main(TabbedContent).active = tab
        # typing goes where the user is looking: the prompt, the temperature list, or back to the keys
        first_field = {"generate-tab": "#prompt", "ablation-tab": "#temperatures",
                       "inspect-tab": "#inspect-tokens"}.get(tab)
        if first_field:
            self.query_main(first_field).focus()
        else:
            self.query_main(TabbedContent).query_one(Tabs).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide keys that do nothing right now, so the footer stays short at 80 columns."""
        if action == "pause":
            return self.trainer is not None and not self.trainer.paused
        if action == "resume":
            return self.trainer is not None and self.trainer.paused
        if action == "stop_training":
            return self.trainer is not None
        if action == "continue_training":
            return not self.training and self.run_info is not None
        if action in ("toggle_log", "toggle_quality", "cycle_lower_plot"):
            return self.query_main("#train-switcher", ContentSwitcher).current == "training"
        return True

    async def action_quit(self) -> None:
        if self.training:
            self.quitting = True
            if self.trainer is not None:
                self.trainer.request_stop()
            self.notify("saving a checkpoint before quitting…")
            return
        self.exit()

    def on_unmount(self) -> None:
        if self.trainer is not None:
            self.trainer.request_stop()
        self.generation_stop.set()

    # ---- the weights sampling uses

    def current_weights(self) -> Weights:
        """A private copy of the training weights, else the latest checkpoint's.

        Called on worker threads: the training model itself is never touched from here.
        """
        trainer = self.trainer
        if trainer is not None:
            step = trainer.step
            backend = build_backend(trainer.config, trainer.snapshot_weights())
            return Weights(backend, trainer.run_dir.tokenizer, f"live copy of the training weights (step ~{step})",
                           step, None)
        if self.run_info is None:
            raise MiniGPTError("no model yet: start a run (n) or open one with `minigpt-tui RUN_DIR`")
        backend, checkpoint = load_model(self.run_info, which="latest")
        step = checkpoint.state.step
        return Weights(backend, self.run_info.tokenizer, f"latest checkpoint (step {step})", step, "latest")

    def current_model(self):
        """(backend, tokenizer, description) of ``current_weights()``."""
        weights = self.current_weights()
        return weights.backend, weights.tokenizer, weights.source

    def limit_threads(self, backend, work=None) -> int:
        """Called on a helper's worker thread before it computes (torch keeps the count per thread): beside
        training, the cores training leaves free (at least one); otherwise the --threads setting, auto
        measured once on ``work`` (default: decoding steps) and kept."""
        trainer = self.trainer
        if trainer is not None and trainer.threads_in_use is not None:
            count = spare_threads(trainer.threads_in_use)
        elif isinstance(self.threads, int):
            count = self.threads
        else:
            if self.helper_threads is None:
                self.helper_threads = apply_threads(AUTO, backend.set_threads, work or decode_step(backend)).threads
            count = self.helper_threads
        backend.set_threads(count)
        return count

    def training_text(self) -> str:
        if self.train_text is None:
            self.train_text = training_text(self.run_info)
        return self.train_text

    # ---- generation

    @on(GenerateRequest)
    def generate_requested(self, message: GenerateRequest) -> None:
        self.generation_stop.clear()
        self.query_main(GenerationPane).set_running(True)
        self.generate_worker(message)

    @work(thread=True, exclusive=True, group="generation", exit_on_error=False)
    def generate_worker(self, request: GenerateRequest) -> None:
        worker = get_current_worker()
        weights = self.current_weights()
        self.limit_threads(weights.backend)
        # no seed given: one is drawn here and kept, so a saved sample can be drawn again
        seed = secrets.randbelow(2**31) if request.seed is None else request.seed
        pieces = generate_text(weights.backend, weights.tokenizer, request.prompt, request.length, request.params, seed)
        self.post_message(GenerationStarted(SampleRecipe(weights.source, weights.step, weights.checkpoint,
                                                         request.prompt, request.length, request.params, seed)))
        started = last_post = time.perf_counter()
        pending: list[str] = []
        characters, stopped = 0, False
        for piece in pieces:
            if worker.is_cancelled or self.generation_stop.is_set():
                stopped = True
                break
            pending.append(piece)
            characters += len(piece)
            if time.perf_counter() - last_post >= self.stream_interval:
                self.post_message(GenerationText("".join(pending)))
                pending, last_post = [], time.perf_counter()
        if pending:
            self.post_message(GenerationText("".join(pending)))
        self.post_message(GenerationFinished(characters, time.perf_counter() - started, stopped))

    @on(GenerationStarted)
    def generation_started(self, message: GenerationStarted) -> None:
        self.query_main(GenerationPane).started(message.recipe)

    @on(GenerationText)
    def generation_text(self, message: GenerationText) -> None:
        self.query_main(GenerationPane).append(message.text)

    @on(GenerationFinished)
    def generation_finished(self, message: GenerationFinished) -> None:
        verb = "stopped after" if message.stopped else "done:"
        self.query_main(GenerationPane).finished(f"{verb} {message.characters} characters in {message.seconds:.1f}s")

    def action_stop_generation(self) -> None:
        """Escape: stop sampling (and the ablation), and hand the keys back from any field."""
        self.generation_stop.set()
        for worker in self.workers:
            if worker.group == "ablation":
                worker.cancel()
        self.query_main(TabbedContent).query_one(Tabs).focus()

    # ---- keeping what the app showed

    def keep(self, title: str, save: Callable[[Path], Path]) -> None:
        """Save a keepsake into the run folder with ``save(folder)`` and say where it went (or why not)."""
        if self.run_info is None:
            self.notify("no run yet: start one (n) or open one with `minigpt-tui RUN_DIR`", severity="error")
            return
        try:
            self.notify(f"saved {save(self.run_info.path)}", title=title)
        except MiniGPTError as exc:
            self.notify(str(exc), severity="error")

    @on(SaveSample)
    def save_sample(self, message: SaveSample) -> None:
        self.keep("sample", lambda folder: save_sample(folder, message.text, message.recipe))

    @on(SaveAblation)
    def save_ablation(self, message: SaveAblation) -> None:
        self.keep("ablation", lambda folder: save_temperature_table(folder, message.rows, message.recipe))

    # ---- temperature ablation

    @on(AblationRequest)
    def ablation_requested(self, message: AblationRequest) -> None:
        self.query_main(AblationPane).started("the latest weights")
        self.ablation_worker(message)

    @work(thread=True, exclusive=True, group="ablation", exit_on_error=False)
    def ablation_worker(self, request: AblationRequest) -> None:
        worker = get_current_worker()
        weights = self.current_weights()
        self.limit_threads(weights.backend)
        train_text = self.training_text()
        prompt = default_prompt(corpus_splits(self.run_info)[1])  # what `minigpt ablate temperature` uses
        recipe = AblationRecipe(weights.source, weights.step, prompt, request.samples, request.length, ABLATION_SEED)
        # one call per temperature so rows appear as they finish; seeds do not depend on the position
        for temperature in request.temperatures:
            rows = temperature_ablation(weights.backend, weights.tokenizer, train_text, [temperature],
                                        samples=request.samples, length=request.length, prompt=prompt,
                                        seed=ABLATION_SEED, should_stop=lambda: worker.is_cancelled)
            if not rows:
                self.post_message(AblationFinished(recipe, stopped=True))
                return
            self.post_message(AblationRowReady(rows[0]))
        self.post_message(AblationFinished(recipe, stopped=False))

    @on(AblationRowReady)
    def ablation_row(self, message: AblationRowReady) -> None:
        self.query_main(AblationPane).add_row(message.row)

    @on(AblationFinished)
    def ablation_finished(self, message: AblationFinished) -> None:
        verb = "stopped" if message.stopped else "done"
        self.query_main(AblationPane).finished(f"{verb}: samples from the {message.recipe.source}; highlight a row "
                                              "to read its samples, [ and ] page through them", message.recipe)


def create_app(run_dir: Path | None = None, *compare: Path, config: TrainConfig | None = None,
               data: Path | None = None, dataset: str | None = None, out: Path | None = None,
               threads: int | str | None = None, **timing) -> MiniGPTApp:
    """The app as the entry point and the tests build it; ``config`` prefills the new-run form; runs after the
    first are overlaid on its curves."""
    return MiniGPTApp(run_dir=run_dir, compare=compare, config=config, data=data, dataset=dataset, out=out,
                      threads=threads, **timing)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="Prefill the form with this text file or folder.")
@click.option("--dataset", type=click.Choice(DATASETS), help="Prefill the form with a named corpus.")
@click.option("--out", type=click.Path(path_type=Path), help="Prefill the run folder.")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Append notifications, errors (with tracebacks) and warnings to this file (default: "
                   "minigpt-tui.log in the system's temporary folder, named on exit if the app stopped on an "
                   "error).")
@click.option("--threads", default=AUTO, show_default=True, envvar=ENV_VAR,
              help="CPU threads training runs on: auto measures and adapts; N uses exactly N. Sampling and "
              "inspection beside training take the cores it leaves. Env: MINIGPT_THREADS.")
def main(run_dirs: tuple[Path, ...], data: Path | None, dataset: str | None, out: Path | None,
         log_file: Path | None, threads: str) -> None:
    """Train, watch and sample a small GPT. With RUN_DIR: open (or follow) that run; with more run folders,
    their curves are drawn over the first's, each named in the legend, with a table comparing them (in bits
    per character when their tokenizers differ). Exits 1 if a bug ends the app, naming the log that holds
    the traceback."""
    try:
        setting = parse_threads(threads)
        check_terminal()
    except MiniGPTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    log_path = set_up_output(log_file)
    app = create_app(*run_dirs, data=data, dataset=dataset, out=out, threads=setting)
    app.run()
    if app.crash is not None or app.return_code:
        where = f"; the traceback is in {log_path}" if log_path else ""
        click.echo(f"error: internal error, minigpt-tui stopped ({type(app.crash).__name__}: {app.crash}){where}",
                   err=True)
        sys.exit(app.return_code or 1)

"""Pilot tests of minigpt-tui: the app drives a tiny model on a tiny corpus, as a user would."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
from conftest import tiny_config
from rich.console import Console
from textual.widgets import DataTable, Input, Static, TextArea

from minigpt_tui.training.checkpoint import load_checkpoint
from minigpt_tui.training.events import ThreadsEvent
from minigpt_tui.training.runs import open_run, read_metrics
from minigpt_tui.training.threads import spare_threads
from minigpt_tui.tui.ablation_pane import COLUMNS as ABLATION_COLUMNS
from minigpt_tui.tui.app import create_app
from minigpt_tui.tui.continue_dialog import ContinueDialog
from minigpt_tui.tui.generation_pane import GenerationPane

pytestmark = pytest.mark.anyio
FAST = dict(redraw_interval=0.05, poll_interval=0.05)
ENDLESS = dict(max_iters=100_000, eval_interval=100_000)  # runs until the test stops it


async def wait_until(pilot, predicate, timeout: float = 60.0) -> None:
    """Let the app work until ``predicate()`` holds; a safety net against hangs, not a speed check."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("the app never reached the expected state")


def text_of(static: Static) -> str:
    """What a Static shows, as plain text."""
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(static.content)
    return console.export_text()


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


async def set_input(pilot, selector: str, value: str) -> None:
    pilot.app.query_one(selector, Input).value = value
    await pilot.pause()


async def test_a_run_draws_curve_points_and_advances_the_status(tmp_path: Path, corpus_path: Path):
    out = tmp_path / "run"
    config = tiny_config(max_iters=100_000, eval_interval=10)
    app = create_app(config=config, data=corpus_path, out=out, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("enter")  # the Start button has the focus
        await wait_until(pilot, lambda: app.pane.status.step > 0)
        first_points, first_step = len(app.pane.curves.steps), app.pane.status.step
        curves, status = app.pane.curves, app.pane.status
        await wait_until(pilot, lambda: len(curves.steps) > first_points and len(curves.eval_steps) >= 3)
        assert status.step > first_step
        assert curves.eval_steps[:3] == [0, 10, 20]
        assert status.parameters and status.backend == "torch" and status.tokens_per_s > 0
        assert status.best_val_loss == min(curves.val_loss)
        assert re.fullmatch(r"(latest|best) @ \d+", status.saved)  # a row of its own: the step never wraps alone
        shown = re.search(r"step\s+(\d+) / 100000", text_of(app.query_one("#status", Static)))
        assert shown and 0 < int(shown.group(1)) <= status.step  # the panel lags the trainer by a redraw at most
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.training)
        assert curves.steps[-1] == status.step
        assert status.state == "stopped"
    assert open_run(out).has_checkpoint("latest")


async def test_bad_form_input_shows_an_error_and_starts_nothing(tmp_path: Path, corpus_path: Path):
    out = tmp_path / "run"
    app = create_app(config=tiny_config(), data=corpus_path, out=out, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await set_input(pilot, "#n_head", "3")
        error = text_of(app.query_one("#form-error", Static))
        assert "divisible by n_head" in error
        app.query_one("#n_head", Input).focus()
        await pilot.press("enter")
        await set_input(pilot, "#n_head", "2")
        await set_input(pilot, "#path", str(tmp_path / "missing.txt"))
        await pilot.click("#start")
        await pilot.pause()
        assert "corpus not found" in text_of(app.query_one("#form-error", Static))
        assert not app.training
    assert not out.exists()


async def test_pause_resume_and_stop(tmp_path: Path, corpus_path: Path):
    out = tmp_path / "run"
    app = create_app(config=tiny_config(**ENDLESS), data=corpus_path, out=out, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.trainer is not None and app.trainer.step > 2)
        assert app.screen.active_bindings["p"].binding.description == "Pause"
        await pilot.press("p")
        assert app.trainer.paused and app.pane.status.state.startswith("paused")
        assert app.screen.active_bindings["p"].binding.description == "Resume"  # the footer says what p does now
        await pilot.pause(0.2)  # a step already under way may still finish
        held = app.trainer.step
        await pilot.pause(0.3)
        assert app.trainer.step == held
        await pilot.press("p")
        await wait_until(pilot, lambda: app.trainer.step > held)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.training)
        assert app.pane.status.state.startswith("stopped")
    state = load_checkpoint(out / "checkpoints" / "latest", with_optimizer=False).state
    assert state.step > held


async def test_quit_during_training_saves_a_checkpoint(tmp_path: Path, corpus_path: Path):
    out = tmp_path / "run"
    app = create_app(config=tiny_config(**ENDLESS), data=corpus_path, out=out, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.trainer is not None and app.trainer.step > 3)
        await pilot.press("q")
        await wait_until(pilot, lambda: app.return_code is not None)
    # the only checkpoints are step 0's and the one written on the way out
    state = load_checkpoint(out / "checkpoints" / "latest", with_optimizer=False).state
    assert state.step > 3


async def test_generation_streams_tokens_from_an_opened_run(trained_run: Path):
    app = create_app(trained_run, **FAST)
    app.stream_interval = 0.0  # one message per sampled piece, so the stream is observable
    received: list[str] = []
    async with app.run_test(size=(100, 32)) as pilot:
        pane = app.query_one(GenerationPane)
        original = pane.append

        def spy(text: str) -> None:
            received.append(text)
            original(text)

        pane.append = spy
        await set_input(pilot, "#length", "40")
        await set_input(pilot, "#seed", "3")
        await pilot.press("g", *"The king", "enter")  # g puts the cursor in the prompt
        await wait_until(pilot, lambda: "done:" in text_of(app.query_one("#generation-source", Static)))
        text = app.query_one("#generation-output", TextArea).text
        await pilot.press("ctrl+s")
        saved = list((trained_run / "samples").iterdir())
        assert len(saved) == 1 and saved[0].read_text().endswith(text + "\n")
        header = saved[0].read_text()
        assert "# weights: latest checkpoint (step 8)\n# step: 8\n# prompt: 'The king'\n# length: 40\n" in header
        assert "# temperature 0.8, top-k all, top-p 1, seed 3\n" in header
        assert "minigpt sample" in header and "--prompt 'The king' --max-new-tokens 40" in header
        await pilot.press("escape", "t")  # escape hands the keys back from the text fields
        assert app.query_one("#tabs").active == "train-tab"
    assert len(received) == 40  # character tokenizer: one piece per token
    assert text == "The king" + "".join(received)
    assert "latest checkpoint (step 8)" in pane.source


async def test_generation_during_training_uses_a_live_copy(tmp_path: Path, corpus_path: Path):
    app = create_app(config=tiny_config(**ENDLESS), data=corpus_path, out=tmp_path / "run", **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.trainer is not None and app.trainer.step > 1)
        await pilot.press("g")
        await set_input(pilot, "#length", "20")
        await pilot.click("#generate")
        await wait_until(pilot, lambda: "done:" in text_of(app.query_one("#generation-source", Static)))
        assert "live copy" in app.query_one(GenerationPane).source
        assert len(app.query_one("#generation-output", TextArea).text) == 1 + 20  # "\n" and the sample
        assert app.training  # sampling did not disturb the run
        await pilot.click("#--content-tab-train-tab")  # the focus leaves the text inputs
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.training)


async def test_ablation_gives_one_row_per_temperature(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("a")
        await set_input(pilot, "#samples", "1")
        await set_input(pilot, "#ablation-length", "30")
        await pilot.click("#run-ablation")
        table = app.query_one(DataTable)
        await wait_until(pilot, lambda: not app.query_one("#run-ablation").disabled)
        assert table.row_count == 3
        assert [table.get_row_at(i)[0] for i in range(3)] == ["0.5", "1", "1.5"]
        assert [row.temperature for row in app.query_one("#ablation").rows] == [0.5, 1.0, 1.5]
        row = table.get_row_at(0)
        assert row[ABLATION_COLUMNS.index("degenerate")] in ("0/1", "1/1") or row[2].startswith("1/1: ")
        repeats = row[ABLATION_COLUMNS.index("repeats")]
        assert repeats.endswith("%") or (repeats == "n/a" and row[2].startswith("1/1"))  # n/a only with no text
        await pilot.click("#save-ablation")
        saved = list((trained_run / "ablations").iterdir())
        assert len(saved) == 1 and "| 1.5 |" in saved[0].read_text()


async def test_opened_run_shows_its_curves_and_follows_new_records(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert app.pane.curves.eval_steps == [0, 4, 8]
        assert app.pane.status.state == "finished"
        # another process (minigpt train --headless) appends to metrics.jsonl
        with open(trained_run / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"type": "step", "step": 10, "max_iters": 10, "loss": 2.5, "lr": 1e-3,
                                "grad_norm": 1.0, "tokens_per_s": 1234.0, "elapsed_s": 1.0, "time": 0.0}) + "\n")
        await wait_until(pilot, lambda: app.pane.status.step == 10)
        assert app.pane.curves.steps[-1] == 10
        assert app.pane.status.state.startswith("following")


async def test_continue_a_finished_run_for_the_steps_asked_in_the_dialog(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        await pilot.press("c")
        assert isinstance(app.screen, ContinueDialog)
        assert app.screen.query_one("#extra-steps", Input).value == "8"  # offered, never silently added
        await pilot.press("escape")  # cancel: nothing happens
        assert not app.training and not isinstance(app.screen, ContinueDialog)
        await pilot.press("c")
        steps = app.screen.query_one("#extra-steps", Input)
        steps.value = "0"
        await pilot.press("enter")
        assert "at least 1" in text_of(app.screen.query_one("#continue-error", Static))
        steps.value = "4"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.pane.status.step == 12 and not app.training)
        assert app.pane.status.state == "finished"
    assert max(r.step for r in read_metrics(trained_run / "metrics.jsonl").records) == 12


@pytest.mark.parametrize("run_dir", ["missing-run", "."])
async def test_a_bad_run_folder_is_a_notification_not_a_crash(tmp_path: Path, run_dir: str, caplog):
    app = create_app(tmp_path / run_dir, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert any("run folder not found" in m or "not a minigpt run folder" in m for m in notifications(app))
        assert app.query_one("#train-switcher").current == "form"
    # every notification is also logged (to --log-file, or a redirected stderr)
    assert any(r.name == "minigpt_tui" and "cannot open the run" in r.getMessage() for r in caplog.records)


def test_train_without_headless_refuses_resume_options_for_the_tui(trained_run: Path):
    from click.testing import CliRunner

    from minigpt_tui.cli import main

    result = CliRunner().invoke(main, ["train", "--resume", str(trained_run), "--max-iters", "20"])
    assert result.exit_code == 2
    assert "add --headless to resume with options" in result.output


async def test_empty_sampling_fields_are_valid_and_mean_what_their_placeholders_say(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("g")
        for field in ("#temperature", "#top-k", "#top-p", "#seed"):
            app.query_one(field, Input).focus()
            await pilot.press("x", "backspace")  # typed and erased: still valid
            assert not app.query_one(field, Input).has_class("-invalid"), field
        request = app.query_one(GenerationPane).read_request()
        assert request.params.temperature == float(app.query_one("#temperature", Input).placeholder) == 0.8
        assert request.params.top_k is None and request.params.top_p is None and request.seed is None


async def test_a_run_folder_that_exists_is_refused_in_the_form(trained_run: Path, corpus_path: Path):
    before = (trained_run / "metrics.jsonl").read_bytes()
    app = create_app(config=tiny_config(), data=corpus_path, out=trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        error = text_of(app.query_one("#form-error", Static))
        assert "already holds a run" in error and "press c" in error and "--resume" not in error
        assert app.query_one("#start").disabled
        await pilot.press("enter")
        assert not app.training and app.query_one("#train-switcher").current == "form"
    assert (trained_run / "metrics.jsonl").read_bytes() == before


async def test_a_new_run_that_fails_returns_to_the_form_and_leaves_the_open_run_alone(
        trained_run: Path, corpus_path: Path, monkeypatch):
    from minigpt_tui.tui import run_form

    monkeypatch.setattr(run_form, "holds_checkpoints", lambda path: False)  # the folder appears after the form checked
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("n")
        await set_input(pilot, "#out", str(trained_run))
        app.query_one("#start").focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.training and app.query_one("#train-switcher").current == "form")
        assert "already holds a run" in text_of(app.query_one("#form-error", Static))
        assert app.pane.status.state == "finished"  # not "training failed"


async def test_the_form_trains_on_the_bundled_shakespeare_by_default(tmp_path: Path):
    from minigpt_tui.training.datasets import SHAKESPEARE_SOURCE

    out = tmp_path / "run"
    app = create_app(config=tiny_config(max_iters=2, eval_interval=2), out=out, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        assert app.query_one("#corpus").value == "shakespeare"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.run_info is not None and not app.training)
        assert app.pane.status.state == "finished"
    assert open_run(out).data_source == SHAKESPEARE_SOURCE


async def test_lower_plot_cycles_to_lr_and_grad_norm_and_the_loss_plot_shows_guessing(trained_run: Path):
    from minigpt_tui.tui.training_pane import GRAD_NORM, LEARNING_RATE, QUALITY

    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        pane = app.pane
        assert len(pane.curves.lrs) == len(pane.curves.grad_norms) == len(pane.curves.steps) > 0
        reference = [line for line in pane.loss_lines(8)[2] if line.label.startswith("guessing")]
        assert reference and reference[0].ys == [math.log(open_run(trained_run).tokenizer.vocab_size)] * 2
        for expected in (LEARNING_RATE, GRAD_NORM, QUALITY):
            await pilot.press("o")
            assert pane.lower_plot == expected


async def test_several_runs_are_overlaid_and_named(tmp_path: Path, corpus_path: Path):
    from conftest import train_tiny

    runs = [tmp_path / "lr-high", tmp_path / "lr-low"]
    for path, lr in zip(runs, (3e-3, 1e-3), strict=True):
        train_tiny(path, corpus_path, tiny_config(learning_rate=lr))
    app = create_app(*runs, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert [run.name for run in app.pane.comparisons] == ["lr-low"]
        labels = [line.label for line in app.pane.loss_lines(8)[2]]
        assert "lr-high" in labels and "lr-low" in labels


def test_an_old_run_on_auto_says_its_device_is_not_recorded(tmp_path: Path, corpus_text: str):
    from minigpt_tui.training.runs import Metrics, Run
    from minigpt_tui.training.vocabulary import build_tokenizer
    from minigpt_tui.tui.training_pane import status_from_metrics

    tokenizer = build_tokenizer("char", corpus_text, 64)
    config = tiny_config(device="auto").with_vocab_size(tokenizer.vocab_size)
    status = status_from_metrics(Run(tmp_path / "run", config, tokenizer, "c.txt", 1.0), Metrics())
    assert (status.backend, status.device) == ("torch", "auto (not recorded)")  # not "torch on auto"


def test_status_labels_keep_their_width_next_to_a_long_state():
    from minigpt_tui.tui.training_pane import Status, StatusPanel

    panel = StatusPanel()
    panel.show(Status(state="following: another process trains it (step 123456)", backend="torch"))
    console = Console(width=30, file=io.StringIO(), record=True)
    console.print(panel.content)
    lines = console.export_text().splitlines()
    assert lines[1].startswith("state     following") and lines[2].startswith("backend   torch")


async def test_keyboard_focus_is_plainly_visible(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("g")  # the prompt has the focus, the temperature field not
        focused, unfocused = app.query_one("#prompt", Input), app.query_one("#temperature", Input)
        assert app.focused is focused
        a, b = focused.background_colors[1].rgb, unfocused.background_colors[1].rgb
        assert sum(abs(x - y) for x, y in zip(a, b, strict=True)) > 60  # not 234 against 235


def test_help_names_the_measures_the_code_uses():
    from minigpt_tui.tui.help_screen import HELP

    assert "3-gram" not in HELP and "word bigrams" in HELP
    assert "ln V" in HELP and "What is a good loss?" in HELP


async def test_the_form_sets_the_threads_the_status_shows_and_helpers_keep_off_them(tmp_path: Path, corpus_path: Path):
    out = tmp_path / "run"
    app = create_app(config=tiny_config(**ENDLESS), data=corpus_path, out=out, threads="auto", **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        assert app.query_one("#threads", Input).value == "auto"
        await set_input(pilot, "#threads", "0")
        assert "threads must be 'auto' or a whole number" in text_of(app.query_one("#form-error", Static))
        await set_input(pilot, "#threads", "1")
        app.query_one("#start").focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.pane.status.threads == "1 (fixed)")
        assert re.search(r"threads\s+1 \(fixed\)", text_of(app.query_one("#status", Static)))

        class Helper:  # what a sampling or inspection worker hands in: only its thread count matters here
            counts: list[int] = []

            def set_threads(self, n: int) -> None:
                self.counts.append(n)

        helper = Helper()
        assert app.limit_threads(helper) == spare_threads(1) and helper.counts == [spare_threads(1)]
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.training)
    records = [r for r in read_metrics(out / "metrics.jsonl").records if isinstance(r, ThreadsEvent)]
    assert [(r.threads, r.reason) for r in records] == [(1, "fixed")]

"""Pilot tests of minigpt-tui: the app drives a tiny model on a tiny corpus, as a user would."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from conftest import tiny_config
from rich.console import Console
from textual.widgets import DataTable, Input, Static, TextArea

from minigpt_tui.checkpoint import load_checkpoint
from minigpt_tui.runs import open_run, read_metrics
from minigpt_tui.tui.app import create_app
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
        await pilot.press("p")
        assert app.trainer.paused and app.pane.status.state.startswith("paused")
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


async def test_continue_training_an_opened_run(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        await pilot.press("c")
        await wait_until(pilot, lambda: app.pane.status.step == 16 and not app.training)
        assert app.pane.status.state == "finished"
    assert max(r.step for r in read_metrics(trained_run / "metrics.jsonl").records) == 16


@pytest.mark.parametrize("run_dir", ["missing-run", "."])
async def test_a_bad_run_folder_is_a_notification_not_a_crash(tmp_path: Path, run_dir: str):
    app = create_app(tmp_path / run_dir, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert any("run folder not found" in m or "not a minigpt run folder" in m for m in notifications(app))
        assert app.query_one("#train-switcher").current == "form"


def test_train_without_headless_refuses_resume_options_for_the_tui(trained_run: Path):
    from click.testing import CliRunner

    from minigpt_tui.cli import main

    result = CliRunner().invoke(main, ["train", "--resume", str(trained_run), "--max-iters", "20"])
    assert result.exit_code == 2
    assert "add --headless to resume with options" in result.output

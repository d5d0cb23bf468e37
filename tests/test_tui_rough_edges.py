"""The rough edges a first trial of the app found, each pinned by a test that failed before its fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config, train_tiny
from test_plots import write_run
from test_tui_app import ENDLESS, FAST, text_of, wait_until
from textual.widgets import Button, DataTable, Input, Select, Static

from minigpt_tui.training.events import StepEvent
from minigpt_tui.training.runs import Metrics, open_run, read_metrics
from minigpt_tui.tui.app import create_app

pytestmark = pytest.mark.anyio
TOGGLES = ("l", "o", "l", "b", "o", "l", "b", "o", "l")  # log y across every lower plot, bpc and ppl


def plots_drawn(app) -> None:
    from textual_plotext import PlotextPlot

    for plot in app.query(PlotextPlot):
        for _ in range(2):  # what the next screen refreshes do, with no new data in between
            assert "could not be drawn" not in str(plot.render())


async def test_log_y_with_every_lower_plot_on_a_finished_run(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for key in TOGGLES:
            await pilot.press(key)
            await pilot.pause()
            plots_drawn(app)
        assert app.return_code is None


async def test_log_y_during_training_keeps_the_run_going(tmp_path: Path, corpus_path: Path):
    app = create_app(config=tiny_config(max_iters=100_000, eval_interval=5), data=corpus_path, out=tmp_path / "run",
                     **FAST)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.pane.curves.eval_steps) >= 2)
        for key in TOGGLES:
            await pilot.press(key)
            await pilot.pause(0.05)
            plots_drawn(app)
        step = app.trainer.step
        await wait_until(pilot, lambda: app.trainer.step > step)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.training)


async def test_a_plot_that_plotext_cannot_build_says_so_instead_of_crashing(trained_run: Path, caplog):
    from minigpt_tui.tui.guarded_plot import GuardedPlot

    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        plot = app.query_one("#loss-plot", GuardedPlot)

        def broken():
            raise IndexError("list index out of range")

        plot.plt.build = broken
        assert "could not be drawn: IndexError" in str(plot.render())
        assert plot.failure and app.return_code is None
    assert any(r.exc_info for r in caplog.records if r.name == "minigpt_tui")


FIELDS = {"g": ("#prompt", "#temperature", "#top-k", "#top-p", "#length", "#seed"),
          "a": ("#temperatures", "#samples", "#ablation-length"),
          "i": ("#inspect-text", "#inspect-temperature", "#inspect-top-k", "#inspect-top-p", "#inspect-layer",
                "#inspect-head")}


async def test_escape_leaves_every_field_and_the_view_keys_work_again(trained_run: Path):
    app = create_app(trained_run, config=tiny_config(), **FAST)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for opener, fields in FIELDS.items():
            for field in fields:
                await pilot.press(opener)
                app.query_one(field, Input).focus()
                await pilot.press("escape", "t")
                assert app.query_one("#tabs").active == "train-tab", field
        await pilot.press("n")
        for field in ("#out", "#max_iters", "#learning_rate", "#vocab_size"):
            widget = app.query_one(field, Input)
            widget.disabled = False
            widget.focus()
            await pilot.press("escape", "g")
            assert app.query_one("#tabs").active == "generate-tab", field
            await pilot.press("escape", "n")


async def test_the_form_offers_tokenizer_vocab_size_optimizer_and_every_preset(tmp_path: Path, corpus_path: Path):
    from minigpt_tui.training.config import PRESETS

    out = tmp_path / "bpe-run"
    app = create_app(config=tiny_config(max_iters=4, eval_interval=2), data=corpus_path, out=out, **FAST)
    async with app.run_test(size=(100, 40)) as pilot:
        form = app.query_one("#form")
        assert set(PRESETS) <= {value for _, value in app.query_one("#preset", Select)._options}
        assert app.query_one("#vocab_size", Input).disabled  # a character vocabulary is the alphabet
        app.query_one("#preset", Select).value = "speedrun"
        await pilot.pause()
        assert app.query_one("#optimizer", Select).value == "muon"  # the preset's optimizer comes with it
        app.query_one("#preset", Select).value = "custom"
        await pilot.pause()
        app.query_one("#tokenizer", Select).value = "bpe"
        await pilot.pause()
        assert not app.query_one("#vocab_size", Input).disabled
        app.query_one("#vocab_size", Input).value = "12"
        await pilot.pause()
        assert "vocab_size must be in [256" in text_of(app.query_one("#form-error", Static))
        app.query_one("#vocab_size", Input).value = "300"
        app.query_one("#optimizer", Select).value = "muon"
        await pilot.pause()
        config = form.validate()
        assert (config.tokenizer, config.model.vocab_size, config.optim.optimizer) == ("bpe", 300, "muon")
        app.query_one("#start", Button).press()
        await wait_until(pilot, lambda: app.run_info is not None and not app.training)
    run = open_run(out)
    assert run.config.tokenizer == "bpe" and run.config.optim.optimizer == "muon"


async def test_a_new_run_starts_with_a_fresh_status_panel(trained_run: Path, corpus_path: Path, tmp_path: Path,
                                                         monkeypatch):
    import threading

    from minigpt_tui.tui import app as app_module

    prepared = threading.Event()
    real = app_module.new_training
    monkeypatch.setattr(app_module, "new_training", lambda *a, **k: prepared.wait(30) and real(*a, **k))
    app = create_app(trained_run, config=tiny_config(**ENDLESS), data=corpus_path, out=tmp_path / "new", **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert app.pane.status.best_val_loss is not None and app.pane.status.saved == "-"
        app.pane.status.saved = "best @ 8"
        await pilot.press("n")
        app.query_one("#start", Button).press()
        await pilot.pause()
        status = app.pane.status
        assert status.run == "new" and status.best_val_loss is None and status.saved == "-"
        assert status.elapsed_s is None and status.tokens_per_s is None and status.step == 0
        prepared.set()
        await wait_until(pilot, lambda: app.trainer is not None)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.training)


async def test_the_device_auto_chose_is_recorded_and_shown_on_reopening(tmp_path: Path, corpus_path: Path):
    out = tmp_path / "run"
    train_tiny(out, corpus_path, tiny_config(device="auto"))
    recorded = json.loads((out / "config.json").read_text())["device_used"]
    assert recorded in ("cpu", "cuda:0", "mps")
    app = create_app(out, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert app.pane.status.device == recorded
        assert "not recorded" not in text_of(app.query_one("#status", Static))


async def test_stopped_at_names_the_checkpoint_step_between_log_lines(tmp_path: Path, corpus_path: Path):
    from minigpt_tui.training.checkpoint import load_state

    out = tmp_path / "run"
    config = tiny_config(max_iters=20, eval_interval=10, log_interval=4)
    holder = {}

    def stop_at_seven(event):
        if isinstance(event, StepEvent) and event.step == 7:
            holder["trainer"].request_stop()

    from minigpt_tui.training.data import read_corpus
    from minigpt_tui.training.trainer import new_training

    trainer = new_training(config, read_corpus(corpus_path), out)
    holder["trainer"] = trainer
    trainer.callbacks.append(stop_at_seven)
    trainer.run()
    assert load_state(out / "checkpoints" / "latest").step == 7
    assert max(r.step for r in read_metrics(out / "metrics.jsonl").records) == 4  # logged every 4 steps
    app = create_app(out, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert app.pane.status.state == "stopped at 7" and app.pane.status.step == 7
        await pilot.press("c")
        assert "from step 7" in str(app.screen.query_one("Label").content)


def step(n: int, elapsed: float, time: float) -> StepEvent:
    return StepEvent(step=n, max_iters=100, loss=2.0, lr=1e-3, grad_norm=1.0, tokens_per_s=1.0, elapsed_s=elapsed,
                     time=time)


def test_elapsed_time_adds_up_across_continues(tmp_path: Path, trained_run: Path):
    from minigpt_tui.tui.training_pane import status_from_metrics

    # two sessions, the second resumed a day later: its elapsed_s starts again at 0
    metrics = Metrics([step(10, 5.0, 1000.0), step(20, 10.0, 1005.0), step(30, 4.0, 87_400.0),
                       step(40, 8.0, 87_404.0)])
    assert metrics.elapsed_s == 18.0
    assert status_from_metrics(open_run(trained_run), metrics).elapsed_s == 18.0


async def test_elapsed_time_keeps_counting_when_the_app_continues_a_run(trained_run: Path):
    earlier = read_metrics(trained_run / "metrics.jsonl").elapsed_s
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.pane.status.step == 16 and not app.training)
        live = app.pane.status.elapsed_s
    total = read_metrics(trained_run / "metrics.jsonl").elapsed_s
    assert live > earlier and total > earlier and math.isclose(live, total, rel_tol=0.05, abs_tol=0.05)


@pytest.fixture
def char_and_bpe_runs(tmp_path: Path, corpus_path: Path) -> list[Path]:
    runs = [tmp_path / "chars", tmp_path / "bpe"]
    train_tiny(runs[0], corpus_path)
    train_tiny(runs[1], corpus_path, tiny_config(tokenizer="bpe", vocab_size=260))
    return runs


async def test_comparing_runs_shows_a_table_bits_per_char_and_each_runs_guessing(char_and_bpe_runs: list[Path]):
    app = create_app(*char_and_bpe_runs, **FAST)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        pane = app.pane
        assert pane.tokenizers_differ()
        title, unit, lines = pane.loss_lines(pane.x_max())
        assert unit == "bits/char" and "tokenizers differ" in title
        assert "tokenizers differ" in text_of(app.query_one("#loss-legend", Static))
        guesses = [line for line in lines if line.label.startswith("guessing")]
        runs = [open_run(path) for path in char_and_bpe_runs]
        assert len(guesses) == 2 and all(name in " ".join(g.label for g in guesses) for name in ("chars", "bpe"))
        from minigpt_tui.training.metrics import bits_per_char

        expected = sorted(bits_per_char(math.log(r.tokenizer.vocab_size), r.tokens_per_char) for r in runs)
        assert sorted(g.ys[0] for g in guesses) == pytest.approx(expected)
        table = text_of(app.query_one("#compare-table", Static))
        for heading in ("best val", "bits/char", "tokens seen", "steps", "wall time"):
            assert heading in table
        for run in runs:
            best = min(read_metrics(run.metrics_path).evals, key=lambda e: e.val_loss)
            row = next(line for line in table.splitlines() if line.strip().startswith(run.path.name))
            assert f"{best.val_loss:.4f}" in row and f"{best.val_bits_per_char:.3f}" in row
            assert f"{8 * run.config.tokens_per_step:,}" in row


async def test_at_80x24_the_legend_is_above_the_plot_not_on_it(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        plot = app.query_one("#loss-plot")
        assert "train (batch)" not in str(plot.render())
        assert "train (batch)" in text_of(app.query_one("#loss-legend", Static))
        assert plot.size.height >= 4  # room for the curves


async def test_the_ablation_pages_through_every_sample_and_has_a_stop_button(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("a")
        assert str(app.query_one("#stop-ablation", Button).label) == "Stop"
        app.query_one("#temperatures", Input).value = "0.5, 1.5"
        app.query_one("#samples", Input).value = "2"
        app.query_one("#ablation-length", Input).value = "20"
        await pilot.click("#run-ablation")
        await wait_until(pilot, lambda: not app.query_one("#run-ablation").disabled)
        assert app.focused is app.query_one(DataTable)
        rows = app.query_one("#ablation").rows
        shown = []
        for _ in range(4):
            shown.append(text_of(app.query_one("#ablation-sample", Static)))
            await pilot.press("right_square_bracket")
        expected = [(row, i) for row in rows for i in range(2)]
        for text, (row, i) in zip(shown, expected, strict=True):
            assert f"T = {row.temperature:g}" in text and f"sample {i + 1} of 2" in text
            assert row.samples[i].strip().splitlines()[0][:10] in text


async def test_a_sample_drawn_with_a_random_seed_saves_the_seed_it_used(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("g")
        app.query_one("#length", Input).value = "10"
        await pilot.click("#generate")
        await wait_until(pilot, lambda: "done:" in text_of(app.query_one("#generation-source", Static)))
        await pilot.press("ctrl+s")
    header = next((trained_run / "samples").iterdir()).read_text()
    assert "seed random" not in header and " --seed " in header and "# step: 8" in header


# ---- cosmetics


def test_no_negative_tick_for_values_that_are_never_negative():
    from minigpt_tui.plots import axis_limits, value_ticks

    lo, hi = axis_limits([1e-5, 5e-4, 1e-3])
    assert lo >= 0 and all(t >= 0 for t in value_ticks(lo, hi))


def test_no_minus_zero_anywhere():
    from minigpt_tui.inspection.inspector import entropy_bits
    from minigpt_tui.tui.training_pane import tick_label

    assert f"{entropy_bits(np.array([1.0, 0.0, 0.0])):.2f}" == "0.00"
    assert tick_label(-1e-17).strip() == "0" and tick_label(-0.0).strip() == "0"


async def test_the_next_token_axis_scales_to_the_tallest_bar(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("i")
        pane = app.query_one("#inspect")
        await wait_until(pilot, lambda: pane.view is not None)
        tallest = max(max(c.probability, c.sampled) for c in pane.view.candidates)
        top = app.query_one("#inspect-chart").plt._active.monitor.ylim[0][1]
        assert tallest <= top <= max(0.05, tallest * 1.1) + 1e-9


def test_train_and_val_keep_their_colours_in_every_png_and_terminal_plot(tmp_path: Path):
    from minigpt_tui.plots import PNG_COLORS, chart_figure, load_curves, run_charts
    from minigpt_tui.tui.training_pane import TRAIN_COLORS
    charts = run_charts([load_curves(write_run(tmp_path / "run"))])
    for chart in charts.values():
        figure = chart_figure(chart)
        drawn = {line.get_label(): line.get_color() for line in figure.axes[0].get_lines()}
        for label, color in (("train", TRAIN_COLORS[1]), ("val", TRAIN_COLORS[2]), ("train (batch)", TRAIN_COLORS[0])):
            if label in drawn:
                assert drawn[label] == PNG_COLORS[color], (chart.title, label)


def test_the_perplexity_log_axis_labels_the_final_value(tmp_path: Path):
    from minigpt_tui.plots import chart_figure, load_curves, run_charts

    curves = load_curves(write_run(tmp_path / "run"))
    evals = curves.evals
    chart = run_charts([curves])["perplexity"]
    ticks = chart_figure(chart).axes[0].get_yticks(minor=True)
    assert any(math.isclose(t, evals[-1].val_perplexity, rel_tol=1e-6) for t in ticks)


async def test_the_terminal_perplexity_log_axis_has_a_tick_at_the_final_value(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("b", "l")
        await pilot.pause()
        final = math.exp(app.pane.curves.val_loss[-1])
        labels = app.query_one("#quality-plot").plt._active.monitor.ylabels[0]
        assert any(label.strip() == f"{final:.3g}" for label in labels), labels


# ---- a bug that still escapes: a non-zero exit code and the traceback in the log


async def test_an_unhandled_exception_ends_the_app_with_its_traceback_in_the_log(trained_run: Path, caplog):
    app = create_app(trained_run, **FAST)

    def broken() -> None:
        raise RuntimeError("a bug")

    app.action_toggle_log = broken
    with pytest.raises(RuntimeError):
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("l")
            await pilot.pause()
    assert app.return_code == 1 and isinstance(app.crash, RuntimeError)
    assert any(r.exc_info and "internal error" in r.getMessage() for r in caplog.records)


def test_main_exits_non_zero_and_names_the_log_after_a_crash(tmp_path: Path, monkeypatch):
    from click.testing import CliRunner

    from minigpt_tui.tui import app as app_module

    class Crashing:
        return_code = 1

        def run(self):
            try:
                raise RuntimeError("a bug")
            except RuntimeError as exc:
                self.crash = exc
            app_module.log.critical("internal error: the app stopped", exc_info=self.crash)

    monkeypatch.setattr(app_module, "check_terminal", lambda: None)
    monkeypatch.setattr(app_module, "create_app", lambda *a, **k: Crashing())
    log_file = tmp_path / "tui.log"
    try:
        result = CliRunner().invoke(app_module.main, ["--log-file", str(log_file)])
    finally:
        for handler in list(app_module.log.handlers):
            app_module.log.removeHandler(handler)
            handler.close()
    assert result.exit_code == 1
    assert f"the traceback is in {log_file}" in result.output and "RuntimeError: a bug" in result.output
    assert "Traceback" in log_file.read_text() and "RuntimeError: a bug" in log_file.read_text()

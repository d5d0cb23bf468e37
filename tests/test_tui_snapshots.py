"""Snapshots of minigpt-tui's main screens at 80x24 and 160x48 (update with ``pytest --snapshot-update``).

Everything on screen is fixed: the form is prefilled with relative paths, and the opened run is
synthetic (config, tokenizer and a metrics.jsonl written here, with fixed numbers and times).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import make_corpus_text, tiny_config

from minigpt_tui.experiments.temperature import TemperatureRow
from minigpt_tui.training.events import EvalEvent, StepEvent
from minigpt_tui.training.runs import Run, create_run
from minigpt_tui.training.vocabulary import build_tokenizer
from minigpt_tui.tui.ablation_pane import AblationPane
from minigpt_tui.tui.app import create_app

SIZES = [(80, 24), (160, 48)]


def synthetic_run(root: Path, name: str = "demo-run", last_step: int = 200, scale: float = 60) -> Path:
    """A 200-step run (finished unless ``last_step`` stops it early) whose losses follow a smooth decay with
    time constant ``scale`` (no training: the numbers are fixed)."""
    path = root / name
    config = tiny_config(max_iters=200, eval_interval=50)
    tokenizer = build_tokenizer("char", make_corpus_text(), config.model.vocab_size)
    config = config.with_vocab_size(tokenizer.vocab_size)
    create_run(path, Run(path, config, tokenizer, "corpus.txt", 1.0)).release()
    records = []
    for step in range(10, last_step + 1, 10):
        records.append(StepEvent(step=step, max_iters=200, loss=1.4 + 2.8 * math.exp(-step / scale),
                                 lr=3e-3 * (1 - step / 400), grad_norm=1.0 + 0.5 * math.exp(-step / 40),
                                 tokens_per_s=25_000.0, elapsed_s=step * 0.05, time=1000.0 + step * 0.05))
    for step in range(0, last_step + 1, 50):
        val = 1.5 + 2.7 * math.exp(-step / scale)
        records.append(EvalEvent(step=step, train_loss=val - 0.05, val_loss=val, val_perplexity=math.exp(val),
                                 val_bits_per_char=val / math.log(2), train_bits_per_char=(val - 0.05) / math.log(2),
                                 best_val_loss=val, is_best=True, time=1000.0 + step * 0.05))
    records.sort(key=lambda r: (r.step, r.kind == "step"))
    text = "".join(json.dumps(r.to_record()) + "\n" for r in records)
    (path / "metrics.jsonl").write_text(text, encoding="utf-8")
    return path


def form_app():
    return create_app(config=tiny_config(), data=Path("corpus.txt"), out=Path("runs/demo"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_new_run_form(snap_compare, size):
    assert snap_compare(form_app(), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_opened_run(snap_compare, tmp_path: Path, size):
    assert snap_compare(create_app(synthetic_run(tmp_path)), terminal_size=size)


def test_help_screen(snap_compare):
    assert snap_compare(form_app(), press=["question_mark"], terminal_size=(80, 24))


def test_ablation_table(snap_compare, tmp_path: Path):
    rows = [TemperatureRow(t, [f"Good night sweet prince {i}\nthe king laughed"], 1.2 + t, 0.4 + t / 4, 0.6 + t / 5,
                           0.7 + t / 6, 0.2 / t, 0.9 - t / 4, 0.5 + t) for i, t in enumerate((0.5, 1.0, 1.5))]

    async def fill(pilot):
        await pilot.press("a")
        pilot.app.query_one("#temperatures").cursor_blink = False  # a blinking cursor made the snapshot flaky
        pane = pilot.app.query_one(AblationPane)
        for row in rows:
            pane.add_row(row)
        pane.finished("done: samples from the latest checkpoint (step 200)")
        await pilot.pause()

    assert snap_compare(create_app(synthetic_run(tmp_path)), run_before=fill, terminal_size=(160, 48))


def test_training_view_before_the_second_eval(snap_compare, tmp_path: Path):
    """One eval point: whole-step ticks over the run's length on both plots, a readable y window."""
    assert snap_compare(create_app(synthetic_run(tmp_path, last_step=40)), terminal_size=(80, 24))


def test_lower_plot_shows_the_learning_rate(snap_compare, tmp_path: Path):
    assert snap_compare(create_app(synthetic_run(tmp_path)), press=["o"], terminal_size=(100, 32))


def test_overlaid_runs_are_named_in_the_legend(snap_compare, tmp_path: Path):
    runs = [synthetic_run(tmp_path, "fast", scale=40), synthetic_run(tmp_path, "slow", scale=90)]
    assert snap_compare(create_app(*runs), terminal_size=(160, 48))


def test_continue_dialog(snap_compare, tmp_path: Path):
    assert snap_compare(create_app(synthetic_run(tmp_path)), press=["c"], terminal_size=(80, 24))

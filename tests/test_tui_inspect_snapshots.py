"""Snapshots of the Inspect view at 80x24 and 160x48 (update with ``pytest --snapshot-update``).

The run is synthetic and fixed: a char tokenizer, a corpus written here, and a checkpoint of seeded
initial weights scaled up so that the attention is far from uniform (no training, no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_corpus_text, tiny_config

from backends.base import init_weights
from minigpt_tui.training.checkpoint import Checkpoint, TrainingState, save_checkpoint
from minigpt_tui.training.runs import Run, create_run
from minigpt_tui.training.vocabulary import build_tokenizer
from minigpt_tui.tui.app import create_app
from minigpt_tui.tui.inspect_pane import InspectPane

SIZES = [(80, 24), (160, 48)]


def run_with_weights(root: Path) -> Path:
    corpus = root / "corpus.txt"
    corpus.write_text(make_corpus_text(), encoding="utf-8")
    config = tiny_config(max_iters=200, n_layer=2, n_head=4, n_embd=32, block_size=32)
    tokenizer = build_tokenizer("char", corpus.read_text(encoding="utf-8"), config.model.vocab_size)
    config = config.with_vocab_size(tokenizer.vocab_size)
    path = root / "demo-run"
    run = Run(path, config, tokenizer, str(corpus), 1.0)
    create_run(path, run).release()
    weights = {name: w * 40 if w.ndim == 2 else w for name, w in init_weights(config.model, 0).items()}
    state = TrainingState(step=200, kind="latest", backend="torch")
    save_checkpoint(run.checkpoint_dir("latest"), Checkpoint(weights, {}, {}, state))
    return path


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_inspect_view(snap_compare, tmp_path: Path, size):
    async def inspect(pilot):
        await pilot.press("i")
        pane = pilot.app.query_one(InspectPane)
        for _ in range(600):
            if pane.view is not None:
                break
            await pilot.pause(0.05)
        await pilot.press("left", "left", "left")
        pilot.app.query_one("#inspect-temperature").value = "0.7"
        await pilot.pause()

    assert snap_compare(create_app(run_with_weights(tmp_path)), run_before=inspect, terminal_size=size)

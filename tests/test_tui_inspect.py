"""Pilot tests of the Inspect view: the cursor, the sampling settings and the chosen head each change
what is shown; during training it reads a live copy of the weights, refreshed at each evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from test_tui_app import ENDLESS, FAST, set_input, text_of, wait_until
from textual.widgets import Input, Static

from minigpt_tui.tui.app import create_app
from minigpt_tui.tui.inspect_pane import InspectPane, TokenText

pytestmark = pytest.mark.anyio


def table(pane: InspectPane) -> list[tuple[int, float, float]]:
    return [(c.token_id, c.probability, c.sampled) for c in pane.view.candidates]


async def open_inspect(pilot) -> InspectPane:
    await pilot.press("i")
    pane = pilot.app.query_one(InspectPane)
    await wait_until(pilot, lambda: pane.view is not None)
    return pane


async def test_cursor_settings_and_heads_reshape_the_view(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        pane = await open_inspect(pilot)
        text = app.query_one("#inspect-text", Input).value
        assert len(text) >= 16 and pane.cursor == pane.inspection.length - 1  # a val excerpt, cursor at its end
        assert "latest checkpoint" in text_of(app.query_one("#inspect-status", Static))

        # moving the cursor changes the table
        before, position = table(pane), pane.cursor
        await pilot.press("left")
        assert pane.cursor == position - 1 and pane.view.position == position - 1
        assert table(pane) != before
        tokens = app.query_one(TokenText)
        await pilot.click(TokenText, offset=(3, 0))
        row = tokens.rows[tokens.first_row()]
        assert pane.cursor == row[3][0]

        # the temperature reshapes the distribution and its entropy; top-k cuts it
        raw_entropy = pane.view.entropy_bits
        await set_input(pilot, "#inspect-temperature", "0.5")
        assert pane.view.params.temperature == 0.5 and pane.view.entropy_bits < raw_entropy
        assert pane.view.candidates[0].sampled > pane.view.candidates[0].probability
        await set_input(pilot, "#inspect-temperature", "2")
        assert pane.view.entropy_bits > raw_entropy
        await set_input(pilot, "#inspect-top-k", "3")
        assert pane.view.kept == 3 and [c.kept for c in pane.view.candidates[:4]] == [True, True, True, False]
        assert "kept 3" in text_of(app.query_one("#inspect-summary", Static))

        # another head, another layer: other characters lit
        lit = tokens.highlighted()
        await set_input(pilot, "#inspect-head", "1")
        assert pane.attn_head == 1 and tokens.highlighted() != lit
        lit = tokens.highlighted()
        await set_input(pilot, "#inspect-layer", "1")
        assert tokens.highlighted() != lit
        assert "▶H1" in text_of(app.query_one("#inspect-heads", Static))

        # bad settings: a message, the view as it was
        await set_input(pilot, "#inspect-head", "7")
        assert "head 7 does not exist" in text_of(app.query_one("#inspect-status", Static))
        assert pane.attn_head == 1

        # a typed text is read again; characters outside the vocabulary are reported, not raised
        await set_input(pilot, "#inspect-text", "the king")
        await wait_until(pilot, lambda: pane.inspected_text == "the king")
        assert pane.inspection.length == 8
        await set_input(pilot, "#inspect-text", "the ~")
        await wait_until(pilot, lambda: "outside the model's vocabulary" in text_of(app.query_one("#inspect-status")))


async def test_inspect_reads_live_weights_and_refreshes_at_each_eval(tmp_path: Path, corpus_path: Path):
    config = tiny_config(**{**ENDLESS, "eval_interval": 5})
    app = create_app(config=config, data=corpus_path, out=tmp_path / "run", **FAST)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.trainer is not None)
        pane = await open_inspect(pilot)
        assert pane.source.startswith("live copy")
        first_source, first = pane.source, pane.inspection.surprisal_bits.copy()
        await wait_until(pilot, lambda: pane.source != first_source)
        assert pane.source.startswith("live copy")
        assert (pane.inspection.surprisal_bits[1:] != first[1:]).any()  # the weights moved on
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.training)


async def test_toggling_a_head_off_and_on_changes_the_chart_and_the_colours(trained_run: Path):
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await open_inspect(pilot)
        pane.query_one(TokenText).focus()
        before, surprisal = table(pane), pane.inspection.surprisal_bits.copy()
        await pilot.press("x")
        await wait_until(pilot, lambda: table(pane) != before)
        assert pane.ablated == {(0, 0)}
        assert (pane.inspection.surprisal_bits[1:] != surprisal[1:]).any()  # the colours follow the surprisal
        assert "H0✗" in text_of(app.query_one("#inspect-heads", Static))
        assert "off: L0H0" in text_of(app.query_one("#inspect-status", Static))
        assert text_of(app.query_one("#inspect-lens", Static)).startswith("lens E:")
        await pilot.press("x")
        await wait_until(pilot, lambda: not pane.ablated and table(pane) == before)


async def test_the_step_slider_scrubs_the_weights_through_the_snapshots(trained_run: Path):
    from minigpt_tui.training.runs import open_run, snapshot_steps

    steps = snapshot_steps(open_run(trained_run))
    assert len(steps) >= 3
    app = create_app(trained_run, **FAST)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await open_inspect(pilot)
        pane.query_one(TokenText).focus()
        current = pane.model[0].get_weights()["wte.weight"]
        assert "current weights" in text_of(app.query_one("#inspect-steps", Static))
        for step in reversed(steps):
            await pilot.press("left_square_bracket")
            await wait_until(pilot, lambda step=step: pane.source == f"snapshot (step {step})")
        assert pane.snapshot == steps[0] == 0
        first = pane.model[0].get_weights()["wte.weight"]
        assert not np.array_equal(first, current)  # the weights shown moved back to the start of training
        assert "step 0" in text_of(app.query_one("#inspect-steps", Static))
        for _ in steps:
            await pilot.press("right_square_bracket")
        await wait_until(pilot, lambda: pane.snapshot is None and pane.source.startswith("latest checkpoint"))
        np.testing.assert_array_equal(pane.model[0].get_weights()["wte.weight"], current)

"""Saving a sample or an ablation table into the run folder."""

from __future__ import annotations

import pytest

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.keepsakes import save_sample, save_temperature_table
from minigpt_tui.experiments.temperature import TemperatureRow


def test_samples_are_saved_side_by_side_never_overwritten(tmp_path):
    first = save_sample(tmp_path, "ROMEO: hello", "latest checkpoint (step 8), T=0.8")
    second = save_sample(tmp_path, "JULIET: hi", "latest checkpoint (step 8), T=0.8")
    assert first != second and first.parent == second.parent == tmp_path / "samples"
    assert first.read_text() == "# latest checkpoint (step 8), T=0.8\nROMEO: hello\n"
    with pytest.raises(MiniGPTError, match="generate a sample first"):
        save_sample(tmp_path, "  \n", "x")


def test_the_ablation_table_is_saved_as_markdown(tmp_path):
    row = TemperatureRow(0.5, ["the king"], 1.2, 0.4, 0.6, 0.7, 0.048, 0.818, 1.0)
    path = save_temperature_table(tmp_path, [row], "the latest checkpoint (step 8)")
    text = path.read_text()
    assert path.parent == tmp_path / "ablations"
    assert "| 0.5 | 1.200 |" in text and "4.8%" in text and "81.8%" in text and "the king" in text
    with pytest.raises(MiniGPTError, match="run the ablation first"):
        save_temperature_table(tmp_path, [], "x")

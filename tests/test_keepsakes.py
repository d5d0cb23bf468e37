"""Saving a sample or an ablation table into the run folder."""

from __future__ import annotations

import pytest

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.keepsakes import AblationRecipe, SampleRecipe, save_sample, save_temperature_table
from minigpt_tui.experiments.temperature import TemperatureRow
from minigpt_tui.training.sampling import SamplingParams

RECIPE = SampleRecipe("latest checkpoint (step 8)", 8, "latest", "ROMEO:", 40, SamplingParams(0.8, 5, 0.9), 1234)


def test_samples_are_saved_side_by_side_never_overwritten(tmp_path):
    first = save_sample(tmp_path, "ROMEO: hello", RECIPE)
    second = save_sample(tmp_path, "JULIET: hi", RECIPE)
    assert first != second and first.parent == second.parent == tmp_path / "samples"
    assert first.read_text().endswith("\nROMEO: hello\n")
    with pytest.raises(MiniGPTError, match="generate a sample first"):
        save_sample(tmp_path, "  \n", RECIPE)
    with pytest.raises(MiniGPTError, match="generate a sample first"):
        save_sample(tmp_path, "text typed but never generated", None)


def test_a_saved_sample_records_everything_that_made_it(tmp_path):
    header = save_sample(tmp_path, "ROMEO: hello", RECIPE).read_text().split("ROMEO: hello")[0]
    for fact in ("weights: latest checkpoint (step 8)", "step: 8", "prompt: 'ROMEO:'", "length: 40",
                 "temperature 0.8, top-k 5, top-p 0.9, seed 1234"):
        assert f"# {fact}\n" in header, fact
    assert (f"minigpt sample {tmp_path} --checkpoint latest --prompt ROMEO: --max-new-tokens 40 --temperature 0.8 "
            "--seed 1234 --top-k 5 --top-p 0.9") in header
    newline = SampleRecipe("live copy (step ~3)", 3, None, "a\nb", 5, SamplingParams(1.0), 7)
    header = save_sample(tmp_path, "a\nb!", newline).read_text()
    assert header.startswith("# weights: live copy (step ~3)\n# step: 3\n# prompt: 'a\\nb'\n")
    assert "cannot be redrawn" in header and "minigpt sample" not in header


def test_the_ablation_table_is_saved_as_markdown(tmp_path):
    row = TemperatureRow(0.5, ["the king"], 1.2, 0.4, 0.6, 0.7, 0.048, 0.818, 1.0)
    recipe = AblationRecipe("the latest checkpoint (step 8)", 8, "\n", 3, 200, 0)
    path = save_temperature_table(tmp_path, [row], recipe)
    text = path.read_text()
    assert path.parent == tmp_path / "ablations"
    assert "| 0.5 | 1.200 |" in text and "4.8%" in text and "81.8%" in text and "the king" in text
    assert "step 8, prompt '\\n', 3 samples of 200 tokens per temperature, sample i with seed 0 + i" in text
    with pytest.raises(MiniGPTError, match="run the ablation first"):
        save_temperature_table(tmp_path, [], recipe)

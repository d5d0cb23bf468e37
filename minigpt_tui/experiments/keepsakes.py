"""Keeping what the app showed: a generated sample or a temperature-ablation table, saved into the run folder."""

from __future__ import annotations

import time
from pathlib import Path

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.temperature import TemperatureRow, sample_table_markdown, temperature_table_markdown
from minigpt_tui.storage import atomic_write_text

SAMPLES_DIR = "samples"
ABLATIONS_DIR = "ablations"


def unused_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem-<time>suffix``, never an existing file (two saves in one second get -2, -3...)."""
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = folder / f"{base}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{n}{suffix}"
    return path


def save_sample(run_dir: Path, text: str, settings: str) -> Path:
    """The sample as text, after a header line saying which weights and sampling settings made it."""
    if not text.strip():
        raise MiniGPTError("nothing to save yet: generate a sample first")
    path = unused_path(Path(run_dir) / SAMPLES_DIR, "sample", ".txt")
    atomic_write_text(path, f"# {settings}\n{text}\n")
    return path


def save_temperature_table(run_dir: Path, rows: list[TemperatureRow], source: str) -> Path:
    """The ablation's table and first samples as Markdown, as ``minigpt ablate temperature`` writes them."""
    if not rows:
        raise MiniGPTError("nothing to save yet: run the ablation first")
    path = unused_path(Path(run_dir) / ABLATIONS_DIR, "temperature", ".md")
    atomic_write_text(path, f"## Temperature ablation\n\nSamples from {source}.\n\n" + temperature_table_markdown(rows)
                      + "\n## Samples (first of each temperature)\n\n" + sample_table_markdown(rows))
    return path

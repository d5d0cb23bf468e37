"""Keeping what the app showed: a generated sample or a temperature-ablation table, saved into the run folder."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.temperature import TemperatureRow, sample_table_markdown, temperature_table_markdown
from minigpt_tui.storage import atomic_write_text
from minigpt_tui.training.sampling import SamplingParams

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


def shell_quote(text: str) -> str:
    """``text`` as one shell word on one line: a newline becomes ``$'\\n'`` quoting (bash, zsh)."""
    if "\n" not in text:
        return shlex.quote(text)
    return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


@dataclass(frozen=True)
class SampleRecipe:
    """Everything that made a sample: with a checkpoint's weights, ``minigpt sample`` makes it again."""

    source: str  # which weights, in words: "latest checkpoint (step 8)", "live copy of the training weights ..."
    step: int  # the weights' training step
    checkpoint: str | None  # "latest" or "best" when the weights are a checkpoint's, None for a live copy
    prompt: str
    length: int  # tokens generated
    params: SamplingParams
    seed: int  # the seed actually used (a random one is drawn and kept when none was given)

    def header(self, run_dir: Path) -> str:
        p = self.params
        lines = [f"weights: {self.source}", f"step: {self.step}", f"prompt: {self.prompt!r}", f"length: {self.length}",
                 f"temperature {p.temperature:g}, top-k {p.top_k or 'all'}, top-p {p.top_p or 1.0:g}, seed {self.seed}"]
        if self.checkpoint is not None:
            flags = [f"--checkpoint {self.checkpoint}", f"--prompt {shell_quote(self.prompt)}",
                     f"--max-new-tokens {self.length}", f"--temperature {p.temperature:g}", f"--seed {self.seed}"]
            flags += [f"--top-k {p.top_k}"] if p.top_k else []
            flags += [f"--top-p {p.top_p:g}"] if p.top_p else []
            lines.append(f"again (while the checkpoint is at step {self.step}): "
                         f"minigpt sample {shlex.quote(str(run_dir))} {' '.join(flags)}")
        else:
            lines.append("the live training weights were not saved as they were: this exact sample cannot be redrawn")
        return "".join(f"# {line}\n" for line in lines)


def save_sample(run_dir: Path, text: str, recipe: SampleRecipe | None) -> Path:
    """The sample as text, after header lines saying which weights and settings made it and how to redraw it."""
    if not text.strip() or recipe is None:
        raise MiniGPTError("nothing to save yet: generate a sample first")
    path = unused_path(Path(run_dir) / SAMPLES_DIR, "sample", ".txt")
    atomic_write_text(path, f"{recipe.header(run_dir)}{text}\n")
    return path


@dataclass(frozen=True)
class AblationRecipe:
    """What made an ablation's samples: sample i of every temperature used seed + i."""

    source: str
    step: int
    prompt: str
    samples: int
    length: int
    seed: int

    def markdown(self) -> str:
        return (f"Samples from {self.source}: step {self.step}, prompt {self.prompt!r}, {self.samples} samples of "
                f"{self.length} tokens per temperature, sample i with seed {self.seed} + i.\n")


def save_temperature_table(run_dir: Path, rows: list[TemperatureRow], recipe: AblationRecipe | None) -> Path:
    """The ablation's table and first samples as Markdown, as ``minigpt ablate temperature`` writes them."""
    if not rows or recipe is None:
        raise MiniGPTError("nothing to save yet: run the ablation first")
    path = unused_path(Path(run_dir) / ABLATIONS_DIR, "temperature", ".md")
    atomic_write_text(path, f"## Temperature ablation\n\n{recipe.markdown()}\n" + temperature_table_markdown(rows)
                      + "\n## Samples (first of each temperature)\n\n" + sample_table_markdown(rows))
    return path

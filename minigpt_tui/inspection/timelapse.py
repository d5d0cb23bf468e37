"""How the model learned: the run's snapshots (its weights at every evaluation) read one after another.

At each snapshot: a sample from a fixed prompt and seed, the mean surprisal of each kind of character over
the same validation windows, and, on one text, the attention of the heads that matter most at the end of
training (ranked by zero-ablation on the last snapshot). Spaces, word shapes and names show up in the
samples; the word-start and after-newline surprisal fall when the model learns them; a head's attention
sharpens when it forms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.inspection.head_ablation import CHAR_CLASSES, Windows, head_importance
from minigpt_tui.inspection.inspector import LN2, inspect_text
from minigpt_tui.training.runs import Run, model_at, snapshot_steps
from minigpt_tui.training.sampling import SamplingParams, generate_text

SAMPLE_SEED = 0
TOP_HEADS = 2


@dataclass(frozen=True)
class Frame:
    """One snapshot."""

    step: int
    sample: str
    val_loss: float  # nats per token over the windows
    class_bits: dict[str, float]  # mean surprisal per CHAR_CLASSES over the windows
    attention: np.ndarray  # (heads, T, T): the top heads' attention on the text

    def to_dict(self) -> dict:
        return {"step": self.step, "sample": self.sample, "val_loss": self.val_loss, "class_bits": self.class_bits,
                "attention": self.attention.tolist()}


@dataclass(frozen=True)
class Timelapse:
    text: str
    pieces: list[str]
    heads: list[tuple[int, int]]  # (layer, head), most important first (at the last snapshot)
    head_delta_loss: list[float]  # their zero-ablation delta loss at the last snapshot
    frames: list[Frame]

    def to_dict(self) -> dict:
        return {"text": self.text, "pieces": self.pieces, "heads": [list(h) for h in self.heads],
                "head_delta_loss": self.head_delta_loss, "classes": list(CHAR_CLASSES),
                "frames": [frame.to_dict() for frame in self.frames]}


def timelapse(run: Run, val_tokens: np.ndarray, text: str, *, prompt: str = "\n", sample_tokens: int = 120,
              windows: int = 16, top_heads: int = TOP_HEADS, backend: str | None = None,
              device: str | None = None) -> Timelapse:
    """Read every snapshot of ``run``; MiniGPTError when it has none."""
    steps = snapshot_steps(run)
    if not steps:
        raise MiniGPTError(f"run {run.path} has no snapshots (train it with --snapshots)")
    data = Windows.of(val_tokens, run.config.model.block_size, windows, run.tokenizer)
    final, _ = model_at(run, step=steps[-1], backend=backend, device=device)
    ranked = head_importance(final, run.tokenizer, val_tokens, windows=windows).ranked()[:top_heads]
    heads = [(layer, head) for layer, head, _ in ranked]
    counts = data.classes.sum(0)
    frames = []
    for step in steps:
        model, _ = model_at(run, step=step, backend=backend, device=device)
        sample = "".join(generate_text(model, run.tokenizer, prompt, sample_tokens, SamplingParams(1.0),
                                       seed=SAMPLE_SEED))
        losses = data.losses(model)
        sums = (losses[:, None] * data.classes).sum(0)
        class_bits = {name: float(sums[k] / counts[k] / LN2) if counts[k] else float("nan")
                      for k, name in enumerate(CHAR_CLASSES)}
        inspection = inspect_text(model, run.tokenizer, text)
        attention = np.stack([inspection.attention[layer, head] for layer, head in heads]) if heads else \
            np.zeros((0, inspection.length, inspection.length))
        frames.append(Frame(step, sample, float(losses.mean()), class_bits, attention))
    pieces = inspect_text(final, run.tokenizer, text).pieces
    return Timelapse(text, pieces, heads, [delta for _, _, delta in ranked], frames)

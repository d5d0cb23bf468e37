"""Reading a corpus from disk, splitting it, and drawing reproducible random batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import read_input_bytes
from minigpt_tui.training.datasets import Corpus

TRAIN_FRACTION = 0.9


def read_corpus(path: Path) -> Corpus:
    """A UTF-8 text file, or every ``.txt`` file of a folder (sorted, joined by blank lines)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*.txt") if f.is_file())
        if not files:
            raise MiniGPTError(f"folder {path} holds no .txt files")
    elif path.is_file():
        files = [path]
    elif path.exists():  # a FIFO, a device such as /dev/null, a socket
        raise MiniGPTError(f"corpus {path} is not a regular file or folder (a pipe or a device?)")
    else:
        raise MiniGPTError(f"corpus not found: {path}")
    texts = [_read_text(f) for f in files]
    text = "\n\n".join(texts)
    if not text.strip():
        raise MiniGPTError(f"corpus {path} is empty")
    return Corpus(text, str(path.resolve()))  # absolute: later commands may run from elsewhere


def _read_text(path: Path) -> str:
    try:
        data = read_input_bytes(path, "corpus", limit=None)  # checked again when opened: a FIFO never ends
    except OSError as exc:
        raise MiniGPTError(f"cannot read corpus {path}: {exc.strerror}") from None
    if b"\x00" in data:
        raise MiniGPTError(f"{path} looks binary (it contains NUL bytes), not a text corpus")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MiniGPTError(f"{path} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None


def split_text(text: str) -> tuple[str, str]:
    """Contiguous split: the first 90% trains, the last 10% validates."""
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


@dataclass
class TokenData:
    train: np.ndarray  # int64 token ids
    val: np.ndarray

    def check_fits(self, block_size: int) -> None:
        for split, tokens in (("train", self.train), ("val", self.val)):
            if len(tokens) <= block_size:
                raise MiniGPTError(
                    f"the {split} split has {len(tokens)} tokens, too few for a context of {block_size}"
                    " (use a longer corpus or a smaller --block-size)"
                )


class BatchSampler:
    """Random (B, T) windows from one split, driven by its own seeded generator."""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int) -> None:
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = block_size
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(block_size + 1)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        starts = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        windows = self.tokens[starts[:, None] + self._offsets]
        return windows[:, :-1], windows[:, 1:]

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def sequential_windows(tokens: np.ndarray, block_size: int, batch_size: int):
    """Every token of ``tokens`` predicted exactly once: non-overlapping windows, (inputs, targets, n)."""
    n_targets = len(tokens) - 1
    starts = list(range(0, n_targets, block_size))
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        length = min(block_size, n_targets - chunk[-1])
        full = [s for s in chunk if s + block_size <= n_targets]
        if full:
            idx = np.asarray(full)[:, None] + np.arange(block_size + 1)
            windows = tokens[idx]
            yield windows[:, :-1], windows[:, 1:]
        if len(full) < len(chunk):  # the last, shorter window
            tail = tokens[chunk[-1] : chunk[-1] + length + 1]
            yield tail[None, :-1], tail[None, 1:]

"""The tokenizer interface, and the character tokenizer built from the training text.

Byte-level BPE lives in ``bpe``; choosing, building and reading a run's tokenizer in ``vocabulary``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from minigpt_tui.errors import MiniGPTError


class Tokenizer(ABC):
    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; MiniGPTError naming what the vocabulary cannot represent."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def to_json(self) -> str: ...

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def save(self, path: Path) -> None:
        from minigpt_tui.storage import atomic_write_text

        atomic_write_text(Path(path), self.to_json())


def check_utf8(text: str) -> str:
    """``text`` if it is valid Unicode. A command line of bytes that are not UTF-8 reaches Python as lone
    surrogates (``surrogateescape``); no tokenizer can encode those, and a byte-level one would crash."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = text[exc.start:exc.end].encode("utf-8", "surrogateescape")
        raise MiniGPTError(f"the text is not valid UTF-8 (bytes {raw!r} at character {exc.start})") from None
    return text


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str]) -> None:
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            check_utf8(text)  # bytes from the command line that are not UTF-8: said as that
            unknown = sorted({c for c in text if c not in self.index})
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise MiniGPTError(
                f"the text has {len(unknown)} character(s) outside the model's vocabulary: {shown}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)

"""Tokenizers: characters (built from the training text) and byte-level BPE (``tokenizers``)."""

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
            unknown = sorted({c for c in text if c not in self.index})
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise MiniGPTError(
                f"the text has {len(unknown)} character(s) outside the model's vocabulary: {shown}"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)


def tokenizer_from_json(text: str) -> Tokenizer:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MiniGPTError(f"tokenizer file is not valid JSON: {exc}") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "char":
        chars = data.get("chars")
        if not (isinstance(chars, list) and chars and all(isinstance(c, str) and len(c) == 1 for c in chars)
                and len(set(chars)) == len(chars)):
            raise MiniGPTError("tokenizer file is corrupt: field chars must list distinct single characters")
        return CharTokenizer(chars)
    if kind == "bpe":
        from minigpt_tui.bpe import BPETokenizer

        return BPETokenizer.from_dict(data)
    raise MiniGPTError("tokenizer file is not a minigpt tokenizer (expected type 'char' or 'bpe')")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return tokenizer_from_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MiniGPTError(f"cannot read tokenizer {path}: it is missing") from None
    except UnicodeDecodeError:
        raise MiniGPTError(f"cannot read tokenizer {path}: not UTF-8 text") from None
    except OSError as exc:  # a folder in its place, no permission
        raise MiniGPTError(f"cannot read tokenizer {path}: {exc.strerror or exc}") from None


def build_tokenizer(kind: str, train_text: str, vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.from_text(train_text)
    from minigpt_tui.bpe import BPETokenizer

    return BPETokenizer.train(train_text, vocab_size)

"""A run's vocabulary: build the tokenizer its config names (char or BPE) from the train split, or read it
back from ``tokenizer.json``. The one module that knows both kinds, so ``tokenizer`` and ``bpe`` need not
know each other."""

from __future__ import annotations

import json
from pathlib import Path

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import read_input_bytes
from minigpt_tui.training.tokenizer import CharTokenizer, Tokenizer


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
        from minigpt_tui.training.bpe import BPETokenizer  # lazily: the tokenizers library is slow to import

        return BPETokenizer.from_dict(data)
    raise MiniGPTError("tokenizer file is not a minigpt tokenizer (expected type 'char' or 'bpe')")


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return tokenizer_from_json(read_input_bytes(Path(path), "tokenizer").decode("utf-8"))
    except FileNotFoundError:
        raise MiniGPTError(f"cannot read tokenizer {path}: it is missing") from None
    except UnicodeDecodeError:
        raise MiniGPTError(f"cannot read tokenizer {path}: not UTF-8 text") from None
    except OSError as exc:  # a folder in its place, no permission
        raise MiniGPTError(f"cannot read tokenizer {path}: {exc.strerror or exc}") from None


def build_tokenizer(kind: str, train_text: str, vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.from_text(train_text)
    from minigpt_tui.training.bpe import BPETokenizer

    return BPETokenizer.train(train_text, vocab_size)

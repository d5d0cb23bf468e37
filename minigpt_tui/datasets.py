"""Named corpora: tiny Shakespeare (local copy, cache, or a checksummed download) and the Python docs."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write_bytes

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "tinyshakespeare.txt"
DATASETS = ("shakespeare", "python-docs")


@dataclass(frozen=True)
class Corpus:
    text: str
    source: str  # a path or a description, shown to the user and stored with the run


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minigpt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_verified(url: str, expected_sha256: str, destination: Path, timeout: float = 10.0) -> bytes:
    """Fetch ``url``, check its sha256, then store it atomically; MiniGPTError on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except OSError as exc:
        raise MiniGPTError(f"download of {url} failed: {exc}") from None
    if sha256(data) != expected_sha256:
        raise MiniGPTError(f"download of {url} is corrupt (sha256 mismatch); nothing was saved")
    atomic_write_bytes(destination, data)
    return data


def find_shakespeare(url: str = SHAKESPEARE_URL, timeout: float = 10.0) -> Path:
    """``$MINIGPT_DATA_DIR``, then the user cache folder, then a verified download into the cache."""
    candidates = []
    if os.environ.get("MINIGPT_DATA_DIR"):
        candidates.append(Path(os.environ["MINIGPT_DATA_DIR"]) / SHAKESPEARE_FILE)
    cached = cache_dir() / SHAKESPEARE_FILE
    candidates.append(cached)
    for path in candidates:
        if path.is_file() and sha256(path.read_bytes()) == SHAKESPEARE_SHA256:
            return path
    download_verified(url, SHAKESPEARE_SHA256, cached, timeout)
    return cached


def python_docs_text() -> str:
    """The reference manual's topic texts, shipped inside CPython: always available offline."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def load_dataset(name: str) -> Corpus:
    if name == "shakespeare":
        path = find_shakespeare()
        return Corpus(path.read_text(encoding="utf-8"), str(path))
    if name == "python-docs":
        return Corpus(python_docs_text(), "python-docs (pydoc_data.topics)")
    raise MiniGPTError(f"unknown dataset {name!r} (available: {', '.join(DATASETS)})")


def default_corpus() -> tuple[Corpus, str]:
    """Tiny Shakespeare when it can be had, else the Python docs; with a one-line note saying which."""
    try:
        corpus = load_dataset("shakespeare")
        return corpus, f"no --data/--dataset: using tiny Shakespeare ({corpus.source})"
    except MiniGPTError as exc:
        return load_dataset(
            "python-docs"
        ), f"no --data/--dataset: tiny Shakespeare unavailable ({exc}); using python-docs"

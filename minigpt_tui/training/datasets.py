"""Named corpora, both offline: tiny Shakespeare (bundled with the package) and the Python docs (inside CPython)."""

from __future__ import annotations

import hashlib
import lzma
from dataclasses import dataclass
from importlib import resources

from minigpt_tui.errors import MiniGPTError

# Karpathy's char-rnn tiny Shakespeare (public domain), shipped xz-compressed as package data so the
# default corpus, and every figure in the README, is the same on every machine, with or without a network
SHAKESPEARE_RESOURCE = "corpora/tinyshakespeare.txt.xz"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"  # of the decompressed text
SHAKESPEARE_SOURCE = "shakespeare (bundled)"
PYTHON_DOCS_SOURCE = "python-docs (pydoc_data.topics)"
DATASETS = ("shakespeare", "python-docs")


@dataclass(frozen=True)
class Corpus:
    text: str
    source: str  # a path or a named dataset's description, shown to the user and stored with the run


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundled_shakespeare() -> str:
    """The bundled text, checked against its sha256: a damaged install is an error, never another corpus."""
    resource = resources.files("minigpt_tui").joinpath(SHAKESPEARE_RESOURCE)
    try:
        data = lzma.decompress(resource.read_bytes())
    except (OSError, lzma.LZMAError) as exc:
        raise MiniGPTError(f"the bundled tiny Shakespeare ({resource}) cannot be read ({exc}); "
                           "reinstall minigpt (pip install -e .)") from None
    if sha256(data) != SHAKESPEARE_SHA256:
        raise MiniGPTError(f"the bundled tiny Shakespeare ({resource}) is damaged (sha256 mismatch); "
                           "reinstall minigpt (pip install -e .)")
    return data.decode("utf-8")


def python_docs_text() -> str:
    """The reference manual's topic texts, shipped inside CPython: always available offline."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def load_dataset(name: str) -> Corpus:
    if name == "shakespeare":
        return Corpus(bundled_shakespeare(), SHAKESPEARE_SOURCE)
    if name == "python-docs":
        return Corpus(python_docs_text(), PYTHON_DOCS_SOURCE)
    raise MiniGPTError(f"unknown dataset {name!r} (available: {', '.join(DATASETS)})")


def dataset_of_source(source: str) -> str | None:
    """The named dataset a run's stored ``data_source`` refers to, or None for a file or folder."""
    return {SHAKESPEARE_SOURCE: "shakespeare", PYTHON_DOCS_SOURCE: "python-docs"}.get(source)


def default_corpus() -> tuple[Corpus, str]:
    """The bundled tiny Shakespeare, with a one-line note saying so."""
    return load_dataset("shakespeare"), "no --data/--dataset: using the bundled tiny Shakespeare"

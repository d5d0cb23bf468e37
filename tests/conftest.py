"""Shared fixtures: a small generated corpus, a tiny config and a helper that trains a tiny run."""

from __future__ import annotations

import os
import random
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from hypothesis import settings

from minigpt_tui.training.config import TrainConfig, preset

# transformers (tests/test_hf_interop.py) reads these when it is imported: local folders only, never a hub
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# the commands' --threads default (auto) would measure thread counts in every CLI test; tests of auto ask for it
os.environ["MINIGPT_THREADS"] = "1"

# the same examples on every run: a property test never fails by luck in CI (HYPOTHESIS_PROFILE=explore to search)
settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

WORDS = (
    "the king and queen walked into the garden where roses grew by the old stone wall "
    "a small bird sang of summer rain while the river ran quietly to the sea "
    "good night sweet prince said the fool and every lord laughed at his jest"
).split()


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path_factory):
    """Tests never touch the network or the user's cache: only loopback URLs open, caches are temporary."""
    real_urlopen = urllib.request.urlopen

    def loopback_only(url, *args, **kwargs):
        full_url = url.full_url if isinstance(url, urllib.request.Request) else url
        if urlsplit(full_url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"network access is disabled in tests ({full_url})")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", loopback_only)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


def make_corpus_text(n_lines: int = 120, seed: int = 0) -> str:
    """Repeated, varied English-ish lines (a few KB) whose characters all occur in both splits."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = rng.choices(WORDS, k=rng.randint(4, 9))
        line = " ".join(words).capitalize()
        lines.append(line + rng.choice([".", ",", "!", "?"]))
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus_text() -> str:
    return make_corpus_text()


@pytest.fixture
def corpus_path(tmp_path: Path, corpus_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


def tiny_config(**changes) -> TrainConfig:
    """The tiny preset cut down further: a few steps of a 2-layer, 32-channel model on CPU."""
    values = dict(max_iters=8, batch_size=4, block_size=16, eval_interval=4, eval_iters=2, log_interval=2,
                  warmup_iters=2, device="cpu")
    values.update(changes)
    return preset("tiny").replace(**values)


@pytest.fixture
def tiny() -> TrainConfig:
    return tiny_config()


def train_tiny(out: Path, corpus_path: Path, config: TrainConfig | None = None, callbacks=()):
    """Train a fresh run into ``out``; return (trainer, done event, every event emitted)."""
    from minigpt_tui.training.data import read_corpus
    from minigpt_tui.training.trainer import new_training

    trainer = new_training(config or tiny_config(), read_corpus(corpus_path), out)
    events = []
    trainer.callbacks.append(events.append)
    trainer.callbacks.extend(callbacks)
    done = trainer.run()
    return trainer, done, events


@pytest.fixture
def trained_run(tmp_path: Path, corpus_path: Path) -> Path:
    """A finished tiny run folder with latest and best checkpoints."""
    out = tmp_path / "run"
    train_tiny(out, corpus_path)
    return out


TINY = ["--preset", "tiny", "--device", "cpu", "--batch-size", "4", "--block-size", "16", "--eval-iters", "1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One corpus and one tiny run trained by the CLI, shared by a test module (copy it before damaging it)."""
    from click.testing import CliRunner

    from minigpt_tui.cli import main

    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text(make_corpus_text(), encoding="utf-8")
    args = ["train", "--headless", *TINY, "--max-iters", "4", "--eval-interval", "2", "--data", str(corpus),
            "--out", str(root / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (result.output, result.stderr)
    return SimpleNamespace(root=root, corpus=corpus, run=root / "run")

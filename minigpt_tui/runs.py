"""Run folders: ``runs/<name>/`` with config, tokenizer, metrics and checkpoints."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from backends import load_backend
from backends.base import Backend
from minigpt_tui.checkpoint import Checkpoint, load_checkpoint
from minigpt_tui.config import TrainConfig, build_config
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write_text
from minigpt_tui.tokenizer import Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


def default_run_dir(root: Path = Path("runs")) -> Path:
    return root / time.strftime("%Y%m%d-%H%M%S")


@dataclass
class Run:
    path: Path
    config: TrainConfig
    tokenizer: Tokenizer
    data_source: str
    tokens_per_char: float  # of the val split: converts per-token loss to bits per character
    world_size: int = 1  # training processes (torchrun); each step sees world_size x the config's batch

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def checkpoint_dir(self, which: str) -> Path:
        return self.path / CHECKPOINTS / which

    def has_checkpoint(self, which: str = "latest") -> bool:
        folder = self.checkpoint_dir(which)
        return folder.is_dir() or folder.with_name(folder.name + ".old").is_dir()

    def write_config(self) -> None:
        document = {
            "train": self.config.to_dict(),
            "model": self.config.model_config(self.tokenizer.vocab_size).to_dict(),
            "data_source": self.data_source,
            "tokens_per_char": self.tokens_per_char,
            "world_size": self.world_size,
            "global_tokens_per_step": self.config.tokens_per_step * self.world_size,
        }
        atomic_write_text(self.path / CONFIG_FILE, json.dumps(document, indent=1))


def holds_run(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


def check_free(path: Path) -> None:
    """MiniGPTError when ``path`` already holds a run (a new run never overwrites one)."""
    if holds_run(path):
        raise MiniGPTError(f"{path} already holds a run; use --resume {path} or another --out")


def create_run(
    path: Path, config: TrainConfig, tokenizer: Tokenizer, data_source: str, tokens_per_char: float, world_size: int = 1
) -> Run:
    path = Path(path)
    check_free(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission...
        raise MiniGPTError(f"cannot create the run folder {path}: {exc.strerror}") from None
    run = Run(path, config, tokenizer, data_source, tokens_per_char, world_size)
    tokenizer.save(path / TOKENIZER_FILE)
    run.write_config()
    return run


def open_run(path: Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise MiniGPTError(f"run folder not found: {path}")
    try:
        document = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        config = build_config("baby", document["train"])
    except FileNotFoundError:
        raise MiniGPTError(f"{path} is not a minigpt run folder (no {CONFIG_FILE})") from None
    except (ValueError, KeyError, TypeError):  # bad JSON (a ValueError) or a document of the wrong shape
        raise MiniGPTError(f"{path}/{CONFIG_FILE} is corrupt") from None
    tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    return Run(path, config, tokenizer, document.get("data_source", "?"), float(document.get("tokens_per_char", 1.0)))


def load_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; MiniGPTError for an unknown or uninstallable one."""
    try:
        return load_backend(name)
    except (ValueError, ImportError) as exc:
        raise MiniGPTError(str(exc)) from None


def build_backend(
    config: TrainConfig, vocab_size: int, weights, *, backend: str | None = None, device: str | None = None
) -> Backend:
    """Instantiate the configured (or the named) backend; MiniGPTError for bad names and devices."""
    backend_cls = load_backend_class(backend or config.backend)
    try:
        return backend_cls(
            config.model_config(vocab_size),
            weights,
            config.optim_config(),
            device=device or config.device,
            seed=config.seed,
            compile=config.compile,
            dtype=config.dtype,
        )
    except ValueError as exc:
        raise MiniGPTError(str(exc)) from None


def load_model(
    run: Run, *, which: str = "best", backend: str | None = None, device: str | None = None
) -> tuple[Backend, Checkpoint]:
    """A backend holding the run's ``best`` (falling back to ``latest``) or ``latest`` weights."""
    if which == "best" and not run.has_checkpoint("best"):
        which = "latest"
    if not run.has_checkpoint(which):
        raise MiniGPTError(f"run {run.path} has no checkpoint yet")
    checkpoint = load_checkpoint(run.checkpoint_dir(which), with_optimizer=False)
    model = build_backend(run.config, run.tokenizer.vocab_size, checkpoint.weights, backend=backend, device=device)
    return model, checkpoint


def read_metrics(path: Path) -> list[dict]:
    """Records of a metrics.jsonl; a half-written last line (a run still writing) is skipped."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return records


class MetricsWriter:
    """Appends one JSON record per line and flushes it, so a follower sees it at once."""

    def __init__(self, path: Path, truncate_after_step: int | None = None) -> None:
        if truncate_after_step is not None:
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= truncate_after_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

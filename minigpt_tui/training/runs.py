"""The run folder's contract: every reader and writer of ``runs/<name>/`` goes through this module.

A run folder holds:

- ``config.json``: the run's ``TrainConfig`` (nested, ``model.vocab_size`` = the tokenizer's size),
  the corpus it was trained on (source and sha256), tokens per character and the world size;
- ``tokenizer.json``;
- ``metrics.jsonl``: one ``StepEvent``/``EvalEvent`` record per line (see ``minigpt_tui.training.events``);
- ``checkpoints/latest`` and ``checkpoints/best`` (see ``minigpt_tui.training.checkpoint``);
- ``snapshots/step-NNNNNNN``: with the ``snapshots`` config field, the weights at every evaluation (checkpoint
  folders of kind ``snapshot``: weights only, same manifest), so any inspection can be asked "at step N";
- ``.lock``: the OS lock its one writer holds, and ``.lock.owner``, that writer's PID.

Strict where it must be: a config or checkpoint that fails validation is one MiniGPTError naming the
file and the field. Tolerant where it can be: a damaged metrics line is skipped and reported once.
A folder counts as a run once its first checkpoint exists; before that it may be started afresh.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from backends import load_backend
from backends.base import Backend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write_text, read_input_bytes
from minigpt_tui.training.checkpoint import Checkpoint, TrainingState, load_checkpoint, load_state
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.datasets import Corpus, sha256
from minigpt_tui.training.events import EvalEvent, MetricsRecord, StepEvent, record_from_dict
from minigpt_tui.training.tokenizer import Tokenizer
from minigpt_tui.training.vocabulary import load_tokenizer
from minigpt_tui.typed import checked_value

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
SNAPSHOT_NAME = re.compile(r"step-(\d{7,})")
LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"
CONFIG_FORMAT = 1


def default_run_dir(root: Path = Path("runs")) -> Path:
    return root / time.strftime("%Y%m%d-%H%M%S")


def corpus_fingerprint(corpus: Corpus) -> str:
    """sha256 of the corpus text: tells a resumed run whether it is given the text it was trained on."""
    return sha256(corpus.text.encode("utf-8"))


@dataclass
class Run:
    path: Path
    config: TrainConfig  # model.vocab_size is the tokenizer's
    tokenizer: Tokenizer
    data_source: str
    tokens_per_char: float  # of the val split: converts per-token loss to bits per character
    world_size: int = 1  # training processes (torchrun); each step sees world_size x the config's batch
    data_sha256: str = ""  # of the corpus text; "" when unknown
    device_used: str = ""  # the device the last session trained on ("cpu", "cuda:0"): what "auto" chose

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def checkpoint_dir(self, which: str) -> Path:
        return self.path / CHECKPOINTS / which

    def snapshot_dir(self, step: int) -> Path:
        return self.path / SNAPSHOTS / f"step-{step:07d}"

    def has_checkpoint(self, which: str = "latest") -> bool:
        return has_checkpoint(self.path, which)

    def write_config(self) -> None:
        document = {
            "format": CONFIG_FORMAT,
            "config": self.config.to_dict(),
            "data_source": self.data_source,
            "data_sha256": self.data_sha256,
            "tokens_per_char": self.tokens_per_char,
            "world_size": self.world_size,
            "global_tokens_per_step": self.config.tokens_per_step * self.world_size,
            "device_used": self.device_used,
        }
        atomic_write_text(self.path / CONFIG_FILE, json.dumps(document, indent=1))


def has_checkpoint(path: Path, which: str = "latest") -> bool:
    folder = Path(path) / CHECKPOINTS / which
    return folder.is_dir() or folder.with_name(folder.name + ".old").is_dir()


def holds_checkpoints(path: Path) -> bool:
    """Whether ``path`` is a run: a folder with at least one checkpoint (complete or not)."""
    folder = Path(path) / CHECKPOINTS
    return folder.is_dir() and any(folder.iterdir())


# ---- one writer per run folder


class RunLock:
    """The OS-level lock the one writer of a run folder holds (released by the OS if it dies)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = filelock.FileLock(self.path / LOCK_FILE, timeout=0)

    def acquire(self) -> RunLock:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise MiniGPTError(f"run {self.path} is in use by another process{owner_note(self.path)}") from None
        except OSError as exc:
            raise MiniGPTError(f"cannot lock the run folder {self.path}: {exc.strerror}") from None
        try:
            atomic_write_text(self.path / OWNER_FILE, str(os.getpid()))
        except OSError:
            pass  # the PID is a courtesy for the message above; the lock itself is held
        return self

    def release(self) -> None:
        self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def owner_note(path: Path) -> str:
    try:
        pid = int((Path(path) / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return ""
    return f" (PID {pid})"


def is_locked(path: Path) -> bool:
    """Whether another writer holds the run now (a follower then opens it read-only)."""
    if not (Path(path) / LOCK_FILE).exists():
        return False
    probe = filelock.FileLock(Path(path) / LOCK_FILE, timeout=0)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True
    except OSError:
        return False
    probe.release()
    return False


# ---- creating and opening runs


def check_free(path: Path, *, overwrite: bool = False) -> None:
    """MiniGPTError when a new run may not start in ``path``.

    A file in the way, or a run (a folder holding checkpoints) without ``overwrite``, is refused; a
    folder a run left before its first checkpoint is no run yet and may be started afresh."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MiniGPTError(f"--out {path} is a file, not a folder")
    if holds_checkpoints(path) and not overwrite:
        raise MiniGPTError(
            f"{path} already holds a run (checkpoints); use --resume {path}, another --out, or --overwrite"
        )


def create_run(path: Path, run: Run, *, overwrite: bool = False) -> RunLock:
    """Lay out a new run in ``path`` and return the lock its writer now holds.

    The lock comes first: two writers starting together cannot both pass ``check_free``."""
    path = Path(path)
    check_free(path, overwrite=overwrite)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission...
        raise MiniGPTError(f"cannot create the run folder {path}: {exc.strerror}") from None
    lock = RunLock(path).acquire()
    try:
        check_free(path, overwrite=overwrite)
        if overwrite:
            shutil.rmtree(path / CHECKPOINTS, ignore_errors=True)
        run.tokenizer.save(path / TOKENIZER_FILE)
        run.write_config()
        atomic_write_text(run.metrics_path, "")  # a restarted folder starts with no curves
    except BaseException:
        lock.release()
        raise
    return lock


def _field(document: dict, name: str, kind: type, where: str, default=None):
    if name not in document:
        if default is not None:
            return default
        raise MiniGPTError(f"{where}: field {name} is missing")
    return checked_value(kind, document[name], f"{where}: {name}")


def read_config(path: Path) -> dict:
    """config.json of the run at ``path`` as checked values; MiniGPTError naming the file and the field."""
    where = f"{Path(path) / CONFIG_FILE}"
    try:
        document = json.loads(read_input_bytes(Path(path) / CONFIG_FILE, "config file"))
    except FileNotFoundError:
        raise MiniGPTError(f"{path} is not a minigpt run folder (no {CONFIG_FILE})") from None
    except IsADirectoryError:
        raise MiniGPTError(f"{where} is a folder, not a file") from None
    except OSError as exc:
        raise MiniGPTError(f"cannot read {where}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise MiniGPTError(f"{where} is corrupt (not JSON)") from None
    if not isinstance(document, dict):
        raise MiniGPTError(f"{where} is corrupt: not a JSON object")
    values = {
        "config": TrainConfig.from_dict(_field(document, "config", dict, where), f"{where}: config"),
        "data_source": _field(document, "data_source", str, where),
        "data_sha256": _field(document, "data_sha256", str, where, ""),
        "tokens_per_char": _field(document, "tokens_per_char", float, where),
        "world_size": _field(document, "world_size", int, where, 1),
        "device_used": _field(document, "device_used", str, where, ""),
    }
    if not (values["tokens_per_char"] > 0 and math.isfinite(values["tokens_per_char"])):
        raise MiniGPTError(f"{where}: tokens_per_char must be a finite number > 0")
    if values["world_size"] < 1:
        raise MiniGPTError(f"{where}: world_size must be >= 1")
    return values


def open_run(path: Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise MiniGPTError(f"run folder not found: {path}" if not path.exists() else f"{path} is not a folder")
    values = read_config(path)
    tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    config: TrainConfig = values["config"]
    if config.model.vocab_size != tokenizer.vocab_size:
        raise MiniGPTError(
            f"{path / CONFIG_FILE}: field config.model.vocab_size ({config.model.vocab_size}) does not match "
            f"{TOKENIZER_FILE} ({tokenizer.vocab_size} tokens)"
        )
    return Run(path, tokenizer=tokenizer, **values)


def load_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; MiniGPTError for an unknown or uninstallable one."""
    try:
        return load_backend(name)
    except (ValueError, ImportError) as exc:
        raise MiniGPTError(str(exc)) from None


def build_backend(config: TrainConfig, weights, *, backend: str | None = None, device: str | None = None) -> Backend:
    """Instantiate the configured (or the named) backend; MiniGPTError for bad names, devices and weights."""
    backend_cls = load_backend_class(backend or config.backend)
    try:
        return backend_cls(
            config.model,
            weights,
            config.optim,
            device=device or config.device,
            seed=config.rng_seed,
            compile=config.compile,
            dtype=config.dtype,
        )
    except ValueError as exc:
        raise MiniGPTError(str(exc)) from None


def load_model(
    run: Run, *, which: str = "best", backend: str | None = None, device: str | None = None
) -> tuple[Backend, Checkpoint]:
    """A backend holding the run's ``best`` (falling back to ``latest``) or ``latest`` weights."""
    which = available_checkpoint(run, which)
    checkpoint = load_checkpoint(run.checkpoint_dir(which), with_optimizer=False)
    try:
        model = build_backend(run.config, checkpoint.weights, backend=backend, device=device)
    except MiniGPTError as exc:
        raise MiniGPTError(f"checkpoint {run.checkpoint_dir(which)}: {exc}") from None
    return model, checkpoint


def snapshot_steps(run: Run) -> list[int]:
    """The steps the run has snapshots of, ascending (an interrupted save's ``.old`` twin counts)."""
    folder = run.path / SNAPSHOTS
    if not folder.is_dir():
        return []
    steps = set()
    for entry in folder.iterdir():
        match = SNAPSHOT_NAME.fullmatch(entry.name.removesuffix(".old"))
        if match and entry.is_dir():
            steps.add(int(match.group(1)))
    return sorted(steps)


def check_snapshot(run: Run, step: int) -> None:
    """MiniGPTError naming the steps there are when the run has no snapshot at ``step``."""
    steps = snapshot_steps(run)
    if step not in steps:
        have = f"snapshots at steps {', '.join(map(str, steps))}" if steps else "no snapshots (train with --snapshots)"
        raise MiniGPTError(f"run {run.path} has no snapshot at step {step}; it has {have}")


def model_at(run: Run, which: str = "best", *, backend: str | None = None, device: str | None = None,
             step: int | None = None) -> tuple[Backend, int]:
    """A backend holding the run's ``best``/``latest`` weights, or ``init`` (what the trainer started from,
    rebuilt from the config's seed), or with ``step`` the snapshot at that step; and the step they are at."""
    if step is not None:
        check_snapshot(run, step)
        weights = load_checkpoint(run.snapshot_dir(step), with_optimizer=False).weights
        try:
            return build_backend(run.config, weights, backend=backend, device=device), step
        except MiniGPTError as exc:
            raise MiniGPTError(f"snapshot {run.snapshot_dir(step)}: {exc}") from None
    if which == "init":
        from backends.base import init_weights

        initial = init_weights(run.config.model, run.config.rng_seed)
        return build_backend(run.config, initial, backend=backend, device=device), 0
    model, checkpoint = load_model(run, which=which, backend=backend, device=device)
    return model, checkpoint.state.step


def available_checkpoint(run: Run, which: str = "best") -> str:
    """``which`` if the run has it; ``best`` falls back to ``latest`` (before the first best is saved)."""
    if which == "best" and not run.has_checkpoint("best"):
        which = "latest"
    if not run.has_checkpoint(which):
        raise MiniGPTError(f"run {run.path} has no checkpoint yet")
    return which


def checkpoint_state(run: Run, which: str = "latest") -> TrainingState:
    return load_state(run.checkpoint_dir(which))


# ---- metrics.jsonl


@dataclass
class Metrics:
    """The valid records of a metrics.jsonl and the numbers of the lines that were not."""

    records: list[MetricsRecord] = field(default_factory=list)
    damaged_lines: list[int] = field(default_factory=list)

    @property
    def steps(self) -> list[StepEvent]:
        return sorted((r for r in self.records if isinstance(r, StepEvent)), key=lambda r: r.step)

    @property
    def evals(self) -> list[EvalEvent]:
        return sorted((r for r in self.records if isinstance(r, EvalEvent)), key=lambda r: r.step)

    @property
    def elapsed_s(self) -> float | None:
        """Training wall time summed over sessions: a resumed session's ``elapsed_s`` starts again at 0."""
        total, last = 0.0, None
        for event in self.steps:
            # a new session began after the previous record was written (its clock went back, or it started later)
            if last is not None and (event.elapsed_s < last.elapsed_s or event.time - event.elapsed_s >= last.time):
                total += last.elapsed_s
            last = event
        return None if last is None else total + last.elapsed_s

    def up_to(self, step: int) -> Metrics:
        return Metrics([r for r in self.records if r.step <= step], self.damaged_lines)

    def warning(self, path: Path) -> str | None:
        """One line about the skipped lines, or None."""
        if not self.damaged_lines:
            return None
        lines = ", ".join(map(str, self.damaged_lines[:5])) + (", ..." if len(self.damaged_lines) > 5 else "")
        plural = "s" if len(self.damaged_lines) > 1 else ""
        return f"warning: {path}: skipped damaged line{plural} {lines}"


def read_metrics(path: Path) -> Metrics:
    """Records of a metrics.jsonl. Never fails: a damaged line is skipped and its number kept, a half-written
    last line (a run still writing) is skipped silently, and a missing or unreadable file has no records."""
    metrics = Metrics()
    try:
        data = Path(path).read_bytes()
    except OSError:
        return metrics
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            metrics.records.append(record_from_dict(json.loads(line)))
        except (ValueError, UnicodeDecodeError, MiniGPTError, RecursionError):
            if number < len(lines):  # the last piece has no newline yet: a record being written
                metrics.damaged_lines.append(number)
    return metrics


class MetricsWriter:
    """Appends one record per line and flushes it, so a follower sees it at once."""

    def __init__(self, path: Path, truncate_after_step: int | None = None) -> None:
        if truncate_after_step is not None:  # a resumed run repeats the steps after its checkpoint
            kept = read_metrics(path).up_to(truncate_after_step).records
            atomic_write_text(path, "".join(json.dumps(r.to_record()) + "\n" for r in kept))
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: MetricsRecord) -> None:
        self.file.write(json.dumps(record.to_record()) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

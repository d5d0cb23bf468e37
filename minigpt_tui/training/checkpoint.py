"""Checkpoints without pickle: safetensors for arrays, JSON for the rest, a manifest against tampering.

A checkpoint is a folder:

- ``model.safetensors``: canonical weights;
- ``optimizer.safetensors``: the optimizer state (AdamW moments and step);
- ``rng.safetensors``: the backend's dropout generator;
- ``state.json``: the ``TrainingState`` (step, best val loss, data-sampler states, backend, kind);
- ``manifest.json``: the sha256 of each of the four files above. A manifest must list exactly those
  files: one that omits a file, or names another, is invalid (it cannot switch the check off).

A snapshot (``RUN/snapshots/step-NNNNNNN``, see ``runs``) is the same folder with empty optimizer
and RNG files: the weights at one evaluation, verified by the same manifest.

It is written into a temporary folder and swapped in by renames, so a crash leaves either the old or
the new checkpoint; temporary folders a killed save left behind are removed by the next save.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write_bytes, atomic_write_text, read_input_bytes
from minigpt_tui.training.datasets import sha256
from minigpt_tui.typed import from_fields

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
HASHED_FILES = (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)
KINDS = ("latest", "best", "snapshot")  # a snapshot: the weights at one eval, no optimizer state
SAMPLERS = ("train", "eval_train", "eval_val")
FOLDER_MODE = 0o755  # mkdtemp makes 0700; a run folder is meant to be shared and read
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TrainingState:
    """Everything but arrays that a resumed run needs to continue exactly."""

    step: int  # optimizer steps done
    kind: str  # "latest", "best" or "snapshot"
    backend: str  # which backend wrote the RNG state (another backend's is ignored)
    best_val_loss: float = math.inf
    samplers: dict = field(default_factory=dict)  # sampler name -> NumPy bit-generator state

    def __post_init__(self) -> None:
        if self.step < 0:
            raise ValueError(f"step must be >= 0, got {self.step}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if math.isnan(self.best_val_loss):
            raise ValueError("best_val_loss is NaN")
        if self.samplers and (set(self.samplers) != set(SAMPLERS) or not all(
                isinstance(s, dict) for s in self.samplers.values())):
            raise ValueError(f"samplers must map {', '.join(SAMPLERS)} to generator states")


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    rng: dict[str, np.ndarray]
    state: TrainingState


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # np.asarray, not np.ascontiguousarray: the latter turns 0-d arrays (the AdamW step) into shape (1,)
    return {k: np.asarray(v, order="C") for k, v in arrays.items()}


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary folders of saves of ``folder`` that a kill interrupted."""
    for leftover in Path(folder).parent.glob(f".{Path(folder).name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_temporaries(folder)  # one writer per run (the run lock): no other save can be in flight
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.chmod(tmp, FOLDER_MODE)
        payload = {
            MODEL_FILE: save_safetensors(_contiguous(checkpoint.weights)),
            OPTIMIZER_FILE: save_safetensors(_contiguous(checkpoint.optimizer)),
            RNG_FILE: save_safetensors(_contiguous(checkpoint.rng)),
            STATE_FILE: json.dumps(asdict(checkpoint.state), indent=1).encode("utf-8"),
        }
        for name, data in payload.items():
            atomic_write_bytes(tmp / name, data)
        manifest = {"sha256": {name: sha256(data) for name, data in payload.items()}}
        atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1))
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_folder(folder: Path) -> Path:
    """``folder``, or its ``.old`` twin when a save was interrupted between its two renames."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    old = folder.with_name(folder.name + ".old")
    if old.is_dir():
        return old
    raise MiniGPTError(f"no checkpoint at {folder}")


def _read(folder: Path, name: str) -> bytes:
    try:
        return read_input_bytes(folder / name, "checkpoint file", limit=None)
    except FileNotFoundError:
        raise MiniGPTError(f"checkpoint {folder} is incomplete: {name} is missing") from None
    except IsADirectoryError:
        raise MiniGPTError(f"checkpoint {folder}/{name} is a folder, not a file") from None
    except OSError as exc:
        raise MiniGPTError(f"cannot read checkpoint file {folder}/{name}: {exc.strerror}") from None


def read_manifest(folder: Path) -> dict[str, str]:
    """File name -> sha256, for exactly ``HASHED_FILES``; MiniGPTError otherwise."""
    where = f"checkpoint {folder}/{MANIFEST_FILE}"
    try:
        manifest = json.loads(_read(folder, MANIFEST_FILE))
    except (ValueError, UnicodeDecodeError):
        raise MiniGPTError(f"{where} is corrupt (not JSON)") from None
    hashes = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not isinstance(hashes, dict):
        raise MiniGPTError(f"{where} is corrupt: field sha256 must be an object")
    if set(hashes) != set(HASHED_FILES):
        raise MiniGPTError(f"{where} is corrupt: field sha256 must list exactly {', '.join(HASHED_FILES)}")
    for name, value in hashes.items():
        if not isinstance(value, str) or not SHA256.fullmatch(value):
            raise MiniGPTError(f"{where} is corrupt: field sha256.{name} is not a sha256 digest")
    return hashes


def _verified(folder: Path, name: str, hashes: dict[str, str]) -> bytes:
    data = _read(folder, name)
    if sha256(data) != hashes[name]:
        raise MiniGPTError(f"checkpoint {folder}/{name} is corrupt or was modified (sha256 mismatch)")
    return data


def _arrays(folder: Path, name: str, data: bytes) -> dict[str, np.ndarray]:
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise MiniGPTError(f"checkpoint {folder}/{name} is not a valid safetensors file: {exc}") from None


def load_state(folder: Path) -> TrainingState:
    """The verified ``TrainingState`` of a checkpoint, without reading its arrays' contents twice."""
    folder = checkpoint_folder(folder)
    return _state(folder, _verified(folder, STATE_FILE, read_manifest(folder)))


def _state(folder: Path, data: bytes) -> TrainingState:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MiniGPTError(f"checkpoint {folder}/{STATE_FILE} is corrupt (not JSON)") from None
    return from_fields(TrainingState, document, f"checkpoint {folder}/{STATE_FILE}")


def load_checkpoint(folder: Path, *, with_optimizer: bool = True) -> Checkpoint:
    folder = checkpoint_folder(folder)
    hashes = read_manifest(folder)
    state = _state(folder, _verified(folder, STATE_FILE, hashes))
    weights = _arrays(folder, MODEL_FILE, _verified(folder, MODEL_FILE, hashes))
    optimizer, rng = {}, {}
    if with_optimizer:
        optimizer = _arrays(folder, OPTIMIZER_FILE, _verified(folder, OPTIMIZER_FILE, hashes))
        rng = _arrays(folder, RNG_FILE, _verified(folder, RNG_FILE, hashes))
    return Checkpoint(weights, optimizer, rng, state)

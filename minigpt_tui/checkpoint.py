"""Checkpoints without pickle: safetensors for arrays, JSON for the rest, hashes against tampering.

A checkpoint is a folder: ``model.safetensors`` (canonical weights), ``optimizer.safetensors``
(AdamW moments and backend RNG arrays) and ``state.json`` (step, data-sampler states, best val loss,
sha256 of both array files). It is written into a temporary folder and swapped in by renames, so a
crash leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from minigpt_tui.datasets import sha256
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write_bytes, atomic_write_text

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict = field(default_factory=dict)  # step, best_val_loss, sampler states, backend


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # np.asarray, not np.ascontiguousarray: the latter turns 0-d arrays (the AdamW step) into shape (1,)
    return {k: np.asarray(v, order="C") for k, v in arrays.items()}


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model_bytes = save_safetensors(_contiguous(checkpoint.weights))
        optim_bytes = save_safetensors(_contiguous(checkpoint.optimizer))
        atomic_write_bytes(tmp / MODEL_FILE, model_bytes)
        atomic_write_bytes(tmp / OPTIMIZER_FILE, optim_bytes)
        state = {**checkpoint.state, "sha256": {MODEL_FILE: sha256(model_bytes), OPTIMIZER_FILE: sha256(optim_bytes)}}
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=1))
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_verified(folder: Path, name: str, expected: str | None) -> dict[str, np.ndarray]:
    try:
        data = (folder / name).read_bytes()
    except FileNotFoundError:
        raise MiniGPTError(f"checkpoint {folder} is incomplete: {name} is missing") from None
    if expected is not None and sha256(data) != expected:
        raise MiniGPTError(f"checkpoint {folder}/{name} is corrupt or was modified (sha256 mismatch)")
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise MiniGPTError(f"checkpoint {folder}/{name} is not a valid safetensors file: {exc}") from None


def load_checkpoint(folder: Path, *, with_optimizer: bool = True) -> Checkpoint:
    folder = Path(folder)
    if not folder.is_dir():
        old = folder.with_name(folder.name + ".old")
        if not old.is_dir():
            raise MiniGPTError(f"no checkpoint at {folder}")
        folder = old  # a save was interrupted between its two renames
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MiniGPTError(f"checkpoint {folder} is incomplete: {STATE_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MiniGPTError(f"checkpoint {folder}/{STATE_FILE} is corrupt") from None
    hashes = state.get("sha256", {}) if isinstance(state, dict) else {}
    if not isinstance(state, dict) or not hashes:
        raise MiniGPTError(f"checkpoint {folder}/{STATE_FILE} is corrupt (no file hashes)")
    weights = _read_verified(folder, MODEL_FILE, hashes.get(MODEL_FILE))
    optimizer = _read_verified(folder, OPTIMIZER_FILE, hashes.get(OPTIMIZER_FILE)) if with_optimizer else {}
    return Checkpoint(weights, optimizer, state)

"""Checkpoints: exact round trips, refusal of damaged files, atomic replacement, no pickle."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from conftest import train_tiny

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training import checkpoint as checkpoint_module
from minigpt_tui.training.checkpoint import (
    HASHED_FILES,
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
    Checkpoint,
    TrainingState,
    load_checkpoint,
    save_checkpoint,
)
from minigpt_tui.training.datasets import sha256
from minigpt_tui.training.runs import load_model, open_run


@pytest.fixture
def trained(tmp_path, corpus_path):
    trainer, _, _ = train_tiny(tmp_path / "run", corpus_path)
    return trainer


def probe_inputs(vocab_size: int, block_size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab_size, size=(3, block_size))


def test_round_trip_gives_identical_logits(trained):
    inputs = probe_inputs(trained.backend.config.vocab_size, trained.config.model.block_size)
    expected = trained.backend.logits(inputs)
    model, ckpt = load_model(open_run(trained.run_dir.path), which="latest")
    assert ckpt.state.step == trained.step
    np.testing.assert_array_equal(model.logits(inputs), expected)
    for name, array in trained.backend.get_weights().items():
        np.testing.assert_array_equal(ckpt.weights[name], array)


def test_round_trip_keeps_optimizer_and_rng_state(trained):
    ckpt = load_checkpoint(trained.run_dir.checkpoint_dir("latest"))
    for name, array in trained.backend.get_optimizer_state().items():
        np.testing.assert_array_equal(ckpt.optimizer[name], array)
    assert float(ckpt.optimizer["step"]) == trained.step
    for name, array in trained.backend.get_rng_state().items():
        np.testing.assert_array_equal(ckpt.rng[name], array)
    assert ckpt.state.samplers["train"] == trained.samplers.train.get_state()


def test_files_are_safetensors_and_json_not_pickle(trained):
    folder = trained.run_dir.checkpoint_dir("latest")
    assert sorted(p.name for p in folder.iterdir()) == sorted([*HASHED_FILES, MANIFEST_FILE])
    for name in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE):
        data = (folder / name).read_bytes()
        (header_size,) = struct.unpack("<Q", data[:8])  # safetensors: u64 header length, then a JSON header
        json.loads(data[8 : 8 + header_size])
        assert not data.startswith(b"\x80")  # pickle protocol marker
    json.loads((folder / STATE_FILE).read_text())
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)  # readable by others, like the rest of the run


def small_checkpoint(value: float = 1.0) -> Checkpoint:
    return Checkpoint({"w": np.full((4, 3), value, np.float32)}, {"m": np.zeros(2, np.float64)},
                      {"g": np.arange(3)}, TrainingState(step=int(value), kind="latest", backend="numpy"))


def test_truncated_weights_are_rejected(tmp_path):
    save_checkpoint(tmp_path / "ckpt", small_checkpoint())
    path = tmp_path / "ckpt" / MODEL_FILE
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(MiniGPTError, match="corrupt or was modified"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("omitted", HASHED_FILES)
def test_a_manifest_that_omits_a_file_is_invalid(tmp_path, omitted):
    """Defect 5: a hash table omitting a file used to switch the check off for that file."""
    save_checkpoint(tmp_path / "ckpt", small_checkpoint())
    manifest_path = tmp_path / "ckpt" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest["sha256"][omitted]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MiniGPTError, match="manifest.json is corrupt: field sha256 must list exactly"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("field, value", [("step", -5), ("step", "7"), ("kind", "worst"), ("best_val_loss", None)])
def test_an_edited_state_json_is_rejected_naming_the_field(tmp_path, field, value):
    """Defect 5: state.json was outside the integrity check; an edit gave a traceback or a negative step."""
    save_checkpoint(tmp_path / "ckpt", small_checkpoint())
    state_path = tmp_path / "ckpt" / STATE_FILE
    state = json.loads(state_path.read_text())
    state[field] = value
    state_path.write_text(json.dumps(state))
    with pytest.raises(MiniGPTError, match="state.json is corrupt or was modified"):
        load_checkpoint(tmp_path / "ckpt")
    # even with a matching manifest, the value itself is validated and the field named
    manifest_path = tmp_path / "ckpt" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"][STATE_FILE] = sha256(state_path.read_bytes())
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MiniGPTError, match=f"state.json.*{field}"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("position", [0, 12, -1])  # header length, header JSON, last weight byte
def test_one_flipped_byte_is_rejected(tmp_path, position):
    save_checkpoint(tmp_path / "ckpt", small_checkpoint())
    path = tmp_path / "ckpt" / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(MiniGPTError, match="sha256 mismatch"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("damage, fragment", [
    (lambda folder: (folder / STATE_FILE).unlink(), "state.json is missing"),
    (lambda folder: (folder / STATE_FILE).write_text("{not json"), "corrupt"),
    (lambda folder: (folder / MANIFEST_FILE).write_text('{"step": 3}'), "field sha256 must be an object"),
    (lambda folder: (folder / MANIFEST_FILE).unlink(), "manifest.json is missing"),
    (lambda folder: ((folder / RNG_FILE).unlink(), (folder / RNG_FILE).mkdir()), "rng.safetensors is a folder"),
    (lambda folder: (folder / MODEL_FILE).unlink(), "model.safetensors is missing"),
    (lambda folder: (folder / OPTIMIZER_FILE).write_bytes(b""), "sha256 mismatch"),
])
def test_damaged_checkpoint_folders_are_rejected(tmp_path, damage, fragment):
    save_checkpoint(tmp_path / "ckpt", small_checkpoint())
    damage(tmp_path / "ckpt")
    with pytest.raises(MiniGPTError, match=fragment):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_checkpoint_is_an_error(tmp_path):
    with pytest.raises(MiniGPTError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_saving_again_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    folder = tmp_path / "checkpoints" / "latest"
    for value in (1.0, 2.0, 3.0):
        save_checkpoint(folder, small_checkpoint(value))
    assert [p.name for p in folder.parent.iterdir()] == ["latest"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*HASHED_FILES, MANIFEST_FILE])
    loaded = load_checkpoint(folder)
    assert loaded.state.step == 3
    np.testing.assert_array_equal(loaded.weights["w"], np.full((4, 3), 3.0, np.float32))


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints" / "latest"
    save_checkpoint(folder, small_checkpoint(1.0))

    def disk_full(path, text):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_module, "atomic_write_text", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(folder, small_checkpoint(2.0))
    assert [p.name for p in folder.parent.iterdir()] == ["latest"]
    assert load_checkpoint(folder).state.step == 1


def test_a_save_interrupted_between_renames_is_recovered(tmp_path):
    folder = tmp_path / "checkpoints" / "latest"
    save_checkpoint(folder, small_checkpoint(5.0))
    folder.rename(folder.with_name("latest.old"))  # the state after the first rename, before the second
    assert load_checkpoint(folder).state.step == 5


def test_a_run_without_checkpoints_cannot_be_loaded(trained):
    import shutil

    shutil.rmtree(trained.run_dir.path / "checkpoints")
    with pytest.raises(MiniGPTError, match="no checkpoint yet"):
        load_model(open_run(trained.run_dir.path))


def test_temporary_folders_of_a_killed_save_are_removed_by_the_next(tmp_path):
    folder = tmp_path / "checkpoints" / "best"
    (folder.parent / ".best._half_written").mkdir(parents=True)
    save_checkpoint(folder, small_checkpoint(1.0))
    assert [p.name for p in folder.parent.iterdir()] == ["best"]

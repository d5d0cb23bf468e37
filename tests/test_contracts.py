"""Outputs, ablations, imports and resumes as contracts: one test (or a few cases of one) per class of
defect a second adversarial round found. Each drives the CLI as a user would, so that it ran against the
code before the change too, and failed there.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from safetensors.numpy import load_file, save_file
from test_cli import assert_one_line_error, invoke

import minigpt_tui
from minigpt_tui.training.checkpoint import load_checkpoint, save_checkpoint

CODE = Path(minigpt_tui.__file__).resolve().parents[1]  # the tree under test, for subprocesses


def copy_run(workspace, tmp_path: Path, name: str = "run") -> Path:
    run = tmp_path / name
    shutil.copytree(workspace.run, run)
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def invoke_bounded(*args, fifos: tuple[Path, ...] = (), seconds: float = 60):
    """``invoke`` in a thread; if it is still running after ``seconds`` (blocked on a FIFO), open the FIFOs
    for writing so that it can finish, and fail: a command must never wait for a FIFO."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", invoke(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    hung = thread.is_alive()
    for fifo in fifos if hung else ():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    thread.join(30)
    assert not hung, f"{args}: still waiting after {seconds} s"
    return box["result"]


# ---- 1. output paths are writes that matter


def make_kind(kind: str, target: Path, run: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(target.with_name("elsewhere.json"))
    elif kind == "folder":
        target.mkdir()
    elif kind == "device":
        return Path("/dev/null")
    elif kind == "run config":
        return run / "config.json"
    elif kind == "run checkpoint file":
        return run / "checkpoints" / "latest" / "state.json"
    return target


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder", "device", "run config", "run checkpoint file"])
@pytest.mark.parametrize("option", [("eval", "--json"), ("inspect", "--png")])
def test_an_output_never_replaces_what_is_not_a_regular_file_nor_a_run_file(workspace, tmp_path, kind, option):
    run = copy_run(workspace, tmp_path)
    before = snapshot(run)
    path = make_kind(kind, tmp_path / "out.json", run)
    command, flag = option
    args = [command, run, *(["--text", "the king"] if command == "inspect" else []), flag, path]
    assert_one_line_error(invoke_bounded(*args, fifos=(path,)), rf"{flag} {path}")
    assert snapshot(run) == before
    if kind == "fifo":
        assert path.is_fifo()
    if kind == "symlink":
        assert path.is_symlink() and not path.with_name("elsewhere.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_outputs_are_checked_before_the_work_is_done(workspace, tmp_path, monkeypatch):
    from minigpt_tui.training import evaluation

    monkeypatch.setattr(evaluation, "evaluate_run", lambda *a, **k: pytest.fail("evaluated before the check"))
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    assert_one_line_error(invoke("eval", workspace.run, "--json", read_only / "scores.json"), "not writable")
    assert_one_line_error(invoke("inspect", workspace.run, "--text", "the", "--png", ""), "--png needs a file path")


def test_name_cannot_escape_out_and_long_default_names_are_shortened(workspace, tmp_path):
    out = tmp_path / "plots"
    for name in ("../escaped", "a/b", "..", "x" * 300):
        assert_one_line_error(invoke("export-plots", workspace.run, "--out", out, "--name", name), "--name")
    assert not (tmp_path / "escaped-loss.png").exists()
    long_run = tmp_path / ("r" * 240)
    shutil.copytree(workspace.run, long_run)
    result = invoke("export-plots", long_run, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert all(len(p.name) < 200 for p in out.iterdir()) and len(list(out.glob("*.png"))) == 3


def test_a_failed_write_removes_its_temporary_file_and_names_the_users_path(workspace, tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    target = tmp_path / "scores.json"
    result = invoke("eval", workspace.run, "--json", target)
    assert_one_line_error(result, rf"No space left on device: {target}$")
    assert list(tmp_path.iterdir()) == []
    # a figure too: matplotlib fails half-way through its file
    from matplotlib.figure import Figure

    monkeypatch.undo()

    def half_written(self, file, **kwargs):
        file.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_written)
    result = invoke("inspect", workspace.run, "--text", "the", "--png", tmp_path / "figure.png")
    assert_one_line_error(result, rf"No space left on device: {tmp_path / 'figure.png'}$")
    assert list(tmp_path.iterdir()) == []


def test_json_goes_to_standard_output_when_named_dash(workspace):
    result = invoke("eval", workspace.run, "--json", "-")
    assert result.exit_code == 0, result.stderr
    assert "val_loss" in json.loads(result.stdout)


# ---- 2. ablations are resumable and honest

ABLATE = ["--in-process", *TINY, "--max-iters", "4", "--eval-interval", "2"]


@pytest.mark.parametrize("args, fragment", [
    (["sweep", "--grid", "learning_rate=1e-3 learning_rate=2e-3"], "given twice"),
    (["sweep", "--grid", "learning_rate=1e-3,0.001"], "repeat 0.001"),
    (["sweep", "--grid", "qk_norm=true,True"], "repeat True"),
    (["sweep", "--grid", "seed=1,2"], "seed cannot be in the grid"),
    (["sweep", "--grid", "learning_rate=1e-3", "--seed", "4"], "--seed conflicts with --seeds"),
    (["sweep", "--grid", "learning_rate=1e-3,"], "empty value"),
    (["sweep", "--grid", "learning_rate=1e-3", "--seeds", ""], "--seeds needs"),
    (["sweep", "--grid", "n_layer=1,2,3,4,5,6,7 n_head=1,2,3,4,5,6,7 max_iters=1,2,3,4,5,6"], "has 294 variants"),
    (["context", "--block-sizes", "8,8", "--tokens-per-step", "32"], "repeats 8"),
    (["context", "--block-sizes", "", "--tokens-per-step", "32"], "--block-sizes needs"),
    (["tokenizer", "--vocab-sizes", "300,300"], "repeats 300"),
    (["context", "--bench-rounds", "1000000"], "--bench-rounds"),
])
def test_ablation_lists_and_grids_are_refused_before_anything_is_touched(workspace, tmp_path, args, fragment):
    out = tmp_path / "ablation"
    result = invoke("ablate", *args, "--data", workspace.corpus, "--out", out, *ABLATE)
    assert_one_line_error(result, fragment)
    assert not out.exists()


def sweep(workspace, out: Path, *extra):
    return invoke("ablate", "sweep", "--grid", "learning_rate=1e-3,2e-3", "--seeds", "1", "--data",
                  workspace.corpus, "--out", out, *ABLATE, *extra)


def test_an_ablation_continues_reuses_only_what_matches_and_restarts_with_overwrite(workspace, tmp_path):
    out = tmp_path / "sweep"
    assert sweep(workspace, out).exit_code == 0
    first = json.loads((out / "results.json").read_text())["results"]
    # cut short: the second variant lost its result (killed while scoring) and the first its training tail
    (out / "learning_rate=0.002-seed1" / "result.json").unlink()
    again = sweep(workspace, out)
    assert again.exit_code == 0, again.stderr
    second = json.loads((out / "results.json").read_text())["results"]
    assert second[0] == first[0]  # reused as it was
    assert second[1]["val_loss"] == pytest.approx(first[1]["val_loss"])  # the same weights, scored again
    # another config under the same --out: refused, naming the field, nothing touched
    before = snapshot(out)
    assert_one_line_error(sweep(workspace, out, "--max-iters", "6"), r"max_iters=4 \(now 6\).*--overwrite")
    assert snapshot(out) == before
    fresh = sweep(workspace, out, "--max-iters", "6", "--overwrite")
    assert fresh.exit_code == 0, fresh.stderr
    assert [r["max_iters"] for r in json.loads((out / "results.json").read_text())["results"]] == [6, 6]


def test_an_interrupted_variant_is_resumed(workspace, tmp_path):
    out = tmp_path / "sweep"
    variant = out / "learning_rate=0.001-seed1"
    # a variant stopped at step 2 of 4, as Ctrl-C or SIGTERM leaves it: checkpoints, no result.json
    stopped = invoke("train", "--headless", *TINY, "--max-iters", "2", "--eval-interval", "2", "--learning-rate",
                     "1e-3", "--seed", "1", "--data", workspace.corpus, "--out", variant)
    assert stopped.exit_code == 0
    config = json.loads((variant / "config.json").read_text())
    config["config"]["max_iters"] = 4  # what the ablation asked for
    (variant / "config.json").write_text(json.dumps(config))
    result = sweep(workspace, out)
    assert result.exit_code == 0, result.stderr
    assert json.loads((variant / "checkpoints" / "latest" / "state.json").read_text())["step"] == 4


def test_ablate_ladder_honours_preset_and_config(workspace, tmp_path):
    config = tmp_path / "ladder.toml"
    config.write_text("n_embd = 16\nn_head = 2\n")
    out = tmp_path / "ladder"
    result = invoke("ablate", "ladder", "--rows", "baseline", "--seeds", "1", "--preset", "tiny", "--config", config,
                    "--data", workspace.corpus, "--out", out, "--in-process", "--device", "cpu", "--block-size", "16",
                    "--batch-size", "4", "--max-iters", "2", "--eval-iters", "1")
    assert result.exit_code == 0, result.stderr
    trained = json.loads((out / "0-baseline-seed1" / "config.json").read_text())["config"]
    assert trained["model"]["n_embd"] == 16 and trained["model"]["n_layer"] == 2  # --config over --preset tiny


# ---- 3. no internal errors left


@pytest.fixture(scope="module")
def bpe_run(workspace):
    out = workspace.root / "bpe"
    if not out.exists():
        result = invoke("train", "--headless", *TINY, "--tokenizer", "bpe", "--vocab-size", "300", "--max-iters", "2",
                        "--eval-interval", "2", "--data", workspace.corpus, "--out", out)
        assert result.exit_code == 0, result.stderr
    return out


@pytest.mark.parametrize("which", ["bpe", "char"])
def test_non_utf8_text_is_one_error_line_naming_it(bpe_run, workspace, which):
    run = bpe_run if which == "bpe" else workspace.run
    text = b"the \xff\xfe king".decode("utf-8", "surrogateescape")  # what a shell hands over
    assert_one_line_error(invoke("sample", run, "--prompt", text, "--max-new-tokens", "2"), "not valid UTF-8")
    assert_one_line_error(invoke("inspect", run, "--text", text), "not valid UTF-8")


@pytest.fixture(scope="module")
def hf_folder(workspace):
    out = workspace.root / "hf"
    if not out.exists():
        assert invoke("export-hf", workspace.run, out).exit_code == 0
    return out


@pytest.mark.parametrize("field, value", [("n_embd", None), ("n_layer", 2.5), ("layer_norm_epsilon", "small"),
                                          ("tie_word_embeddings", "no"), ("n_positions", [16]), ("vocab_size", None)])
def test_an_hf_config_with_a_null_or_wrong_typed_field_is_one_error_line(hf_folder, tmp_path, field, value):
    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_line_error(invoke("import-hf", folder, tmp_path / "imported"), rf"field {field}")
    assert not (tmp_path / "imported").exists()


def test_non_finite_weights_are_refused_on_import_and_named_on_load(workspace, hf_folder, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.0.mlp.c_fc.weight"][0, 0] = np.nan
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert_one_line_error(invoke("import-hf", folder, tmp_path / "imported"), "h.0.mlp.c_fc.weight.*non-finite")
    run = copy_run(workspace, tmp_path)
    for which in ("best", "latest"):
        checkpoint = load_checkpoint(run / "checkpoints" / which)
        checkpoint.weights["wte.weight"][3, 1] = np.inf
        save_checkpoint(run / "checkpoints" / which, checkpoint)
    assert_one_line_error(invoke("sample", run, "--max-new-tokens", "2"), "wte.weight holds non-finite")


@pytest.mark.parametrize("toml, fragment", [
    ("[[train]]\nn_layer = 2\n", "array of tables"),
    ("n_layer = 2\n[train]\nn_head = 2\n", "beside the \\[train\\] table"),
    ("[model]\nn_layer = 2\n", "unknown table \\[model\\]"),
    ("n_layer = [1, 2]\n", "n_layer must be a single value"),
])
def test_toml_tables_arrays_and_stray_keys_are_one_error_line(workspace, tmp_path, toml, fragment):
    config = tmp_path / "config.toml"
    config.write_text(toml)
    result = invoke("train", "--headless", "--config", config, "--data", workspace.corpus, "--out", tmp_path / "r")
    assert_one_line_error(result, fragment)


def test_an_out_of_range_muon_lr_scale_is_refused_at_validation(workspace, tmp_path):
    result = invoke("train", "--headless", *TINY, "--optimizer", "muon", "--muon-lr-scale", "1e300", "--data",
                    workspace.corpus, "--out", tmp_path / "r")
    assert_one_line_error(result, "muon_lr_scale x learning_rate must be at most")
    assert not (tmp_path / "r").exists()


def test_torch_out_of_memory_mid_step_is_the_out_of_memory_line(workspace, tmp_path, monkeypatch):
    import torch

    from backends.torch_backend import TorchBackend

    real = TorchBackend._loss
    calls = []

    def fails_on_the_third(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args)

    monkeypatch.setattr(TorchBackend, "_loss", fails_on_the_third)
    result = invoke("train", "--headless", *TINY, "--max-iters", "4", "--eval-iters", "1", "--eval-interval", "100",
                    "--data", workspace.corpus, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: out of memory at step ") and "CUDA out of memory" in lines[-1], lines
    assert len(lines) == 2 and "Traceback" not in result.stderr  # the run's header line, then the one error


def test_huge_windows_are_capped_at_the_distinct_windows(workspace):
    result = invoke("heads", workspace.run, "--windows", str(10**12))
    assert result.exit_code == 0, result.stderr
    windows = int(result.stdout.split(" windows of ")[0].rsplit(" ", 1)[1])
    assert 1 <= windows < 10**4


# ---- 4. no hangs


def fifo_in_place_of(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "checkpoints/best/state.json"])
def test_a_fifo_as_a_run_file_is_named_and_never_waited_for(workspace, tmp_path, name):
    run = copy_run(workspace, tmp_path)
    fifo = fifo_in_place_of(run / name)
    assert_one_line_error(invoke_bounded("sample", run, "--max-new-tokens", "2", fifos=(fifo,), seconds=20), "FIFO")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_a_fifo_in_an_hf_folder_is_named_and_never_waited_for(hf_folder, tmp_path, name):
    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    fifo = fifo_in_place_of(folder / name)
    result = invoke_bounded("import-hf", folder, tmp_path / "imported", fifos=(fifo,), seconds=20)
    assert_one_line_error(result, "FIFO")


def test_a_fifo_as_a_toml_config_is_named_and_never_waited_for(workspace, tmp_path):
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    result = invoke_bounded("train", "--headless", "--config", fifo, "--out", tmp_path / "r", fifos=(fifo,),
                            seconds=20)
    assert_one_line_error(result, "FIFO")


def test_dev_zero_behind_a_link_is_refused_without_reading_it(workspace, tmp_path):
    run = copy_run(workspace, tmp_path)
    (run / "tokenizer.json").unlink()
    (run / "tokenizer.json").symlink_to("/dev/zero")
    assert_one_line_error(invoke("sample", run), "character device")


def test_bpe_training_feeds_pathological_lines_in_bounded_pieces():
    from minigpt_tui.training.bpe import MAX_PIECE, training_pieces

    text = "x" * (MAX_PIECE * 5 + 3) + "\nshort line\n"
    pieces = list(training_pieces(text))
    assert "".join(pieces) == text and max(map(len, pieces)) <= MAX_PIECE and "short line\n" in pieces


# ---- 5. resume tells the truth


def test_a_resume_that_would_train_nothing_is_refused_and_changes_nothing(workspace, tmp_path):
    run = copy_run(workspace, tmp_path)
    before = snapshot(run)
    result = invoke("train", "--headless", "--resume", run, "--max-iters", "2")
    assert_one_line_error(result, "at step 4.*trains nothing")
    assert snapshot(run) == before


@pytest.mark.parametrize("flags", [["--tokenizer", "bpe"], ["--vocab-size", "300"]])
def test_changing_the_tokenizer_on_resume_is_named_as_that(workspace, tmp_path, flags):
    run = copy_run(workspace, tmp_path)
    result = invoke("train", "--headless", "--resume", run, *flags, "--max-iters", "6")
    assert_one_line_error(result, "cannot change the tokenizer when resuming")


def test_an_imported_run_fine_tuned_on_a_corpus_is_bound_to_it(hf_folder, workspace, tmp_path):
    run = tmp_path / "imported"
    assert invoke("import-hf", hf_folder, run).exit_code == 0
    tuned = invoke("train", "--headless", "--resume", run, "--data", workspace.corpus, "--max-iters", "2")
    assert tuned.exit_code == 0, tuned.stderr
    assert json.loads((run / "config.json").read_text())["data_source"] == str(workspace.corpus.resolve())
    other = tmp_path / "other.txt"
    other.write_text(workspace.corpus.read_text()[::-1])
    result = invoke("train", "--headless", "--resume", run, "--data", other, "--max-iters", "4")
    assert_one_line_error(result, "is not the corpus")


SLOW_PUBLISH = ("import sys, time; from minigpt_tui.interop import hf; real = hf.publish; "
                "hf.publish = lambda *a: (time.sleep(60), real(*a)); from minigpt_tui.cli import main; "
                "sys.argv[0] = 'minigpt'; main()")


@pytest.mark.parametrize("command", ["export-hf", "import-hf"])
def test_sigterm_during_export_or_import_prints_one_line_and_removes_the_staging_folder(workspace, hf_folder,
                                                                                        tmp_path, command):
    source = workspace.run if command == "export-hf" else hf_folder
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PUBLISH, command, str(source), str(out)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(CODE)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert list(tmp_path.glob(".out.*")), "no staging folder appeared"
    time.sleep(0.3)  # inside the slow publish
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert [line for line in stderr.splitlines() if line.strip()] == ["interrupted"], stderr
    assert list(tmp_path.iterdir()) == []


def test_the_run_files_outputs_protect_are_the_run_folders_own():
    from minigpt_tui.experiments.variants import RESULT_FILE
    from minigpt_tui.storage import RUN_FILES, RUN_MARKERS
    from minigpt_tui.training import runs

    own = {runs.CONFIG_FILE, runs.TOKENIZER_FILE, runs.METRICS_FILE, runs.CHECKPOINTS, runs.LOCK_FILE,
           runs.OWNER_FILE, RESULT_FILE}
    assert own <= RUN_FILES and set(RUN_MARKERS) <= own

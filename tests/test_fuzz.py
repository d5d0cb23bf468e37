"""Property-based fuzzing of the run folder and of the commands' numeric options (hypothesis).

Each case damages one file of a trained run (truncate, flip a byte, change a JSON field's type or
value, delete it, replace it with a folder), or gives one numeric option an arbitrary value, then
runs a command. The property: the command works, or exits 2 with one ``error:`` line (warnings
aside) and no traceback; and the run stays loadable, as it is or once the damaged file is restored.

CI runs a small, derandomized profile (fixed seed). ``MINIGPT_FUZZ=wide`` runs many more cases:

    MINIGPT_FUZZ=wide python -m pytest -q tests/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import invoke

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training import memory
from minigpt_tui.training.checkpoint import load_checkpoint
from minigpt_tui.training.runs import load_model, open_run, snapshot_steps
from minigpt_tui.training.trainer import Trainer

COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)
settings.register_profile("fuzz-ci", max_examples=12, derandomize=True, **COMMON)
settings.register_profile("fuzz-wide", max_examples=300, **COMMON)
FUZZ = settings.get_profile(f"fuzz-{os.environ.get('MINIGPT_FUZZ', 'ci')}")  # these tests only, not the suite's

COUNTS_FILE = os.environ.get("MINIGPT_FUZZ_COUNTS")  # where a fuzz run appends one JSON line per case

# ---- the property


def outcome_is_clean(result) -> str:
    """'ok', 'error' or 'stopped'; fails the test on a traceback or a multi-line error."""
    text = result.output + result.stderr
    assert "Traceback" not in text, text
    if result.exit_code == 0:
        return "ok"
    if result.exit_code == 130:  # the harness stopped a long training: a checkpoint was kept
        return "stopped"
    if result.exit_code == 1:  # a diverged training (a huge learning rate): stopped with its message
        assert "last good checkpoint is kept" in result.stderr, result.stderr
        return "diverged"
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert not any(line.startswith("error: internal error") for line in errors), result.stderr  # a bug, caught
    assert len(errors) == 1 and all(line.startswith(("error: ", "warning: ")) for line in lines), result.stderr
    return "error"


def loadable(run: Path) -> bool:
    try:
        load_model(open_run(run), which="latest")
        load_checkpoint(run / "checkpoints" / "latest")
        for step in snapshot_steps(open_run(run)):  # snapshots are kept as carefully as checkpoints
            load_checkpoint(open_run(run).snapshot_dir(step), with_optimizer=False)
    except MiniGPTError:
        return False
    return True


def record(kind: str, case: str, outcome: str) -> None:
    if COUNTS_FILE:
        with open(COUNTS_FILE, "a") as f:
            f.write(json.dumps({"kind": kind, "case": case, "outcome": outcome}) + "\n")


@pytest.fixture(autouse=True)
def bounded(monkeypatch):
    """Keep every case small: 64 MiB of "available" memory, and any training stopped after half a second."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 2**20)
    real_run = Trainer.run

    def run_briefly(self):
        timer = threading.Timer(0.5, self.request_stop)
        timer.start()
        try:
            return real_run(self)
        finally:
            timer.cancel()

    monkeypatch.setattr(Trainer, "run", run_briefly)


# ---- damaging the run folder

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                              max_size=2))


def run_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and not p.name.startswith(".lock"))


def json_paths(document, prefix=()) -> list[tuple]:
    """Every key path of a JSON document (objects only)."""
    paths = []
    if isinstance(document, dict):
        for key, value in document.items():
            paths.append((*prefix, key))
            paths += json_paths(value, (*prefix, key))
    return paths


@st.composite
def damages(draw, files: list[str]):
    name = draw(st.sampled_from(files))
    kind = draw(st.sampled_from(["truncate", "flip", "json", "delete", "folder"] if name.endswith(".json")
                                else ["truncate", "flip", "delete", "folder"]))
    return name, kind, draw(st.integers(min_value=0, max_value=2**20)), draw(JSON_VALUES), draw(st.integers(0, 10**6))


def damage(run: Path, name: str, kind: str, position: int, value, pick: int) -> str:
    path = run / name
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: position % (len(data) + 1)])
        return f"{name}: truncated to {position % (len(data) + 1)} bytes"
    if kind == "flip":
        if not data:
            return f"{name}: empty, nothing to flip"
        i = position % len(data)
        path.write_bytes(data[:i] + bytes([data[i] ^ (1 << pick % 8)]) + data[i + 1 :])
        return f"{name}: flipped bit {pick % 8} of byte {i}"
    if kind == "delete":
        path.unlink()
        return f"{name}: deleted"
    if kind == "folder":
        path.unlink()
        path.mkdir()
        return f"{name}: replaced by a folder"
    if name.endswith("metrics.jsonl"):
        return f"{name}: not one JSON document"
    document = json.loads(data)
    keys = json_paths(document)
    if not keys:
        return f"{name}: no fields"
    key = keys[pick % len(keys)]
    target = document
    for part in key[:-1]:
        target = target[part]
    target[key[-1]] = value
    path.write_text(json.dumps(document))
    return f"{name}: field {'.'.join(map(str, key))} = {value!r}"


COMMANDS = {
    "sample": lambda run, corpus: ["sample", run, "--max-new-tokens", "5"],
    "sample latest": lambda run, corpus: ["sample", run, "--checkpoint", "latest", "--max-new-tokens", "5"],
    "eval": lambda run, corpus: ["eval", run, "--data", corpus],
    "resume": lambda run, corpus: ["train", "--headless", "--resume", run, "--data", corpus, "--max-iters", "6"],
    "export-plots": lambda run, corpus: ["export-plots", run, "--out", run.parent / "plots"],
    "ablate exposure": lambda run, corpus: ["ablate", "exposure", run, "--data", corpus, "--samples", "1",
                                            "--length", "4", "--out", run.parent / "exposure"],
    "inspect at a snapshot": lambda run, corpus: ["inspect", run, "--text", "the", "--step", "2", "--logit-lens"],
    "heads ablate": lambda run, corpus: ["heads", run, "--ablate", "--windows", "1", "--data", corpus],
    "timelapse": lambda run, corpus: ["timelapse", run, "--data", corpus, "--windows", "1", "--sample-tokens", "3",
                                      "--text", "the"],
}


@pytest.fixture(scope="module")
def pristine(workspace):
    assert loadable(workspace.run)
    return workspace.run


@settings(FUZZ)
@given(data=st.data())
def test_a_damaged_run_folder_never_gives_a_traceback_nor_loses_the_run(pristine, workspace, data):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(pristine, run)
        name, kind, position, value, pick = data.draw(damages(run_files(run)))
        case = damage(run, name, kind, position, value, pick)
        command = data.draw(st.sampled_from(sorted(COMMANDS)))
        outcome = outcome_is_clean(invoke(*COMMANDS[command](run, workspace.corpus)))
        record("folder", f"{command} after {kind} of {name}", outcome)
        if not loadable(run):  # the damage itself may be what stops it loading: undo it, nothing else may be lost
            target = run / name
            if target.is_dir():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pristine / name, target)
            assert loadable(run), f"{case}, then {command}: the run no longer loads"


# ---- every numeric option of every command

NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "", "1,2", " 3 "]),
)


def train_flags() -> list[str]:
    from minigpt_tui.training.config import field_names, field_type

    return [name.replace("_", "-") for name in field_names() if field_type(name) in (int, float)]


OPTION_COMMANDS = {
    **{f"train --{flag}": (lambda run, corpus, out, flag=flag: ["train", "--headless", *TINY, "--max-iters", "3",
                                                                  "--data", corpus, "--out", out], f"--{flag}")
       for flag in train_flags()},
    **{f"resume --{flag}": (lambda run, corpus, out: ["train", "--headless", "--resume", run], f"--{flag}")
       for flag in ("max-iters", "learning-rate", "eval-interval", "batch-size", "seed")},
    **{f"sample {opt}": (lambda run, corpus, out: ["sample", run], opt)
       for opt in ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed")},
    "eval --stride": (lambda run, corpus, out: ["eval", run, "--data", corpus], "--stride"),
    **{f"ablate temperature {opt}": (lambda run, corpus, out: ["ablate", "temperature", run, "--data", corpus,
                                                               "--samples", "1", "--length", "4", "--out", out], opt)
       for opt in ("--samples", "--length", "--seed", "--temperatures")},
    **{f"ablate exposure {opt}": (lambda run, corpus, out: ["ablate", "exposure", run, "--data", corpus,
                                                            "--samples", "1", "--length", "4", "--out", out], opt)
       for opt in ("--samples", "--length", "--seed")},
    **{f"ablate context {opt}": (lambda run, corpus, out: ["ablate", "context", "--data", corpus, "--out", out,
                                                           "--in-process", *TINY, "--max-iters", "2",
                                                           "--block-sizes", "8", "--tokens-per-step", "32",
                                                           "--bench-rounds", "0"], opt)
       for opt in ("--block-sizes", "--tokens-per-step", "--threads")},
    "ablate tokenizer --vocab-sizes": (lambda run, corpus, out: ["ablate", "tokenizer", "--data", corpus, "--out",
                                                                  out, "--in-process", *TINY, "--max-iters", "2"],
                                       "--vocab-sizes"),
    **{f"bench {opt}": (lambda run, corpus, out: ["bench", "--preset", "tiny", "--iters", "1", "--gen-tokens", "2",
                                                  "--device", "cpu"], opt)
       for opt in ("--iters", "--gen-tokens", "--threads")},
}


# options that only say how much work to do: large valid values are clamped so a case stays short
WORK_AMOUNTS = ("--iters", "--gen-tokens", "--max-new-tokens", "--length", "--samples")


def as_argument(value) -> str:
    if isinstance(value, float) and math.isfinite(value) and abs(value) > 1e6:
        return f"{value:.3e}"  # bench --iters 1e300 as a number, not 300 digits
    return str(value)


@settings(FUZZ, max_examples=FUZZ.max_examples * 2)  # the options are many and their cases cheap
@given(option=st.sampled_from(sorted(OPTION_COMMANDS)), value=NUMBERS)
def test_any_numeric_option_value_works_or_is_one_error_line(pristine, workspace, option, value):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(pristine, run)
        make_args, flag = OPTION_COMMANDS[option]
        args = make_args(run, workspace.corpus, Path(tmp) / "out")
        if flag in WORK_AMOUNTS and isinstance(value, int) and value > 50:
            value = 50  # a valid request for a long job (a million tokens) would be honoured: keep the case short
        outcome = outcome_is_clean(invoke(*args, flag, as_argument(value)))
        record("option", option, outcome)
        assert loadable(run)

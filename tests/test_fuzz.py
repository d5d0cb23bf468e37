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
import signal
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
    "report": lambda run, corpus: ["report", run, "--data", corpus, "--samples", "1", "--length", "4", "--out",
                                   run.parent / "report"],
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


# ---- output paths of every kind

OUTPUT_KINDS = ("new file", "existing file", "folder", "symlink", "fifo", "device", "run config", "run checkpoint",
                "missing parent", "read-only file", "read-only folder", "empty", "dash", "long name")
OUTPUT_COMMANDS = {
    "eval --json": lambda run, path: ["eval", run, "--json", path],
    "heads --json": lambda run, path: ["heads", run, "--windows", "2", "--json", path],
    "heads --png": lambda run, path: ["heads", run, "--windows", "2", "--png", path],
    "inspect --png": lambda run, path: ["inspect", run, "--text", "the", "--png", path],
    "inspect --json": lambda run, path: ["inspect", run, "--text", "the", "--json", path],
    "export-plots --out": lambda run, path: ["export-plots", run, "--out", path],
    "export-plots --name": lambda run, path: ["export-plots", run, "--out", Path(path).parent if str(path) not in
                                              ("", "-") else run.parent / "plots", "--name", Path(path).name],
    "ablate exposure --out": lambda run, path: ["ablate", "exposure", run, "--samples", "1", "--length", "4",
                                                "--out", path],
}


def output_path(kind: str, root: Path, run: Path) -> Path | str:
    target = root / "target" / "out.json"
    target.parent.mkdir()
    if kind in ("existing file", "read-only file"):
        target.write_text("old")
        if kind == "read-only file":
            target.chmod(0o444)
    elif kind == "folder":
        target.mkdir()
    elif kind == "symlink":
        target.symlink_to(root / "target" / "elsewhere")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "read-only folder":
        target.parent.chmod(0o555)
    return {"device": "/dev/null", "run config": run / "config.json", "empty": "", "dash": "-",
            "run checkpoint": run / "checkpoints" / "best" / "model.safetensors",
            "missing parent": root / "target" / "a" / "b" / "out.json",
            "long name": root / "target" / ("n" * 300)}.get(kind, target)


@settings(FUZZ)
@given(kind=st.sampled_from(OUTPUT_KINDS), command=st.sampled_from(sorted(OUTPUT_COMMANDS)))
def test_any_output_path_is_written_whole_or_refused_in_one_line(pristine, workspace, kind, command):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = root / "run"
        shutil.copytree(pristine, run)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.name.startswith(".lock")}
        path = output_path(kind, root, run)
        args = [*OUTPUT_COMMANDS[command](run, path), "--data", workspace.corpus]
        if command.startswith("export-plots"):
            args = args[:-2]  # export-plots reads metrics only
        outcome = outcome_is_clean(invoke(*args))
        record("output", f"{command} to {kind}", outcome)
        try:
            assert all(p.read_bytes() == data for p, data in before.items()), f"{command} to {kind} changed the run"
            assert os.path.exists("/dev/null") and not Path("/dev/null").is_file()
            if kind == "fifo":
                assert Path(path).is_fifo()
            if kind == "symlink":
                assert Path(path).is_symlink() and not (root / "target" / "elsewhere").exists()
            if kind == "read-only file":
                assert Path(path).read_text() == "old"
            leftovers = [p for p in (root / "target").rglob(".*") if p.name.endswith(".tmp")]
            assert not leftovers, leftovers
        finally:
            (root / "target").chmod(0o755)


# ---- ablation command lines


GRID_FIELDS = ("learning_rate", "max_iters", "qk_norm", "n_layer", "seed", "optimizer", "warp", "batch_size")
GRID_VALUES = st.sampled_from(["1e-3", "0.001", "2e-3", "1", "2", "2", "true", "True", "false", "muon", "adamw",
                               "", "-1", "nan", "1e400", "x", "0"])


@st.composite
def grids(draw) -> str:
    entries = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(GRID_FIELDS))
        entries.append(f"{name}={','.join(draw(st.lists(GRID_VALUES, min_size=0, max_size=4)))}")
    return " ".join(entries)


INT_LISTS = st.lists(st.sampled_from(["8", "16", "8", "0", "-4", "", "x", "300", "256", "2**70"]), max_size=4).map(
    ",".join)
ABLATION_LINES = {
    "sweep": lambda draw: ["sweep", "--grid", draw(grids()), "--seeds", draw(INT_LISTS)],
    "ladder": lambda draw: ["ladder", "--rows", draw(st.sampled_from(["baseline", "muon,rope", "", "warp",
                                                                      "muon,muon"])), "--seeds", draw(INT_LISTS)],
    "context": lambda draw: ["context", "--block-sizes", draw(INT_LISTS), "--tokens-per-step", "32"],
    "tokenizer": lambda draw: ["tokenizer", "--vocab-sizes", draw(INT_LISTS)],
}


@settings(FUZZ)
@given(data=st.data())
def test_any_ablation_command_line_is_accepted_whole_or_refused_before_anything_is_touched(workspace, data,
                                                                                         monkeypatch):
    """Parsing and checking only: an accepted line hands its variants to the pipeline, which records them
    (the training itself is fuzzed by the kill loop below)."""
    from minigpt_tui.experiments import pipeline
    from minigpt_tui.storage import check_file_name

    handed = []
    monkeypatch.setattr(pipeline, "run_training_ablation",
                        lambda kind, base, variants, *a, **k: (handed.append(variants), ([], []))[1])
    kind = data.draw(st.sampled_from(sorted(ABLATION_LINES)))
    line = ABLATION_LINES[kind](data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ablation"
        result = invoke("ablate", *line, "--data", workspace.corpus, "--out", out, "--in-process", *TINY)
        outcome = outcome_is_clean(result)
        record("ablation line", kind, outcome)
        if outcome == "error":
            assert not out.exists(), line
        else:
            names = [name for name, _ in handed[-1]]
            assert len(set(names)) == len(names) and all(check_file_name(n) for n in names), names


# ---- Hugging Face folders, damaged


@pytest.fixture(scope="module")
def hf_pristine(workspace):
    out = workspace.root / "hf-fuzz"
    assert invoke("export-hf", workspace.run, out).exit_code == 0
    return out


@settings(FUZZ)
@given(data=st.data())
def test_a_damaged_hf_folder_imports_or_is_one_error_line(hf_pristine, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        shutil.copytree(hf_pristine, folder)
        files = sorted(p.name for p in folder.iterdir())
        name, kind, position, value, pick = data.draw(damages(files))
        if data.draw(st.booleans()) and kind == "delete":
            (folder / name).unlink()
            os.mkfifo(folder / name)
            case = f"{name}: replaced by a FIFO"
        else:
            case = damage(folder, name, kind, position, value, pick)
        if name == "model.safetensors" and data.draw(st.booleans()):
            from safetensors.numpy import load_file, save_file

            if (folder / name).is_file():
                try:
                    tensors = load_file(folder / name)
                    key = sorted(tensors)[pick % len(tensors)]
                    tensors[key].flat[position % tensors[key].size] = data.draw(st.sampled_from(
                        [math.nan, math.inf, -math.inf, 1e30]))
                    save_file(tensors, folder / name, metadata={"format": "pt"})
                    case += f", then {key} given a non-finite or huge value"
                except Exception:
                    pass  # the damage above already made it unreadable: that is the case
        outcome = outcome_is_clean(invoke("import-hf", folder, Path(tmp) / "imported"))
        record("hf folder", case, outcome)
        if outcome == "ok":
            assert invoke("sample", Path(tmp) / "imported", "--max-new-tokens", "2").exit_code in (0, 2)
        else:
            assert not (Path(tmp) / "imported").exists()


# ---- a kill loop over ablate

KILL_LOOP = settings(FUZZ, max_examples=1 if os.environ.get("MINIGPT_FUZZ", "ci") == "ci" else 6)


def child_pids(pid: int) -> set[int]:
    children = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            children.add(int(status.parent.name))
    return children


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads worker processes from /proc")
@KILL_LOOP
@given(delay=st.floats(min_value=0.0, max_value=6.0))
def test_sigterm_at_any_moment_of_an_ablation_ends_its_workers_and_a_rerun_completes_it(workspace, delay):
    import subprocess
    import sys
    import time

    import minigpt_tui

    code = Path(minigpt_tui.__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sweep"
        command = [sys.executable, "-m", "minigpt_tui", "ablate", "sweep", "--grid", "learning_rate=1e-3,2e-3",
                   "--seeds", "1", "--isolate", "--data", str(workspace.corpus), "--out", str(out), *TINY,
                   "--max-iters", "6", "--eval-interval", "2"]
        env = {**os.environ, "PYTHONPATH": str(code)}
        proc = subprocess.Popen(command, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        started, workers = time.monotonic(), set()
        while time.monotonic() - started < delay + 2 and proc.poll() is None:  # +2: the interpreter's start
            workers |= child_pids(proc.pid)
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr
        assert proc.returncode in (0, 130), (proc.returncode, stderr)
        if proc.returncode == 130:
            assert stderr.strip().splitlines()[-1] == "interrupted", stderr
        time.sleep(0.5)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
                 and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
        assert not alive, f"workers {alive} outlived the ablation"
        record("kill ablate", f"SIGTERM after {delay:.1f} s", "stopped" if proc.returncode == 130 else "ok")
        # in-process: the same variants and checks, without a fresh interpreter per variant to wait for
        rerun = subprocess.run([*command, "--in-process"], cwd=tmp, env=env, capture_output=True, text=True,
                               timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        results = json.loads((out / "results.json").read_text())["results"]
        assert [r["name"] for r in results] == ["learning_rate=0.001-seed1", "learning_rate=0.002-seed1"]
        for r in results:
            trained = json.loads((Path(r["run_dir"]) / "config.json").read_text())["config"]
            assert trained["max_iters"] == 6 and trained["learning_rate"] == float(r["name"].split("=")[1][:5])

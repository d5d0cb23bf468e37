"""The run folder as a contract: the five worst defects of issue 10, the lock, and the tolerant reader.

Every test here drives the ``minigpt`` CLI as a user would, so that it also ran against the code
before the change (and failed there; see the README's reliability section).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY
from test_cli import assert_one_line_error, invoke

ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, corpus: Path, *extra) -> object:
    return invoke("train", "--headless", *TINY, "--max-iters", "4", "--eval-interval", "2", "--data", corpus,
                  "--out", out, *extra)


def copy_run(workspace, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(workspace.run, run)
    return run


def last_step(run: Path) -> int:
    return json.loads((run / "checkpoints" / "latest" / "state.json").read_text())["step"]


# ---- defect 1: no lock


def hold_the_run(run: Path) -> subprocess.Popen:
    """Another process that holds ``run`` as its writer (through the same lock the trainer takes)."""
    code = (
        "import sys, time\n"
        "from minigpt_tui.training.runs import RunLock\n"
        f"lock = RunLock({str(run)!r}).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_fails_at_once_naming_the_pid(workspace, tmp_path):
    """Defect 1: two ``--resume R`` at once both exited 0 and one run was silently lost."""
    run = copy_run(workspace, tmp_path)
    before = last_step(run)
    holder = hold_the_run(run)
    try:
        started = time.monotonic()
        result = invoke("train", "--headless", "--resume", run, "--max-iters", "8")
        assert_one_line_error(result, rf"run {run} is in use by another process \(PID {holder.pid}\)")
        assert time.monotonic() - started < 30  # at once: it does not wait for the lock
        assert last_step(run) == before
        # a new run into the same folder is refused too (it holds checkpoints, and it is in use)
        assert train(run, workspace.corpus).exit_code == 2
    finally:
        holder.kill()
        holder.wait()
    # the lock of a killed process never blocks the next run
    result = invoke("train", "--headless", "--resume", run, "--max-iters", "6")
    assert result.exit_code == 0, result.stderr
    assert last_step(run) == 6


def test_two_resumes_started_together_one_wins(workspace, tmp_path):
    """Defect 1 as reported: two ``--resume R`` processes at once both exited 0. Now one trains, the other exits 2
    with one line at once."""
    run = copy_run(workspace, tmp_path)
    command = [sys.executable, "-m", "minigpt_tui", "train", "--headless", "--resume", str(run), "--max-iters", "40",
               "--eval-interval", "20"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    stderr = next(err for code, err in results if code == 2)
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "is in use by another process (PID" in errors[0] and "Traceback" not in stderr, stderr
    assert last_step(run) == 40


# ---- defect 2: metrics the trainer writes can break readers


def test_infinite_perplexity_and_nan_evals_plot_as_gaps(workspace, tmp_path):
    """Defect 2a: a loss >= 700 gives perplexity inf, a diverged run a NaN eval: export-plots crashed."""
    run = copy_run(workspace, tmp_path)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    huge = {**evals[-1], "step": evals[-1]["step"] + 1, "val_loss": 800.0, "val_perplexity": math.inf}
    nan = {**evals[-1], "step": evals[-1]["step"] + 2, "val_loss": math.nan, "train_loss": math.nan,
           "val_perplexity": math.nan}
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(huge) + "\n" + json.dumps(nan) + "\n")
    result = invoke("export-plots", run, "--out", tmp_path / "plots")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert len(list((tmp_path / "plots").glob("*.png"))) == 3


@pytest.mark.parametrize("bad_line", [b"\xff\xfe stray bytes", b"[1,2]", b'{"type":"eval"}', b'{"type": "step",'])
def test_a_damaged_metrics_line_never_blocks_resume_or_plots(workspace, tmp_path, bad_line):
    """Defect 2b: one bad line blocked ``--resume`` of a healthy run (and crashed the TUI)."""
    run = copy_run(workspace, tmp_path)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    lines.insert(2, bad_line + b"\n")
    (run / "metrics.jsonl").write_bytes(b"".join(lines))
    plotted = invoke("export-plots", run, "--out", tmp_path / "plots")
    assert plotted.exit_code == 0, (plotted.stderr, plotted.exception)
    assert "skipped damaged line 3" in plotted.stderr and plotted.stderr.count("warning:") == 1
    resumed = invoke("train", "--headless", "--resume", run, "--max-iters", "6")
    assert resumed.exit_code == 0, (resumed.stderr, resumed.exception)
    assert last_step(run) == 6


def test_the_tui_opens_a_run_with_damaged_metrics(workspace, tmp_path):
    import asyncio

    from minigpt_tui.tui.app import create_app

    run = copy_run(workspace, tmp_path)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'[1,2]\n{"type":"eval"}\n')

    async def scenario():
        app = create_app(run)
        async with app.run_test() as pilot:
            await pilot.pause()
            assert app.run_info is not None and app.pane.status.step == 4
            assert app.is_running

    asyncio.run(scenario())


def test_the_tui_follows_a_locked_run_read_only(workspace, tmp_path):
    import asyncio

    from minigpt_tui.tui.app import create_app

    run = copy_run(workspace, tmp_path)
    holder = hold_the_run(run)
    try:
        async def scenario():
            app = create_app(run)
            async with app.run_test() as pilot:
                await pilot.pause()
                assert app.following
                await pilot.press("c")
                await pilot.pause()
                assert not app.training  # continuing a run another process holds is refused

        asyncio.run(scenario())
    finally:
        holder.kill()
        holder.wait()


# ---- defect 3: silent overwrite


def test_a_folder_holding_checkpoints_is_never_overwritten(workspace, tmp_path):
    """Defect 3: a folder whose config.json was missing but whose checkpoints remained was overwritten."""
    run = copy_run(workspace, tmp_path)
    (run / "config.json").unlink()
    weights = (run / "checkpoints" / "latest" / "model.safetensors").read_bytes()
    assert_one_line_error(train(run, workspace.corpus), "already holds a run")
    assert (run / "checkpoints" / "latest" / "model.safetensors").read_bytes() == weights
    # only the explicit flag starts afresh
    assert train(run, workspace.corpus, "--overwrite").exit_code == 0


# ---- defect 4: dead end


def test_a_run_killed_before_its_first_checkpoint_can_be_restarted(workspace, tmp_path):
    """Defect 4: it could be neither resumed ("no checkpoint") nor restarted ("already holds a run")."""
    run = copy_run(workspace, tmp_path)
    shutil.rmtree(run / "checkpoints")  # the state a kill during the first evaluation leaves
    assert_one_line_error(invoke("train", "--headless", "--resume", run), "no checkpoint")
    result = train(run, workspace.corpus)
    assert result.exit_code == 0, result.stderr
    assert last_step(run) == 4


# ---- defect 5: state.json outside the integrity check


@pytest.mark.parametrize("field, value", [("step", -3), ("step", "2"), ("samplers", 7), ("best_val_loss", "low")])
def test_an_edited_state_json_is_one_error_line(workspace, tmp_path, field, value):
    """Defect 5: an edited field gave a traceback; a negative step trained at a negative learning rate."""
    run = copy_run(workspace, tmp_path)
    path = run / "checkpoints" / "latest" / "state.json"
    state = json.loads(path.read_text())
    state[field] = value
    path.write_text(json.dumps(state))
    metrics = (run / "metrics.jsonl").read_bytes()
    assert_one_line_error(invoke("train", "--headless", "--resume", run, "--max-iters", "8"), "state.json")
    assert (run / "metrics.jsonl").read_bytes() == metrics  # nothing truncated


# ---- the rest of the family


def test_resuming_on_another_corpus_is_refused(workspace, tmp_path):
    run = copy_run(workspace, tmp_path)
    other = tmp_path / "other.txt"
    other.write_text(workspace.corpus.read_text()[::-1])
    assert_one_line_error(invoke("train", "--headless", "--resume", run, "--data", other),
                          "is not the corpus run .* was trained on")


@pytest.mark.parametrize("special", ["/dev/null", "fifo"])
def test_a_fifo_or_a_device_as_data_is_named_for_what_it_is(tmp_path, special):
    path = Path(special)
    if special == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    result = invoke("train", "--headless", *TINY, "--data", path, "--out", tmp_path / "run")
    assert_one_line_error(result, "not a regular file")


@pytest.mark.parametrize("seed", ["-1", "-9223372036854775807", "18446744073709551615"])
def test_any_integer_seed_works_or_is_named(workspace, tmp_path, seed):
    result = train(tmp_path / "run", workspace.corpus, "--seed", seed)
    if result.exit_code != 0:
        assert_one_line_error(result, f"seed.*{seed}")
    sampled = invoke("sample", workspace.run, "--seed", seed, "--max-new-tokens", "3")
    assert sampled.exit_code == 0, sampled.stderr


@pytest.mark.parametrize("flags", [["--n-embd", "100000", "--n-head", "1"], ["--batch-size", "100000000"]])
def test_a_config_that_cannot_fit_in_memory_is_refused_before_allocating(workspace, tmp_path, flags):
    result = invoke("train", "--headless", *TINY, *flags, "--data", workspace.corpus, "--out", tmp_path / "run")
    assert_one_line_error(result, "GiB is available")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_huge_bpe_vocabulary_is_refused(workspace, tmp_path):
    result = train(tmp_path / "run", workspace.corpus, "--tokenizer", "bpe", "--vocab-size", "1000000000")
    assert_one_line_error(result, r"vocab_size must be in \[256, 65536\] for BPE")


def test_eval_on_a_one_character_text(workspace, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("T")
    assert_one_line_error(invoke("eval", workspace.run, "--data", one), "too short")


def test_a_zero_context_in_the_context_ablation(workspace, tmp_path):
    result = invoke("ablate", "context", "--block-sizes", "0", "--data", workspace.corpus, "--out", tmp_path / "ab")
    assert_one_line_error(result, "must be positive")


def test_train_without_a_terminal_suggests_headless(workspace, tmp_path):
    result = invoke("train", "--preset", "tiny", "--data", workspace.corpus, "--out", tmp_path / "run")
    assert_one_line_error(result, "add --headless")
    tui = subprocess.run([sys.executable, "-c", "from minigpt_tui.tui.app import main; main()", str(workspace.run)],
                         cwd=ROOT,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert tui.returncode == 2 and tui.stderr.startswith("error: ") and "--headless" in tui.stderr, tui.stderr


def test_checkpoint_folders_are_readable_by_others(workspace):
    for kind in ("latest", "best"):
        assert (workspace.run / "checkpoints" / kind).stat().st_mode & 0o777 == 0o755


def test_a_disk_error_during_a_save_is_one_line_and_keeps_the_checkpoint(workspace, tmp_path, monkeypatch):
    from minigpt_tui.training import checkpoint

    run = copy_run(workspace, tmp_path)
    before = (run / "checkpoints" / "latest" / "model.safetensors").read_bytes()

    def disk_full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", disk_full)
    result = invoke("train", "--headless", "--resume", run, "--max-iters", "6")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: cannot save the latest checkpoint in {run / 'checkpoints' / 'latest'}: "
                      "No space left on device; the previous one is kept"], result.stderr
    assert (run / "checkpoints" / "latest" / "model.safetensors").read_bytes() == before
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_kill_9_during_saves_never_loses_the_run(workspace, tmp_path):
    """A checkpoint every step, and kill -9 at random moments: each time the run loads, and it continues."""
    import random

    from minigpt_tui.training.checkpoint import load_checkpoint
    from minigpt_tui.training.runs import holds_checkpoints, open_run, snapshot_steps

    run, rng = tmp_path / "run", random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(3):
        if holds_checkpoints(run):
            args = ["--resume", str(run), "--max-iters", "100000"]
        else:  # killed before its first checkpoint: no dead end, it starts afresh
            args = [*TINY, "--data", str(workspace.corpus), "--out", str(run), "--max-iters", "100000",
                    "--eval-interval", "1", "--log-interval", "1"]
        proc = subprocess.Popen([sys.executable, "-m", "minigpt_tui", "train", "--headless", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        start_size = (run / "metrics.jsonl").stat().st_size if (run / "metrics.jsonl").exists() else 0
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size > start_size:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.wait()
        if holds_checkpoints(run):
            load_checkpoint(run / "checkpoints" / "latest")
            if (run / "checkpoints" / "best").exists():
                load_checkpoint(run / "checkpoints" / "best")
    step = last_step(run)
    result = invoke("train", "--headless", "--resume", run, "--max-iters", step + 2)
    assert result.exit_code == 0, result.stderr
    assert last_step(run) == step + 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "latest"]  # no temporaries left
    # the snapshots too: every one loads, none is left half-written, and the resumed steps have theirs
    snapshots = snapshot_steps(open_run(run))
    assert snapshots[-2:] == [step + 1, step + 2]
    for snapshot in snapshots:
        load_checkpoint(open_run(run).snapshot_dir(snapshot), with_optimizer=False)
    assert [p.name for p in (run / "snapshots").iterdir() if p.name.startswith(".")] == []


def test_ctrl_c_during_a_long_first_evaluation_is_acknowledged_and_honoured(workspace, tmp_path):
    import signal

    run = tmp_path / "run"
    command = [sys.executable, "-m", "minigpt_tui", "train", "--headless", *TINY, "--eval-iters", "1000000",
               "--data", str(workspace.corpus), "--out", str(run)]
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith(f"run {run}")  # training (the first evaluation) has begun
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read()
    assert code == 130, stderr
    assert "stopping: saving a checkpoint" in stderr and "during an evaluation" in stderr, stderr
    assert last_step(run) == 0  # a run now: it resumes


def test_a_second_ctrl_c_exits_at_once(workspace, tmp_path):
    import signal

    run = copy_run(workspace, tmp_path)
    command = [sys.executable, "-m", "minigpt_tui", "train", "--headless", "--resume", str(run), "--max-iters",
               "1000000", "--eval-interval", "1000000"]
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith(f"run {run}")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read()
    assert code == 130 and "Traceback" not in stderr, stderr
    load_checkpoint_ok = subprocess.run([sys.executable, "-m", "minigpt_tui", "sample", str(run), "--checkpoint",
                                         "latest", "--max-new-tokens", "2"], cwd=ROOT, capture_output=True,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert load_checkpoint_ok.returncode == 0  # whichever Ctrl-C won, the last checkpoint is whole


def test_a_run_whose_every_value_is_nan_still_plots(workspace, tmp_path):
    run = copy_run(workspace, tmp_path)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        for key in ("loss", "train_loss", "val_loss", "val_perplexity", "val_bits_per_char", "train_bits_per_char"):
            if key in r:
                r[key] = math.nan
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = invoke("export-plots", run, "--out", tmp_path / "plots")
    assert result.exit_code == 0, (result.stderr, result.exception)

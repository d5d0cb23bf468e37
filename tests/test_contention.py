"""The contention benchmark's machinery (never its figures: those come from a quiet machine, not a test)."""

from __future__ import annotations

import math
import shlex
import sys
import time

import pytest
from test_cli import assert_one_line_error, invoke

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments import contention
from minigpt_tui.experiments.contention import (
    Measurement,
    busy_processes,
    contention_markdown,
    default_modes,
    measure_peer,
    mode_threads,
    parse_loads,
    parse_modes,
    run_contention,
)

NANOGPT_LINES = "tokens per iteration will be: 768\\niter 0: loss 4.2, time 900.00ms, mfu -100.00%\\n" \
                "iter 1: loss 4.1, time 40.00ms, mfu 1.00%\\niter 2: loss 4.0, time 60.00ms, mfu 1.00%\\n"


def fake_peer() -> str:
    return f"{shlex.quote(sys.executable)} -c \"print('{NANOGPT_LINES}')\""


def test_modes_and_loads_are_parsed_or_refused():
    assert parse_modes("auto, 1,default-passive,auto-passive") == ["auto", "1", "default-passive", "auto-passive"]
    assert mode_threads("default") == (None, False) and mode_threads("2-passive") == (2, True)
    assert default_modes(2) == ["auto", "auto-passive", "1", "2", "default", "default-passive"]
    assert parse_loads("0,1,2") == [0, 1, 2]
    for bad in ("", "fast", "0", "auto-active", "-passive"):
        with pytest.raises(MiniGPTError):
            parse_modes(bad)
    for bad in ("", "one", "-1", "65"):
        with pytest.raises(MiniGPTError):
            parse_loads(bad)


def test_bad_contention_options_are_one_line_errors():
    assert_one_line_error(invoke("bench", "--contention", "--modes", "turbo"), "a mode is auto")
    assert_one_line_error(invoke("bench", "--contention", "--loads", "x"), "loads are")
    assert_one_line_error(invoke("bench", "--contention", "--peer-cmd", "'unclosed"), "does not parse")


def test_busy_processes_run_and_are_stopped():
    with busy_processes(2, seconds=30) as procs:
        time.sleep(0.2)
        assert [p.poll() for p in procs] == [None, None]
    assert all(p.poll() is not None for p in procs)
    with busy_processes(1, seconds=0.2) as procs:  # and each ends itself at its deadline
        procs[0].wait(timeout=20)


def test_peer_tokens_per_s_come_from_its_iteration_lines():
    m = measure_peer(1, fake_peer(), 768, max_seconds=30)
    assert m.steps == 2 and m.tokens_per_s == pytest.approx(768 * 2 / 0.1) and m.note == ""
    silent = measure_peer(0, f"{shlex.quote(sys.executable)} -c pass", 768, max_seconds=30)
    assert math.isnan(silent.tokens_per_s) and "no 'iter N" in silent.note


def test_a_peer_out_of_time_is_killed_with_its_children_and_keeps_what_it_printed(monkeypatch):
    monkeypatch.setattr(contention, "STARTUP_S", 0.0)
    script = "import time; print('iter 1: loss 4.0, time 50.00ms, mfu 1%'); time.sleep(60)"
    started = time.perf_counter()
    m = measure_peer(2, f"true && {shlex.quote(sys.executable)} -c {shlex.quote(script)}", 768, max_seconds=3)
    assert time.perf_counter() - started < 30 and m.note == "stopped after 3 s"
    assert m.steps == 1 and m.tokens_per_s == pytest.approx(768 / 0.05)


def test_markdown_compares_auto_with_the_fixed_counts_and_the_default():
    rows = [Measurement(0, "auto", 900.0, 10, 1.0, "2"), Measurement(0, "1", 500.0, 10, 1.0, "1"),
            Measurement(0, "2", 1000.0, 10, 1.0, "2"), Measurement(0, "default", 300.0, 10, 1.0, "2"),
            Measurement(1, "auto", 450.0, 10, 1.0, "2>1"), Measurement(1, "1", 450.0, 10, 1.0, "1")]
    text = contention_markdown(rows)
    assert "| auto | 900 (2 threads) | 450 (2>1 threads) |" in text
    assert "quiet: auto / best fixed 0.90, auto / default 3.00" in text
    assert "1 busy process: auto / best fixed 1.00" in text


def test_one_condition_end_to_end():
    """A real worker (a fresh process: tiny preset, a few steps), then the peer under the same load."""
    results = run_contention(loads=[0], modes=["2"], preset="tiny", steps=4, max_seconds=20,
                             peer_command=fake_peer())
    worker, peer = results
    assert (worker.load, worker.mode, worker.threads, worker.steps) == (0, "2", "2", 3), worker
    assert worker.tokens_per_s > 0 and peer.mode == "peer" and peer.steps == 2

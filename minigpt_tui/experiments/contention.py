"""Training throughput on a shared machine: the baby preset beside 0, 1 and 2 busy processes.

For each load the benchmark starts that many busy-looping Python processes (each also ends itself
after a deadline, so none outlives the benchmark), then trains in a fresh process per mode, the way
``minigpt train`` trains (the real trainer, the bundled corpus):

- ``auto``: ``--threads auto``, measuring included;
- ``N``: a fixed count;
- ``default``: threads left as torch sets them (one per core), what nanoGPT and a plain torch script do;
- any of these with ``-passive`` (``default-passive``, ``auto-passive``): under ``OMP_WAIT_POLICY=PASSIVE``,
  which makes idle OpenMP threads sleep at once instead of spinning first (libgomp reads it at start-up).

Tokens/s count the steps after the first (evaluations are outside the steps). An optional peer
command (nanoGPT, say) runs under the same loads; its tokens/s come from nanoGPT's ``iter N: ... time
T ms`` lines, its wall time from the clock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.threads import AUTO, candidate_counts, parse_threads

DEFAULT = "default"
PASSIVE = "-passive"
PEER = "peer"
BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
NANOGPT_ITER = re.compile(r"^iter (\d+): loss [^,]+, time ([0-9.]+)ms", re.MULTILINE)
STARTUP_S = 120.0  # a worker's allowance beyond its step cap (torch import, corpus, evaluations) on a busy machine


def default_modes(cores: int | None = None) -> list[str]:
    return [AUTO, AUTO + PASSIVE, *map(str, candidate_counts(cores)), DEFAULT, DEFAULT + PASSIVE]


def mode_threads(mode: str):
    """(the --threads setting, None for torch's default; whether OpenMP waits passively); MiniGPTError if bad."""
    passive = mode.endswith(PASSIVE)
    base = mode[: -len(PASSIVE)] if passive else mode
    try:
        return (None if base == DEFAULT else parse_threads(base)), passive
    except MiniGPTError:
        raise MiniGPTError(f"a mode is auto, a thread count or default, each optionally with -passive; got {mode!r}") \
            from None


def parse_modes(text: str) -> list[str]:
    """``"auto,1,2,default"`` -> the modes; MiniGPTError names a bad one."""
    modes = [part.strip() for part in text.split(",") if part.strip()]
    if not modes:
        raise MiniGPTError("give at least one mode (auto, a thread count, default; any of them with -passive)")
    for mode in modes:
        mode_threads(mode)
    return modes


def parse_loads(text: str) -> list[int]:
    try:
        loads = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MiniGPTError(f"loads are comma-separated counts of busy processes, got {text!r}") from None
    if not loads or any(not 0 <= n <= 64 for n in loads):
        raise MiniGPTError(f"loads are counts of busy processes from 0 to 64, got {text!r}")
    return loads


@dataclass(frozen=True)
class Measurement:
    load: int  # busy processes running beside it
    mode: str  # auto, a thread count, default, default-passive, or peer
    tokens_per_s: float  # nan when nothing was measured
    steps: int  # steps timed
    wall_s: float  # the whole process: start-up, evaluations and all
    threads: str  # what training ended on ("2"; for auto the counts it went through, "2>1")
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def busy_processes(count: int, seconds: float) -> Iterator[list[subprocess.Popen]]:
    """``count`` CPU-bound processes for at most ``seconds`` (they stop themselves then; we stop them sooner)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=float(seconds))])
             for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_bounded(command: list[str] | str, timeout: float, env: dict | None = None) -> tuple[int | None, str]:
    """(exit code, or None when it ran out of time; stdout and stderr as far as they got). A string is a shell
    line; its whole process group is killed on time, so nothing it started keeps loading the machine."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}  # partial output survives a kill
    proc = subprocess.Popen(command, shell=isinstance(command, str), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output


def worker_command(mode: str, preset: str, steps: int, max_seconds: float) -> tuple[list[str], dict]:
    """The fresh process that measures one mode, and its environment."""
    env = dict(os.environ)
    env.pop("MINIGPT_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)  # the modes decide; an inherited limit would make them all the same
    if mode_threads(mode)[1]:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    spec = {"mode": mode, "preset": preset, "steps": steps, "max_seconds": max_seconds}
    return [sys.executable, "-m", "minigpt_tui.experiments.contention", json.dumps(spec)], env


def measure_mode(load: int, mode: str, preset: str, steps: int, max_seconds: float) -> Measurement:
    command, env = worker_command(mode, preset, steps, max_seconds)
    started = time.perf_counter()
    code, output = run_bounded(command, max_seconds + STARTUP_S, env)
    wall = time.perf_counter() - started
    if code is None:
        return Measurement(load, mode, math.nan, 0, wall, "-", "timed out")
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        reason = (output.strip().splitlines() or [f"exit code {code}"])[-1]
        return Measurement(load, mode, math.nan, 0, wall, "-", f"failed: {reason}")
    result = json.loads(lines[-1])
    return Measurement(load, mode, result["tokens_per_s"], result["steps"], wall, result["threads"], result["note"])


def measure_peer(load: int, command: str, tokens_per_iter: int, max_seconds: float) -> Measurement:
    """Run ``command`` (a shell line) and read nanoGPT-style iteration times from its output."""
    started = time.perf_counter()
    code, output = run_bounded(command, max_seconds + STARTUP_S)  # the same allowance as a worker's
    wall = time.perf_counter() - started
    note = f"stopped after {max_seconds + STARTUP_S:g} s" if code is None else (f"exit code {code}" if code else "")
    times = [float(ms) / 1000 for it, ms in NANOGPT_ITER.findall(output) if int(it) > 0]  # iter 0 warms up
    tokens_per_s = tokens_per_iter * len(times) / sum(times) if times else math.nan
    if not times:
        note = note or "no 'iter N: ... time T ms' lines in its output"
    return Measurement(load, PEER, tokens_per_s, len(times), wall, DEFAULT, note)


def run_contention(*, loads: list[int], modes: list[str], preset: str = "baby", steps: int = 200,
                   max_seconds: float = 60.0, peer_command: str | None = None, peer_tokens_per_iter: int = 768,
                   on_result: Callable[[Measurement], None] | None = None) -> list[Measurement]:
    """Every mode (and the peer) under every load, each in a fresh process; busy processes are per load."""
    results = []
    per_load = len(modes) * (max_seconds + STARTUP_S) + (max_seconds if peer_command else 0) + 10
    for load in loads:
        with busy_processes(load, per_load):
            for mode in modes:
                results.append(measure_mode(load, mode, preset, steps, max_seconds))
                if on_result is not None:
                    on_result(results[-1])
            if peer_command:
                results.append(measure_peer(load, peer_command, peer_tokens_per_iter, max_seconds))
                if on_result is not None:
                    on_result(results[-1])
    return results


def contention_markdown(results: list[Measurement]) -> str:
    """Tokens/s, one row per mode and one column per load, then auto against the best fixed count and the default."""
    loads = sorted({r.load for r in results})
    modes = list(dict.fromkeys(r.mode for r in results))
    cell = {(r.load, r.mode): r for r in results}

    def name(load: int) -> str:
        return "quiet" if load == 0 else f"{load} busy process{'es' if load > 1 else ''}"

    def rate(r: Measurement | None) -> str:
        if r is None:
            return ""
        text = "-" if math.isnan(r.tokens_per_s) else f"{r.tokens_per_s:,.0f}"
        threads = f" ({r.threads} threads)" if r.mode.startswith(AUTO) else ""
        return text + threads + (f" [{r.note}]" if r.note else "")

    lines = ["| mode | " + " | ".join(name(n) for n in loads) + " |", "|---|" + "---|" * len(loads)]
    lines += [f"| {mode} | " + " | ".join(rate(cell.get((n, mode))) for n in loads) + " |" for mode in modes]
    ratios = []
    for load in loads:
        auto = cell.get((load, AUTO))
        fixed = [r.tokens_per_s for (n, mode), r in cell.items() if n == load and mode.isdigit()
                 and not math.isnan(r.tokens_per_s)]
        default = cell.get((load, DEFAULT))
        parts = []
        if auto and fixed:
            parts.append(f"auto / best fixed {auto.tokens_per_s / max(fixed):.2f}")
        if auto and default:
            parts.append(f"auto / default {auto.tokens_per_s / default.tokens_per_s:.2f}")
        if parts:
            ratios.append(f"- {name(load)}: " + ", ".join(parts))
    return "\n".join(lines) + ("\n\n" + "\n".join(ratios) if ratios else "") + "\n"


def train_one(mode: str, preset_name: str, steps: int, max_seconds: float) -> dict:
    """In the worker process: train ``preset_name`` for ``steps`` steps (or ``max_seconds``) as ``minigpt train``
    does, and return tokens/s over the steps after the first."""
    import threading

    from minigpt_tui.training.config import preset
    from minigpt_tui.training.datasets import load_dataset
    from minigpt_tui.training.events import StepEvent, ThreadsEvent
    from minigpt_tui.training.trainer import new_training

    threads = mode_threads(mode)[0]
    config = preset(preset_name).replace(max_iters=steps, eval_interval=steps, eval_iters=1, log_interval=steps,
                                         device="cpu")
    with tempfile.TemporaryDirectory(prefix="minigpt-contention-") as folder:
        trainer = new_training(config, load_dataset("shakespeare"), Path(folder) / "run", threads=threads)
        stamps: list[float] = []
        chosen: list[str] = []

        def on_event(event) -> None:
            if isinstance(event, StepEvent):
                stamps.append(time.perf_counter())
            elif isinstance(event, ThreadsEvent) and (not chosen or chosen[-1] != str(event.threads)):
                chosen.append(str(event.threads))

        trainer.callbacks.append(on_event)
        timer = threading.Timer(max_seconds, trainer.request_stop)  # a hopeless mode ends on time, with what it did
        timer.start()
        try:
            trainer.run()
        finally:
            timer.cancel()
    timed = len(stamps) - 1
    tokens_per_s = timed * trainer.tokens_per_step / (stamps[-1] - stamps[0]) if timed > 0 else math.nan
    threads_text = ">".join(chosen) if chosen else str(trainer.backend.get_threads())
    note = f"stopped at {max_seconds:g} s" if len(stamps) < steps else ""
    return {"tokens_per_s": tokens_per_s, "steps": max(timed, 0), "threads": threads_text, "note": note}


def peer_command_line(text: str) -> str:
    """Check that a peer command parses as a shell line (it runs with the shell, under each load)."""
    try:
        shlex.split(text)
    except ValueError as exc:
        raise MiniGPTError(f"--peer-cmd does not parse as a shell command: {exc}") from None
    return text


if __name__ == "__main__":  # the worker: one mode, one line of JSON
    spec = json.loads(sys.argv[1])
    print(json.dumps(train_one(spec["mode"], spec["preset"], spec["steps"], spec["max_seconds"])), flush=True)

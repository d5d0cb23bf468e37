"""What the TUI costs a training run: tokens/s with and without the app, and key-press latency.

    python -m minigpt_tui.tui.overhead --data /path/to/tinyshakespeare.txt --preset baby --iters 150
    python -m minigpt_tui.tui.overhead --data ... --inspect --no-keys   # with the Inspect view open

Runs the same config three ways, alternating ``--repeats`` times so a drifting load hits all alike:
headless (the CLI's way: the trainer on the main thread), on a worker thread with no UI, and inside
the app (Textual's headless driver, which lays out and renders every frame as in a terminal, at
160x48). Throughput is the mean ``tokens_per_s`` of each run's metrics.jsonl step records.
Latency (unless ``--no-keys``): a key event (``l``, the log-scale toggle, which redraws both plots) is posted to the app
every 0.3 s during training, as the terminal driver would; we time it to its action running on the
UI thread, and to the next frame the app hands to the terminal.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import click
from textual import events

from minigpt_tui.training.config import PRESETS, build_config
from minigpt_tui.training.data import read_corpus
from minigpt_tui.training.runs import read_metrics
from minigpt_tui.training.trainer import new_training
from minigpt_tui.tui.app import MiniGPTApp

KEY_EVERY_S = 0.3


def mean_tokens_per_s(run_dir: Path) -> float:
    # the first logged interval includes warm-up (allocator, first kernels): left out on both sides
    rates = [r.tokens_per_s for r in read_metrics(run_dir / "metrics.jsonl").steps]
    return statistics.mean(rates[1:] or rates)


class TimedApp(MiniGPTApp):
    """The app, noting when the log-scale action runs and when each frame is handed to the terminal."""

    handled_at: list[float]
    frames_at: list[float]

    def action_toggle_log(self) -> None:
        self.handled_at.append(time.perf_counter())
        super().action_toggle_log()

    def _display(self, screen, renderable) -> None:
        if renderable is not None:
            self.frames_at.append(time.perf_counter())
        super()._display(screen, renderable)


async def run_in_app(config, data: Path, out: Path, press_keys: bool,
                     view: str = "train-tab") -> tuple[float, list[float], list[float]]:
    app = TimedApp(config=config, data=data, out=out)
    app.handled_at, app.frames_at = [], []
    to_handler, to_frame = [], []
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("enter")
        while app.trainer is None:
            await pilot.pause(0.05)
        await pilot.click(f"#--content-tab-{view}")  # the keys go to the app, not the form
        while app.training and not press_keys:  # the app on its own: live curves, no user
            await pilot.pause(KEY_EVERY_S)
        while app.training:
            pressed = time.perf_counter()
            app.post_message(events.Key("l", "l"))  # what the terminal driver posts for a key
            await pilot.pause(KEY_EVERY_S)
            handled = [t for t in app.handled_at if t > pressed]
            frame = [t for t in app.frames_at if handled and t > handled[0]]
            if frame:  # else the run ended in between
                to_handler.append(handled[0] - pressed)
                to_frame.append(frame[0] - pressed)
    return mean_tokens_per_s(out), to_handler, to_frame


def measure(mode: str, config, data: Path, out: Path, press_keys: bool,
            view: str = "train-tab") -> tuple[float, list[float], list[float]]:
    """One run: ``headless`` (the CLI's way: the trainer on the main thread), ``thread`` (a worker
    thread, no UI) or ``tui`` (the app, showing ``view``); tokens/s and, for the app, key latencies."""
    if mode == "tui":
        return asyncio.run(run_in_app(config, data, out, press_keys, view))
    def train() -> None:  # built on the thread that trains it, as the app does
        new_training(config, read_corpus(data), out).run()

    if mode == "headless":
        train()
    else:
        worker = threading.Thread(target=train)
        worker.start()
        worker.join()
    return mean_tokens_per_s(out), [], []


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@click.command()
@click.option("--data", type=click.Path(path_type=Path, exists=True), required=True, help="Training text.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="baby", show_default=True)
@click.option("--iters", type=click.IntRange(min=20), default=200, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--keys/--no-keys", default=True, show_default=True,
              help="Press a key that redraws both plots every 0.3 s (latency), or leave the app alone.")
@click.option("--inspect", is_flag=True, help="Show the Inspect view while training: it reads the text again with "
              "the live weights at each of 4 evaluations (every mode evaluates as often).")
def main(data: Path, preset: str, iters: int, repeats: int, keys: bool, inspect: bool) -> None:
    eval_interval = max(1, iters // 4) if inspect else iters
    config = build_config(preset, None, {"max_iters": iters, "eval_interval": eval_interval, "device": "cpu"})
    view = "inspect-tab" if inspect else "train-tab"
    headless, threaded, in_app, to_handler, to_frame = [], [], [], [], []
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, spawn.Pool(1, maxtasksperchild=1) as pool:
        for i in range(repeats):
            # alternate the order: the load drifts
            modes = ("headless", "thread", "tui")
            for mode in modes if i % 2 == 0 else modes[::-1]:
                # each run in a fresh process, as a user runs either tool: OpenMP thread teams left by an
                # earlier run in another thread would throttle this one's spin-waits (libgomp does so once
                # more OpenMP threads exist than CPUs)
                rate, handler, frame = pool.apply(measure,
                                                  (mode, config, data, Path(tmp) / f"{mode}-{i}", keys, view))
                {"headless": headless, "thread": threaded, "tui": in_app}[mode].append(rate)
                to_handler += handler
                to_frame += frame
            click.echo(f"round {i + 1}: headless {headless[-1]:,.0f}, worker thread {threaded[-1]:,.0f}, "
                       f"TUI {in_app[-1]:,.0f} tokens/s; TUI/headless {in_app[-1] / headless[-1]:.3f}, "
                       f"TUI/thread {in_app[-1] / threaded[-1]:.3f}  (load {os.getloadavg()[0]:.1f})")
    ratios = [b / a for a, b in zip(headless, in_app, strict=True)]
    thread_ratios = [b / a for a, b in zip(threaded, in_app, strict=True)]
    click.echo(f"preset {preset}, {iters} iters x {repeats}: headless {statistics.mean(headless):,.0f}, worker thread "
               f"{statistics.mean(threaded):,.0f}, TUI {statistics.mean(in_app):,.0f} tokens/s; per round median "
               f"TUI/headless {statistics.median(ratios):.3f}, TUI/thread {statistics.median(thread_ratios):.3f}")
    if not keys:
        return
    if not to_handler:
        click.echo("no key presses measured: the runs were too short (raise --iters)")
        return
    for name, values in (("key -> action", to_handler), ("key -> next frame", to_frame)):
        ms = [1000 * v for v in values]
        click.echo(f"{name} during training ({len(ms)} presses): median {statistics.median(ms):.1f} ms, "
                   f"p95 {percentile(ms, 0.95):.1f} ms, max {max(ms):.1f} ms")


if __name__ == "__main__":
    main()

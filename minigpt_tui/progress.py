"""Headless progress: a rich bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import contextlib
import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from minigpt_tui.training.events import EvalEvent, Event, StepEvent, ThreadsEvent


def format_eval(event: EvalEvent) -> str:
    best = " (best)" if event.is_best else ""
    return (f"eval step {event.step}: train loss {event.train_loss:.4f}, val loss {event.val_loss:.4f}, "
            f"val ppl {event.val_perplexity:.2f}, val bits/char {event.val_bits_per_char:.3f}{best}")


def format_threads(event: ThreadsEvent) -> str:
    return f"threads at step {event.step}: {event.describe()}"


@contextlib.contextmanager
def attach_progress(trainer, is_terminal: bool):
    if is_terminal:
        with _rich_progress(trainer):
            yield
        return
    log_interval = trainer.config.log_interval

    def on_event(event: Event) -> None:
        if isinstance(event, StepEvent) and (event.step % log_interval == 0 or event.step == event.max_iters):
            threads = "" if trainer.threads_in_use is None else f", {trainer.threads_in_use} threads"
            print(f"step {event.step}/{event.max_iters}: loss {event.loss:.4f}, lr {event.lr:.2e}, "
                  f"{event.tokens_per_s:,.0f} tokens/s{threads}", flush=True)
        elif isinstance(event, EvalEvent):
            print(format_eval(event), flush=True)
        elif isinstance(event, ThreadsEvent):
            print(format_threads(event), flush=True)

    trainer.callbacks.append(on_event)
    try:
        yield
    finally:
        trainer.callbacks.remove(on_event)


@contextlib.contextmanager
def _rich_progress(trainer):
    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[tps]} tok/s  "
                   "{task.fields[threads]} threads"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        transient=False,
    )
    task = progress.add_task("train", total=trainer.config.max_iters, completed=trainer.step,
                             loss="-", val="-", tps="-", threads="-")

    def on_event(event: Event) -> None:
        if isinstance(event, StepEvent):
            progress.update(task, completed=event.step, loss=f"{event.loss:.4f}", tps=f"{event.tokens_per_s:,.0f}")
        elif isinstance(event, EvalEvent):
            progress.update(task, val=f"{event.val_loss:.4f}")
            progress.console.print(format_eval(event))
        elif isinstance(event, ThreadsEvent):
            progress.update(task, threads=str(event.threads))
            progress.console.print(format_threads(event))

    trainer.callbacks.append(on_event)
    with progress:
        try:
            yield
        finally:
            trainer.callbacks.remove(on_event)
            sys.stdout.flush()


@contextlib.contextmanager
def stage_progress(is_terminal: bool, plain_steps: int = 5):
    """A ``(stage, done, total)`` callback for long work in named stages: one rich bar per stage on a
    terminal; otherwise a plain line when a stage starts, about every 1/``plain_steps`` of it, and at its end."""
    if not is_terminal:
        def line(stage: str, done: int, total: int) -> None:
            every = max(1, total // plain_steps)
            if done == 0 or done == total or done % every == 0:
                print(f"{stage}: {done}/{total}", flush=True)

        yield line
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), transient=False)
    tasks: dict[str, int] = {}

    def bar(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=total)

    with progress:
        yield bar

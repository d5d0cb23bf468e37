"""Interaction fuzzing of minigpt-tui: every key and control, in every view and state, at two sizes.

Each session opens the app in one state (no run, training, paused, stopped, finished, comparing
runs, a BPE run, a run another process holds locked, a damaged run) at 80x24 or 160x48. It first
walks the product of views (Training, Generate, Ablation, Inspect, help, new-run form, continue
dialog) and keys, then presses a seeded random sequence of keys and clicks. The property, checked
after every action: the app is alive, nothing escaped to Textual's crash handler, no plot failed to
draw, and no error reached the log with a traceback (a worker error is a notification whose text is
the core's own message, never a bare Python exception).

CI opens each state at one of the two sizes (they alternate over the states), deals the keys out over
those 9 sessions (every key is pressed, each from several views and states) and adds a short random tail
from a fixed seed. ``MINIGPT_FUZZ=wide`` presses every key from every
view in every state (half the keys at each size) and a long random tail, for ``MINIGPT_FUZZ_SEEDS``
seeds (default 1):

    MINIGPT_FUZZ=wide MINIGPT_FUZZ_COUNTS=/tmp/tui-fuzz.jsonl python -m pytest -q tests/test_tui_fuzz.py
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_corpus_text, tiny_config, train_tiny
from textual.pilot import OutOfBounds

from minigpt_tui.training.events import StepEvent
from minigpt_tui.training.runs import RunLock
from minigpt_tui.tui.app import create_app
from minigpt_tui.tui.guarded_plot import GuardedPlot

pytestmark = pytest.mark.anyio
FAST = dict(redraw_interval=0.05, poll_interval=0.05)
WIDE = os.environ.get("MINIGPT_FUZZ") == "wide"
SEEDS = range(int(os.environ.get("MINIGPT_FUZZ_SEEDS", "1"))) if WIDE else range(1)
RANDOM_ACTIONS = 40 if WIDE else 3
COUNTS_FILE = os.environ.get("MINIGPT_FUZZ_COUNTS")

STATES = ("no run", "training", "paused", "stopped", "finished", "comparing", "bpe", "locked", "damaged")
SIZES = ((80, 24), (160, 48))
# wide: every state at both sizes; CI: each state at one of them, the sizes alternating over the states
SESSIONS = [(state, size) for state in STATES for size in SIZES] if WIDE else \
    [(state, SIZES[i % len(SIZES)]) for i, state in enumerate(STATES)]
# what opens each view (the continue dialog needs a run; in the others `c` is a no-op)
VIEWS = {"training": "t", "generate": "g", "ablation": "a", "inspect": "i", "help": "question_mark",
         "form": "n", "continue": "c"}
# every binding of the app and its panes and screens, and the keys a text field or table takes
KEYS = ("t", "g", "a", "i", "n", "p", "s", "c", "l", "b", "o", "question_mark", "f1", "escape", "tab", "shift+tab",
        "enter", "up", "down", "left", "right", "home", "end", "left_square_bracket", "right_square_bracket",
        "ctrl+s", "backspace", "space", "x", "0", "1", "minus", "full_stop", "comma")
BUTTONS = ("#start", "#generate", "#stop-generation", "#save-sample", "#run-ablation", "#stop-ablation",
           "#save-ablation", "#--content-tab-train-tab", "#--content-tab-generate-tab",
           "#--content-tab-ablation-tab", "#--content-tab-inspect-tab", "#preset", "#tokenizer")
def product_share(state: str, size: tuple[int, int], view_index: int) -> tuple[str, ...]:
    """The keys a session presses from a view. Wide: its size's half of them, so that every (state, view, key) is
    pressed at one of the two sizes. CI: one key, dealt so that the 18 sessions press every key, each from
    several views."""
    if WIDE:
        return KEYS[SIZES.index(size)::len(SIZES)]
    session = SESSIONS.index((state, size))
    per_view = -(-len(KEYS) // (len(SESSIONS) * len(VIEWS)))  # enough that the sessions press every key
    first = (session * len(VIEWS) + view_index) * per_view
    return tuple(KEYS[(first + i) % len(KEYS)] for i in range(per_view))


# a notification that is a Python exception's name and text: an error the core did not turn into its own message
BARE_EXCEPTION = re.compile(r"^[A-Z][A-Za-z]*(Error|Exception)\b")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs each state starts from, trained once for the module (sessions work on copies)."""
    root = tmp_path_factory.mktemp("tui-fuzz")
    corpus = root / "corpus.txt"
    corpus.write_text(make_corpus_text(), encoding="utf-8")
    train_tiny(root / "finished", corpus)

    def stop_at_five(trainer):
        def callback(event):
            if isinstance(event, StepEvent) and event.step == 5:
                trainer.request_stop()
        return callback

    from minigpt_tui.training.data import read_corpus
    from minigpt_tui.training.trainer import new_training

    trainer = new_training(tiny_config(), read_corpus(corpus), root / "stopped")
    trainer.callbacks.append(stop_at_five(trainer))
    trainer.run()
    train_tiny(root / "bpe", corpus, tiny_config(tokenizer="bpe", vocab_size=260))
    return root


def session_dir(runs: Path, tmp_path: Path, state: str) -> tuple[list[Path], RunLock | None]:
    """The run folders the state opens, copied; and the lock "another process" holds for a locked run."""
    def copy(name: str) -> Path:
        return Path(shutil.copytree(runs / name, tmp_path / name))

    if state in ("no run", "training", "paused"):
        return [], None
    if state == "comparing":
        return [copy("finished"), copy("stopped"), copy("bpe")], None
    if state in ("stopped", "finished", "bpe"):
        return [copy(state)], None
    run = copy("finished")
    if state == "locked":
        return [run], RunLock(run).acquire()
    # damaged: a garbled metrics line and a latest checkpoint whose weights fail their hash
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"type": "step", "step": "x"}\nnot json\n')
    model = next((run / "checkpoints" / "latest").glob("model*"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return [run], None


def check_alive(app, caplog, where: str) -> None:
    assert app.crash is None and app._exception is None, (where, app.crash or app._exception)
    assert app.return_code is None, where
    failed = [plot.failure for plot in app.query(GuardedPlot) if plot.failure]
    assert not failed, (where, failed)
    bare = [n.message for n in app._notifications if BARE_EXCEPTION.match(n.message)]
    assert not bare, (where, bare)
    tracebacks = [r.getMessage() for r in caplog.records if r.name.startswith("minigpt_tui") and r.exc_info]
    assert not tracebacks, (where, tracebacks)


async def act(pilot, action: str) -> None:
    if action.startswith("#"):
        try:
            await pilot.click(action)
        except OutOfBounds:  # the control is on another view or scrolled away: nothing was clicked
            pass
        except Exception as exc:  # noqa: BLE001 - a selector that matches nothing on this screen
            if type(exc).__name__ != "NoMatches":
                raise
    else:
        await pilot.press(action)


def record(case: dict) -> None:
    if COUNTS_FILE:
        with open(COUNTS_FILE, "a") as f:
            f.write(json.dumps(case) + "\n")


async def wait_until(pilot, predicate, timeout: float = 60.0, why=lambda: "") -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"the app never reached the expected state: {why()}")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("state", "size"), SESSIONS, ids=[f"{s}-{w}x{h}" for s, (w, h) in SESSIONS])
async def test_every_key_in_every_view_keeps_the_app_alive(runs, tmp_path, monkeypatch, caplog, state, size, seed):
    monkeypatch.chdir(tmp_path)  # a run started without a folder lands in ./runs/<time>: here
    caplog.set_level(logging.INFO, logger="minigpt_tui")
    folders, lock = session_dir(runs, tmp_path, state)
    # the form is prefilled with a tiny config, so Enter in it starts a run of seconds, not the baby preset
    config = tiny_config(max_iters=100_000, eval_interval=100_000) if state in ("training", "paused") else tiny_config()
    app = create_app(*folders, config=config, data=runs / "corpus.txt", out=tmp_path / "new-run", **FAST)
    rng = random.Random(f"{state}-{size}-{seed}")
    actions: Counter = Counter()
    try:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            if state in ("training", "paused"):
                await pilot.press("enter")  # the form's Start button has the focus
                await wait_until(pilot, lambda: app.trainer is not None and app.trainer.step > 0)
                if state == "paused":
                    await pilot.press("p")
            check_alive(app, caplog, "opened")
            # the product: every view, then keys from it (escape first, so a field hands the keys back)
            for view_index, (view, opener) in enumerate(VIEWS.items()):
                for key in product_share(state, size, view_index):
                    for step in ("escape", opener, key):
                        await act(pilot, step)
                        actions[step] += 1
                        check_alive(app, caplog, f"{state} {size}: {view} view, {step}")
            # the random tail: keys and clicks in any order (Enter included: it starts, samples, continues)
            for _ in range(RANDOM_ACTIONS):
                action = rng.choice(KEYS + BUTTONS)
                await act(pilot, action)
                actions[action] += 1
                check_alive(app, caplog, f"{state} {size}: random {action}")
            await pilot.press("escape", "escape", "escape", "q")  # out of any dialog and field, then quit
            # a training saves a checkpoint first
            await wait_until(pilot, lambda: app.return_code is not None,
                             why=lambda: f"screen {app.screen}, focus {app.focused}, training {app.training}")
    finally:
        if lock is not None:
            lock.release()
    assert app.return_code == 0 and app.crash is None
    notes = Counter(n.severity for n in app._notifications)
    record({"state": state, "size": f"{size[0]}x{size[1]}", "seed": seed, "actions": sum(actions.values()),
            "notifications": dict(notes)})

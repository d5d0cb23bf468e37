"""--threads auto|N: validation everywhere it is taken, the measuring controller, and the records it leaves."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import TINY
from hypothesis import given
from hypothesis import strategies as st
from test_cli import assert_one_line_error, invoke

from minigpt_tui.cli import main
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.events import ThreadsEvent, record_from_dict
from minigpt_tui.training.runs import read_metrics
from minigpt_tui.training.threads import (
    AUTO,
    MAX_THREADS,
    AdaptiveThreads,
    apply_threads,
    candidate_counts,
    parse_threads,
    spare_threads,
)

BAD_THREADS = ["0", "-1", "-4096", str(MAX_THREADS + 1), str(2**70), "1.5", "two", "", "auto2", "1e3", "0x2"]


def commands(workspace) -> dict[str, list]:
    """Every command that takes --threads, with the other arguments it needs to get that far."""
    run, corpus = workspace.run, workspace.corpus
    return {
        "train": ["train", "--headless", *TINY, "--data", corpus],
        "sample": ["sample", run],
        "eval": ["eval", run],
        "inspect": ["inspect", run, "--text", "the"],
        "bench": ["bench", "--preset", "tiny"],
        "ablate temperature": ["ablate", "temperature", run],
        "ablate exposure": ["ablate", "exposure", run],
        "ablate tokenizer": ["ablate", "tokenizer", "--out", workspace.run.parent / "x"],
    }


@pytest.mark.parametrize("value", BAD_THREADS)
def test_bad_threads_are_one_line_errors_everywhere(workspace, value):
    for args in commands(workspace).values():
        result = invoke(*args, "--threads", value)
        assert_one_line_error(result, "threads must be 'auto' or a whole number")


@given(st.text(max_size=12) | st.integers(-10**30, 10**30).map(str))
def test_parse_threads_accepts_exactly_auto_and_1_to_max(text):
    try:
        value = parse_threads(text)
    except MiniGPTError:
        stripped = text.strip().lower()
        assert stripped != AUTO
        try:
            assert not 1 <= int(stripped) <= MAX_THREADS
        except ValueError:
            pass
        return
    assert value == AUTO or (isinstance(value, int) and 1 <= value <= MAX_THREADS)


def test_candidates_and_spare_threads():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4, 6]
    assert candidate_counts(16) == [1, 2, 4, 8, 16]
    assert spare_threads(2, cores=2) == 1  # a helper never gets zero, and never the trainer's cores when it can
    assert spare_threads(1, cores=4) == 3
    assert spare_threads(None, cores=4) == 4


class Machine:
    """A fake machine: seconds per step by thread count, changeable mid-run, and a clock that steps advance."""

    def __init__(self, costs: dict[int, float]) -> None:
        self.costs, self.now, self.threads, self.sets = dict(costs), 0.0, None, []

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.sets.append(n)

    def clock(self) -> float:
        return self.now

    def run(self, tuner: AdaptiveThreads, steps: int, start: int = 0) -> list[ThreadsEvent]:
        events = []
        for step in range(start + 1, start + steps + 1):
            seconds = self.costs[self.threads]
            self.now += seconds
            event = tuner.observe(step, seconds)
            if event is not None:
                events.append(event)
        return events


def tuner_for(machine: Machine, counts=(1, 2, 4), **kwargs) -> AdaptiveThreads:
    tuner = AdaptiveThreads(machine.set_threads, list(counts), clock=machine.clock, **kwargs)
    tuner.start(0)
    return tuner


def test_auto_keeps_the_fastest_count():
    machine = Machine({1: 0.050, 2: 0.030, 4: 0.040})
    tuner = tuner_for(machine)
    events = machine.run(tuner, 30)
    assert len(events) == 1
    first = events[0]
    assert (first.threads, first.previous, first.reason) == (2, 0, "start")
    assert first.step_ms == {"1": 50.0, "2": 30.0, "4": 40.0}
    assert machine.threads == 2


def test_auto_adapts_when_the_machine_gets_busy_and_again_when_it_is_quiet():
    machine = Machine({1: 0.050, 2: 0.030})
    tuner = tuner_for(machine, (1, 2), reprobe_s=30.0)
    assert [e.threads for e in machine.run(tuner, 20)] == [2]
    machine.costs = {1: 0.055, 2: 0.500}  # a busy peer: two threads now wait on a descheduled one
    busy = machine.run(tuner, 40, start=20)
    assert [(e.threads, e.previous, e.reason) for e in busy] == [(1, 2, "drift")]
    machine.costs = {1: 0.050, 2: 0.030}  # the peer stopped: one thread is as fast as before, no drift to see
    quiet = machine.run(tuner, 1000, start=60)
    assert quiet and quiet[0].reason == "periodic" and quiet[0].threads == 2 and quiet[0].previous == 1


def test_a_hopeless_count_is_abandoned_after_one_step():
    machine = Machine({1: 0.050, 2: 5.0})
    tuner = tuner_for(machine, (1, 2))
    machine.run(tuner, 10)
    assert machine.sets == [1, 2, 1]  # two was tried for its warm-up step alone: 100x slower, abandoned
    assert tuner.current == 1 and tuner.scores[2] == 5.0


def test_auto_does_not_flap_between_counts_within_noise():
    machine = Machine({1: 0.0300, 2: 0.0295})  # 2 is 1.7% faster: below the hysteresis once 1 is chosen
    tuner = tuner_for(machine, (1, 2), reprobe_s=1.0)
    tuner.current = 1  # as if 1 had been chosen before
    events = machine.run(tuner, 200)
    assert events and all(e.threads == 1 for e in events)


def test_apply_threads_fixed_and_auto():
    machine = Machine({1: 0.01, 2: 0.02})
    assert apply_threads(3, machine.set_threads).reason == "fixed" and machine.threads == 3
    assert apply_threads(None, machine.set_threads) is None and machine.sets == [3]
    calls = []
    event = apply_threads(AUTO, machine.set_threads, lambda: calls.append(machine.threads), cores=2)
    assert event.reason == "start" and event.threads in (1, 2) and set(calls) == {1, 2}


def test_threads_record_round_trips_and_is_checked():
    event = ThreadsEvent(40, 2, 1, "drift", {"1": 31.5, "2": 20.25}, 1.0)
    assert record_from_dict(json.loads(json.dumps(event.to_record()))) == event
    for bad in ({"threads": 0}, {"previous": -1}, {"step_ms": {"x": 1.0}}, {"step_ms": {"1": "fast"}}):
        with pytest.raises(MiniGPTError):
            record_from_dict({**event.to_record(), **bad})


def test_train_records_the_chosen_count(workspace, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--headless", *TINY, "--max-iters", "30", "--eval-interval", "30", "--log-interval", "5",
                    "--data", workspace.corpus, "--out", out, "--threads", "auto")
    assert result.exit_code == 0, result.output
    records = [r for r in read_metrics(out / "metrics.jsonl").records if isinstance(r, ThreadsEvent)]
    assert records and records[0].reason == "start" and records[0].previous == 0
    assert records[0].threads in candidate_counts() and set(records[0].step_ms) <= {str(n) for n in candidate_counts()}
    assert "threads at step" in result.stdout and f"{records[-1].threads} threads" in result.stdout


def test_train_with_a_fixed_count_records_it(workspace, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--headless", *TINY, "--max-iters", "4", "--data", workspace.corpus, "--out", out,
                    "--threads", "1")
    assert result.exit_code == 0, result.output
    records = [r for r in read_metrics(out / "metrics.jsonl").records if isinstance(r, ThreadsEvent)]
    assert [(r.threads, r.reason) for r in records] == [(1, "fixed")]


def test_auto_is_the_default(workspace, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--headless", *TINY, "--max-iters", "12", "--data",
                                       str(workspace.corpus), "--out", str(out)], env={"MINIGPT_THREADS": None})
    assert result.exit_code == 0, result.output
    records = [r for r in read_metrics(out / "metrics.jsonl").records if isinstance(r, ThreadsEvent)]
    assert records and records[0].reason == "start"

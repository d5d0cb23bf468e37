"""How many CPU threads the math runs on: a fixed count, or ``auto``, which measures.

On a shared machine torch's default (one thread per core) collapses: every parallel region waits for
a thread the OS has descheduled, and at this model size a step is hundreds of small regions. ``auto``
therefore times a few steps at each candidate count and keeps the fastest, then watches the step
times: when they drift (the machine got busier, or quieter) or after a while anyway, it measures
again. Every choice is a ``ThreadsEvent`` (a metrics.jsonl record).

The count is applied through ``Backend.set_threads`` on the thread that computes: torch keeps the
OpenMP team size per thread (``torch.set_num_threads`` on one thread leaves threads that already ran
a parallel op at their old count), so each worker sets its own.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.events import ThreadsEvent

AUTO = "auto"
ENV_VAR = "MINIGPT_THREADS"  # the default of every --threads (tests pin it to 1)
MAX_THREADS = 4096  # thread-pool sizes beyond this overflow the libraries' own limits
PROBE_STEPS = 3  # timed steps per candidate (after one warm-up step that absorbs the switch)
WINDOW = 8  # steps whose mean is compared with the measured time of the chosen count
DRIFT = 0.3  # a window mean this far (relative) from the measurement means the machine changed: measure again
REPROBE_S = 60.0  # measure again after this long even without drift (a machine that got quieter is no slower)
MIN_GAP_S = 3.0  # no re-measurement sooner than this after the last: a noisy machine must not keep it measuring
HOPELESS = 2.0  # a candidate this many times slower than the best so far is not measured to the end
HYSTERESIS = 0.05  # keep the current count unless another is at least this much faster

ThreadSetting = int | str  # a count, or AUTO


def parse_threads(value) -> ThreadSetting:
    """``"auto"`` or a whole number in [1, MAX_THREADS]; MiniGPTError otherwise."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    try:
        count = int(text)
    except ValueError:
        raise MiniGPTError(f"threads must be 'auto' or a whole number from 1 to {MAX_THREADS}, got {value!r}") from None
    if not 1 <= count <= MAX_THREADS:
        raise MiniGPTError(f"threads must be 'auto' or a whole number from 1 to {MAX_THREADS}, got {count}")
    return count


def default_threads() -> ThreadSetting:
    """``$MINIGPT_THREADS`` if set (a bad value is a MiniGPTError), else auto."""
    return parse_threads(os.environ.get(ENV_VAR, AUTO))


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def candidate_counts(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... below the core count, and the core count itself."""
    cores = cores or available_cores()
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return [*counts, cores]


def spare_threads(busy: int | None, cores: int | None = None) -> int:
    """Threads a helper (sampling, inspection beside training) may use without taking the trainer's cores."""
    cores = cores or available_cores()
    return max(1, cores - (busy or 0))


class FixedThreads:
    """``--threads N``: set once, recorded once."""

    def __init__(self, set_threads: Callable[[int], None], count: int) -> None:
        self.set_threads, self.current = set_threads, count

    def start(self, step: int) -> ThreadsEvent:
        self.set_threads(self.current)
        return ThreadsEvent(step, self.current, 0, "fixed", {}, time.time())

    def observe(self, step: int, seconds: float) -> None:
        return None


class AdaptiveThreads:
    """``--threads auto``: call ``start`` once, then ``observe`` after every step with its duration (seconds).

    Both return a ``ThreadsEvent`` when a measurement ends (the first one, and each one after a drift or
    ``reprobe_s``), None otherwise. The steps measured are real steps: measuring costs only the time spent
    at slower counts, and a count that is far slower than the best so far is abandoned after one step.
    """

    def __init__(self, set_threads: Callable[[int], None], candidates: list[int], *, probe_steps: int = PROBE_STEPS,
                 window: int = WINDOW, drift: float = DRIFT, reprobe_s: float = REPROBE_S,
                 min_gap_s: float = MIN_GAP_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.set_threads, self.candidates = set_threads, list(candidates)
        self.probe_steps, self.drift, self.reprobe_s, self.clock = probe_steps, drift, reprobe_s, clock
        self.min_gap_s = min_gap_s
        self.recent: deque[float] = deque(maxlen=window)
        self.current = 0  # the chosen count (0 before the first measurement ends)
        self.active = 0  # the count set now (differs from current while measuring)
        self.reference = math.nan  # the chosen count's measured seconds per step
        self.measured_at = 0.0
        self.reason = ""
        self.queue: list[int] = []
        self.times: dict[int, list[float]] | None = None  # per candidate while measuring, else None
        self.scores: dict[int, float] = {}

    @property
    def measuring(self) -> bool:
        return self.times is not None

    def start(self, step: int) -> None:
        self._measure("start")

    def _measure(self, reason: str) -> None:
        # the current count first: no switch, and its warm-up step is free
        self.reason, self.times, self.scores = reason, {}, {}
        self.queue = sorted(self.candidates, key=lambda n: (n != self.current, n))
        self._switch(self.queue.pop(0))

    def _switch(self, count: int) -> None:
        if count != self.active:
            self.set_threads(count)
            self.active = count

    def observe(self, step: int, seconds: float) -> ThreadsEvent | None:
        if self.times is not None:
            return self._measure_step(step, seconds)
        self.recent.append(seconds)
        since = self.clock() - self.measured_at
        if len(self.recent) == self.recent.maxlen and since >= self.min_gap_s:
            mean = statistics.fmean(self.recent)
            if abs(mean - self.reference) > self.drift * self.reference:
                self._measure("drift")
                return None
        if since >= self.reprobe_s:
            self._measure("periodic")
        return None

    def _measure_step(self, step: int, seconds: float) -> ThreadsEvent | None:
        times = self.times.setdefault(self.active, [])
        times.append(seconds)  # the first one after a switch is a warm-up (a new OpenMP team), not scored
        timed = times[1:]
        best = min(self.scores.values(), default=math.inf)
        if len(timed) < self.probe_steps and seconds <= HOPELESS * best:
            return None
        self.scores[self.active] = statistics.fmean(timed) if timed else seconds
        if self.queue:
            self._switch(self.queue.pop(0))
            return None
        return self._decide(step)

    def _decide(self, step: int) -> ThreadsEvent:
        fastest = min(self.scores, key=self.scores.get)
        previous = self.current
        keep = previous in self.scores and self.scores[previous] <= self.scores[fastest] * (1 + HYSTERESIS)
        chosen = previous if keep else fastest
        self._switch(chosen)
        self.current, self.reference = chosen, self.scores[chosen]
        self.times, self.measured_at = None, self.clock()
        self.recent.clear()
        step_ms = {str(n): round(self.scores[n] * 1000, 3) for n in sorted(self.scores)}
        return ThreadsEvent(step, chosen, previous, self.reason, step_ms, time.time())


def thread_controller(setting: ThreadSetting | None, set_threads: Callable[[int], None],
                      cores: int | None = None) -> FixedThreads | AdaptiveThreads | None:
    """What a training loop drives: None leaves the threads as they are (a library caller's choice)."""
    if setting is None:
        return None
    if setting == AUTO:
        return AdaptiveThreads(set_threads, candidate_counts(cores))
    return FixedThreads(set_threads, parse_threads(setting))


def apply_threads(setting: ThreadSetting | None, set_threads: Callable[[int], None],
                  work: Callable[[], object] | None = None, cores: int | None = None) -> ThreadsEvent | None:
    """For a one-off command (sample, eval, inspect): a count is set; ``auto`` times ``work`` (one typical unit,
    e.g. one batch) at each candidate and keeps the fastest. Without ``work``, auto leaves the threads alone."""
    controller = thread_controller(setting, set_threads, cores)
    if controller is None:
        return None
    if isinstance(controller, FixedThreads):
        return controller.start(0)
    if work is None:
        return None
    controller.start(0)
    while True:
        started = time.perf_counter()
        work()
        event = controller.observe(0, time.perf_counter() - started)
        if event is not None:
            return event

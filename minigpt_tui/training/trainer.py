"""The training loop, backend-agnostic: batches in, events out.

``new_training`` (a config and a corpus) and ``resume_training`` (a run folder) build a ``Trainer``;
``Trainer.run`` trains until ``max_iters``, a stop request, or a non-finite loss, evaluating and
checkpointing on the way. The CLI and the TUI both drive exactly this.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from backends.base import Backend, ModelConfig, OutOfMemory, StepResult, init_weights
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.checkpoint import Checkpoint, TrainingState, load_checkpoint, save_checkpoint
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.data import BatchSampler, TokenData, split_text
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.distributed import SINGLE_PROCESS, World
from minigpt_tui.training.events import CheckpointEvent, DoneEvent, EvalEvent, Event, StepEvent, ThreadsEvent
from minigpt_tui.training.memory import check_fits_in_memory
from minigpt_tui.training.metrics import bits_per_char, perplexity
from minigpt_tui.training.runs import (
    MetricsWriter,
    Run,
    RunLock,
    build_backend,
    check_free,
    checkpoint_state,
    corpus_fingerprint,
    create_run,
    open_run,
)
from minigpt_tui.training.schedule import learning_rate
from minigpt_tui.training.threads import AUTO, ThreadSetting, thread_controller
from minigpt_tui.training.vocabulary import build_tokenizer

# what a resumed run cannot change: its tokenizer (tokenizer.json is part of the run), and the network's shape
# (every model field but dropout)
TOKENIZER_FIELDS = ("tokenizer", "vocab_size")
SHAPE_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.name not in ("dropout", *TOKENIZER_FIELDS))
# the optimizer a checkpoint's state was made for (AdamW moments or Muon momentum): switching is not a resume
FIXED_ON_RESUME = ("optimizer",)


@dataclass
class Samplers:
    train: BatchSampler
    eval_train: BatchSampler
    eval_val: BatchSampler

    def get_state(self) -> dict:
        return {name: getattr(self, name).get_state() for name in ("train", "eval_train", "eval_val")}

    def set_state(self, state: dict) -> None:
        for name, value in state.items():
            try:
                getattr(self, name).set_state(value)
            except (ValueError, TypeError, KeyError):
                raise MiniGPTError(f"checkpoint state.json: field samplers.{name} is not a generator state") from None


class EvaluationInterrupted(Exception):
    """A stop request arrived in the middle of an evaluation."""


class NoMetrics:
    """What ranks other than 0 write to: nothing (one metrics file per run)."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    def __init__(
        self,
        run: Run,
        backend: Backend,
        data: TokenData,
        *,
        start_step: int = 0,
        best_val_loss: float = math.inf,
        sampler_state: dict | None = None,
        world: World = SINGLE_PROCESS,
        lock: RunLock | None = None,
        threads: ThreadSetting | None = None,
    ) -> None:
        self.run_dir = run
        self.lock = lock  # held by the writer from creation or resume until ``run`` returns
        self.world = world
        self.config = run.config
        self.backend = backend
        self.data = data
        self.step = start_step
        self.best_val_loss = best_val_loss
        self.callbacks: list[Callable[[Event], None]] = []
        c = self.config
        # every rank draws the same global batch and trains on its slice (see minigpt_tui.training.distributed)
        global_batch = c.batch_size * world.size
        self.tokens_per_step = c.tokens_per_step * world.size
        self.samplers = Samplers(
            BatchSampler(data.train, global_batch, c.model.block_size, c.rng_seed),
            BatchSampler(data.train, global_batch, c.model.block_size, c.rng_seed + 1),
            BatchSampler(data.val, global_batch, c.model.block_size, c.rng_seed + 2),
        )
        if sampler_state:
            self.samplers.set_state(sampler_state)
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        # held around each optimizer step so another thread can copy consistent weights
        self._weights_lock = threading.Lock()
        self.last_eval: EvalEvent | None = None
        self.threads_setting = distributed_setting(threads, world)
        self.threads_in_use: int | None = None  # what the controller set last (None: never touched)

    # control, safe to call from another thread or a signal handler
    def request_stop(self) -> None:
        self._stop.set()
        self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def snapshot_weights(self) -> dict[str, np.ndarray]:
        """A private copy of the current weights (backends may hand out views of live parameters)."""
        with self._weights_lock:
            return {name: np.array(value, copy=True) for name, value in self.backend.get_weights().items()}

    def emit(self, event: Event) -> None:
        for callback in self.callbacks:
            callback(event)

    def lr_at(self, step: int) -> float:
        c = self.config
        return learning_rate(
            step, max_lr=c.learning_rate, min_lr=c.min_lr, warmup_iters=c.warmup_iters, decay_iters=c.decay_iters
        )

    def estimate_loss(self) -> tuple[float, float]:
        losses = []
        for sampler in (self.samplers.eval_train, self.samplers.eval_val):
            total = 0.0
            for _ in range(self.config.eval_iters):
                # a stop request ends a long evaluation at once (one process: ranks must agree, so they finish it)
                if self._stop.is_set() and not self.world.is_distributed:
                    raise EvaluationInterrupted
                total += self.backend.eval_loss(*self.world.shard(sampler.next()))
            losses.append(total / self.config.eval_iters)
        train_loss, val_loss = self.world.mean(losses)
        return train_loss, val_loss

    def evaluate(self, metrics: MetricsWriter) -> EvalEvent:
        train_loss, val_loss = self.estimate_loss()
        is_best = val_loss < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, val_loss)
        tpc = self.run_dir.tokens_per_char
        event = EvalEvent(
            step=self.step,
            train_loss=train_loss,
            val_loss=val_loss,
            val_perplexity=perplexity(val_loss),
            val_bits_per_char=bits_per_char(val_loss, tpc),
            train_bits_per_char=bits_per_char(train_loss, tpc),
            best_val_loss=self.best_val_loss,
            is_best=is_best,
            time=time.time(),
        )
        metrics.write(event)
        self.last_eval = event
        self.emit(event)
        return event

    def record_threads(self, event: ThreadsEvent | None, metrics: MetricsWriter) -> None:
        if event is not None:
            metrics.write(event)
            self.emit(event)

    def save(self, kind: str) -> None:
        if not self.world.is_writer:
            return
        state = TrainingState(
            step=self.step,
            kind=kind,
            backend=self.backend.name,
            best_val_loss=self.best_val_loss,
            samplers=self.samplers.get_state(),
        )
        checkpoint = Checkpoint(
            self.backend.get_weights(), self.backend.get_optimizer_state(), self.backend.get_rng_state(), state
        )
        folder = self.run_dir.checkpoint_dir(kind)
        try:
            save_checkpoint(folder, checkpoint)
        except OSError as exc:  # disk full, permissions: the save is atomic, so the previous one is intact
            raise MiniGPTError(
                f"cannot save the {kind} checkpoint in {folder}: {exc.strerror or exc}; the previous one is kept"
            ) from None
        self.emit(CheckpointEvent(self.step, str(folder), kind))

    def checkpoint_after_eval(self, event: EvalEvent) -> None:
        self.save("latest")
        if event.is_best:
            self.save("best")
        if self.config.snapshots:
            self.save_snapshot()

    def save_snapshot(self) -> None:
        """The weights at this eval, for time-lapse inspection (no optimizer state: never resumed from)."""
        if not self.world.is_writer:
            return
        state = TrainingState(step=self.step, kind="snapshot", backend=self.backend.name,
                              best_val_loss=self.best_val_loss)
        folder = self.run_dir.snapshot_dir(self.step)
        # a kill during an earlier snapshot's save left its temporary folder: each snapshot is saved once
        for leftover in folder.parent.glob(".step-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            save_checkpoint(folder, Checkpoint(self.backend.get_weights(), {}, {}, state))
        except OSError as exc:
            raise MiniGPTError(f"cannot save the snapshot in {folder}: {exc.strerror or exc}") from None

    def run(self) -> DoneEvent:
        c = self.config
        if self.world.is_writer:
            metrics = MetricsWriter(self.run_dir.metrics_path, truncate_after_step=self.step)
        else:
            metrics = NoMetrics()
        started = time.perf_counter()
        interval_start, interval_steps = time.perf_counter(), 0
        tokens_per_s = 0.0
        # set here, on the thread that trains: torch keeps the OpenMP team size per thread
        threads = thread_controller(self.threads_setting, self._set_threads)
        try:
            if threads is not None:
                self.record_threads(threads.start(self.step), metrics)
            if self.step == 0:
                self.checkpoint_after_eval(self.evaluate(metrics))
            while self.step < c.max_iters:
                self._running.wait()
                if self.world.any(self._stop.is_set()):
                    self.save("latest")
                    return self._done(
                        "stopped",
                        f"stopped at step {self.step}; "
                        f"resume with: minigpt train --headless --resume {self.run_dir.path}",
                    )
                lr = self.lr_at(self.step)
                micro_batches = [self.world.shard(self.samplers.train.next()) for _ in range(c.grad_accum_steps)]
                with self._weights_lock:
                    step_started = time.perf_counter()
                    try:
                        result = self.backend.train_step(micro_batches, lr)
                    except OutOfMemory as exc:
                        raise MiniGPTError(
                            f"out of memory at step {self.step + 1} ({exc}); the last checkpoint is kept "
                            "(try a smaller --batch-size, --block-size or model)"
                        ) from None
                    step_seconds = time.perf_counter() - step_started
                # every rank logs, and judges divergence by, the loss averaged over all ranks
                result = StepResult(self.world.mean([result.loss])[0], result.grad_norm)
                if not math.isfinite(result.loss):
                    return self._done(
                        "diverged",
                        f"loss became {result.loss} at step {self.step + 1}; stopped, "
                        "the last good checkpoint is kept (lower --learning-rate?)",
                    )
                self.step += 1
                interval_steps += 1
                if threads is not None:
                    self.record_threads(threads.observe(self.step, step_seconds), metrics)
                log_now = self.step % c.log_interval == 0 or self.step == c.max_iters
                if log_now:
                    now = time.perf_counter()
                    tokens_per_s = interval_steps * self.tokens_per_step / max(now - interval_start, 1e-9)
                event = StepEvent(
                    step=self.step,
                    max_iters=c.max_iters,
                    loss=result.loss,
                    lr=lr,
                    grad_norm=result.grad_norm,
                    tokens_per_s=tokens_per_s,
                    elapsed_s=time.perf_counter() - started,
                    time=time.time(),
                )
                if log_now:
                    metrics.write(event)
                self.emit(event)
                if self.step % c.log_interval == 0:
                    interval_start, interval_steps = time.perf_counter(), 0
                if self.step % c.eval_interval == 0 or self.step == c.max_iters:
                    event = self.evaluate(metrics)
                    # a finite step loss can still leave broken weights: never save those over the last good ones
                    bad = next((x for x in (event.val_loss, event.train_loss) if not math.isfinite(x)), None)
                    if bad is not None:
                        return self._done(
                            "diverged",
                            f"eval loss became {bad} at step {self.step}; stopped, the last "
                            "good checkpoint is kept (lower --learning-rate?)",
                        )
                    self.checkpoint_after_eval(event)
                    interval_start, interval_steps = time.perf_counter(), 0
            return self._done("finished", f"finished {self.step} steps; best val loss {self.best_val_loss:.4f}")
        except EvaluationInterrupted:
            self.save("latest")
            return self._done(
                "stopped",
                f"stopped at step {self.step} during an evaluation; "
                f"resume with: minigpt train --headless --resume {self.run_dir.path}",
            )
        finally:
            metrics.close()
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _set_threads(self, count: int) -> None:
        self.backend.set_threads(count)
        self.threads_in_use = count

    def _done(self, reason: str, message: str) -> DoneEvent:
        event = DoneEvent(self.step, reason, message, self.best_val_loss)
        self.emit(event)
        return event


def distributed_setting(threads: ThreadSetting | None, world: World) -> ThreadSetting | None:
    """Under torchrun every rank waits for the others at each step, so no rank can time its own threads:
    ``auto`` leaves them as torchrun set them (OMP_NUM_THREADS); a fixed count still applies."""
    return None if world.is_distributed and threads == AUTO else threads


def continuation_target(config: TrainConfig, steps_done: int) -> int:
    """Where "continue training" goes: an unfinished run to its max_iters, a finished one as many steps again."""
    return config.max_iters if steps_done < config.max_iters else steps_done + config.max_iters


def tokenize_corpus(run: Run, text: str) -> TokenData:
    train_text, val_text = split_text(text)
    return TokenData(run.tokenizer.encode_array(train_text), run.tokenizer.encode_array(val_text))


def new_training(
    config: TrainConfig, corpus: Corpus, out: Path, world: World = SINGLE_PROCESS, *, overwrite: bool = False,
    threads: ThreadSetting | None = None,
) -> Trainer:
    """A fresh run in ``out``: a tokenizer for the corpus, initial weights from the seed.

    Every rank builds the same tokenizer and weights from the same text and seed; only rank 0 writes
    the run folder (holding its lock), the others hold the same ``Run`` in memory.
    """
    # every rank checks, so that all fail together; none can have written yet, since rank 0 writes
    # only after the backend is built and DDP's construction waits for all ranks
    check_free(out, overwrite=overwrite)
    if config.tokenizer == "bpe":  # its size is known before training it, which is costly
        check_fits_in_memory(config)
    train_text, val_text = split_text(corpus.text)
    # characters are the alphabet, taken from the whole text (a character seen only in the val split
    # must still be encodable); BPE merges are learned, so from the train split only
    vocabulary_text = corpus.text if config.tokenizer == "char" else train_text
    tokenizer = build_tokenizer(config.tokenizer, vocabulary_text, config.model.vocab_size)
    config = config.with_vocab_size(tokenizer.vocab_size)
    check_fits_in_memory(config)  # before the weights, the optimizer state or a batch is allocated
    val_tokens = tokenizer.encode_array(val_text)
    data = TokenData(tokenizer.encode_array(train_text), val_tokens)
    data.check_fits(config.model.block_size)
    backend = build_backend(config, init_weights(config.model, config.rng_seed))
    tokens_per_char = len(val_tokens) / max(1, len(val_text))
    run = Run(Path(out), config, tokenizer, corpus.source, tokens_per_char, world.size, corpus_fingerprint(corpus),
              device_used=backend.device)
    lock = create_run(out, run, overwrite=overwrite) if world.is_writer else None
    return Trainer(run, backend, data, world=world, lock=lock, threads=threads)


def resume_training(run_dir: Path, corpus: Corpus, overrides: dict, world: World = SINGLE_PROCESS,
                    threads: ThreadSetting | None = None) -> Trainer:
    """Continue a run from its latest checkpoint; ``overrides`` may extend max_iters, change backend...

    Any world size can resume any checkpoint: all ranks read it, rank 0 alone locks the run and
    rewrites the config.
    """
    run = open_run(run_dir)
    lock = RunLock(run.path).acquire() if world.is_writer else None
    try:
        trainer = _resumed_trainer(run, corpus, overrides, world)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.lock = lock
    trainer.threads_setting = distributed_setting(threads, world)
    return trainer


def check_resume_changes(run: Run, overrides: dict) -> None:
    """MiniGPTError for a change a resumed run cannot take: its tokenizer, its shape, its optimizer."""
    changed = [name for name in TOKENIZER_FIELDS if name in overrides and overrides[name] != run.config.get(name)]
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise MiniGPTError(
            f"cannot change the tokenizer when resuming ({flags}): "
            f"run {run.path} reads its text with its own {run.tokenizer.kind} tokenizer of {run.tokenizer.vocab_size} "
            "tokens; start a new run for another tokenizer"
        )
    for fixed, why in ((SHAPE_FIELDS, "the weights have a fixed shape"),
                       (FIXED_ON_RESUME, "the checkpoint was trained with them")):
        changed = [name for name in fixed if name in overrides and overrides[name] != run.config.get(name)]
        if changed:
            raise MiniGPTError(f"cannot change {', '.join(changed)} when resuming ({why})")


def _resumed_trainer(run: Run, corpus: Corpus, overrides: dict, world: World) -> Trainer:
    run.world_size = world.size
    check_resume_changes(run, overrides)
    if "max_iters" in overrides and not run.config.lr_decay_iters and "lr_decay_iters" not in overrides and (
        run.has_checkpoint("latest") and checkpoint_state(run).step > 0
    ):
        # the cosine was laid out over the original max_iters: extending the run must not reshape it
        # (a run at step 0, an imported one, has laid out nothing: its schedule follows the new max_iters)
        overrides = {**overrides, "lr_decay_iters": run.config.max_iters}
    run.config = run.config.replace(**overrides)
    check_fits_in_memory(run.config)
    if run.data_sha256 and corpus_fingerprint(corpus) != run.data_sha256:
        raise MiniGPTError(
            f"{corpus.source} is not the corpus run {run.path} was trained on ({run.data_source}); "
            "resume with that corpus, or start a new run on this one"
        )
    if not run.has_checkpoint("latest"):
        raise MiniGPTError(f"run {run.path} has no checkpoint to resume from; start it afresh with --out {run.path}")
    checkpoint = load_checkpoint(run.checkpoint_dir("latest"))
    if checkpoint.state.step >= run.config.max_iters:  # nothing to train: refuse before anything is rewritten
        given = f"--max-iters {run.config.max_iters}" if "max_iters" in overrides else \
            f"its max_iters ({run.config.max_iters})"
        raise MiniGPTError(f"run {run.path} is at step {checkpoint.state.step}: {given} trains nothing; give "
                           f"--max-iters above {checkpoint.state.step} to train on")
    if not run.data_sha256:  # an imported run (or one from before fingerprints): bound to the corpus it trains on
        val_text = split_text(corpus.text)[1]
        run.data_source, run.data_sha256 = corpus.source, corpus_fingerprint(corpus)
        run.tokens_per_char = len(run.tokenizer.encode(val_text)) / max(1, len(val_text))
    data = tokenize_corpus(run, corpus.text)
    data.check_fits(run.config.model.block_size)
    backend = build_backend(run.config, checkpoint.weights)
    try:
        backend.set_optimizer_state(checkpoint.optimizer)
    except (ValueError, KeyError) as exc:
        raise MiniGPTError(f"checkpoint {run.checkpoint_dir('latest')}: optimizer state does not fit: {exc}") from None
    if checkpoint.state.backend == backend.name:
        backend.set_rng_state(checkpoint.rng)
    trainer = Trainer(
        run,
        backend,
        data,
        start_step=checkpoint.state.step,
        best_val_loss=checkpoint.state.best_val_loss,
        sampler_state=checkpoint.state.samplers,
        world=world,
    )
    run.device_used = backend.device
    if world.is_writer:  # only once the overrides are proven usable: a failed resume leaves the run as it was
        run.write_config()
    return trainer

"""Throughput benchmark: training and generation tokens/s per backend, FLOPs/token and MFU; and the optimizer
update alone (``bench --optimizer-step``): AdamW against Muon's variants, interleaved in one process."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from backends.base import init_weights
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.temperature import sample_batch_with_scores, sample_with_scores
from minigpt_tui.inspection.inspector import inspect_tokens
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.metrics import flops_per_token
from minigpt_tui.training.runs import build_backend
from minigpt_tui.training.sampling import SamplingParams, generate, generate_nocache
from minigpt_tui.training.threads import ThreadSetting, apply_threads
from minigpt_tui.training.tokenizer import CharTokenizer

BENCH_VOCAB = 65  # tiny Shakespeare's character vocabulary
ABLATION_SAMPLES = 10  # samples per temperature, drawn by the temperature ablation as one batch
ABLATION_LENGTH = 100
INSPECT_TOKENS = 256  # the text the inspect view reads: moving its cursor should feel instant (< 100 ms)


@dataclass(frozen=True)
class BenchResult:
    backend: str
    device: str
    train_tokens_per_s: float
    train_ms_per_iter: float
    generate_tokens_per_s: float
    generate_tokens_per_s_nocache: float
    flops_per_token: float
    mfu: float  # achieved training FLOP/s over the measured matmul peak of this machine
    inspect_ms: float  # median time to inspect INSPECT_TOKENS tokens (logits, surprisal, every attention map)
    threads: int  # what the training steps ran on (after --threads auto measured, the count it chose)
    ablation_tokens_per_s_serial: float  # ABLATION_SAMPLES scored samples drawn one after another
    ablation_tokens_per_s_batched: float  # the same samples as one batch through one KV cache (what ablate does)

    def to_dict(self) -> dict:
        return asdict(self)


def bench_backend(name: str, config: TrainConfig, *, train_iters: int = 20, gen_tokens: int = 500,
                  nocache_tokens: int = 100, device: str | None = None,
                  threads: ThreadSetting | None = None) -> BenchResult:
    config = config.with_vocab_size(BENCH_VOCAB)
    model_config = config.model
    backend = build_backend(config, init_weights(model_config, config.rng_seed), backend=name, device=device)
    rng = np.random.default_rng(0)

    def batch():
        x = rng.integers(0, BENCH_VOCAB, (config.batch_size, model_config.block_size + 1))
        return x[:, :-1], x[:, 1:]

    batches = [[batch() for _ in range(config.grad_accum_steps)] for _ in range(train_iters + 3)]
    for micro in batches[:3]:  # warm-up: allocations, kernels, compilation
        backend.train_step(micro, config.learning_rate)
    apply_threads(threads, backend.set_threads, lambda: backend.train_step(batches[0], config.learning_rate))
    threads_used = backend.get_threads()
    start = time.perf_counter()
    for micro in batches[3:]:
        backend.train_step(micro, config.learning_rate)
    per_iter = (time.perf_counter() - start) / train_iters
    train_tps = config.tokens_per_step / per_iter

    params = SamplingParams(temperature=1.0)
    for _ in generate(backend, [0], 20, params, seed=0):
        pass
    start = time.perf_counter()
    for _ in generate(backend, [0], gen_tokens, params, seed=0):
        pass
    gen_tps = gen_tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in generate_nocache(backend, [0] * model_config.block_size, nocache_tokens, params, seed=0):
        pass
    nocache_tps = nocache_tokens / (time.perf_counter() - start)

    serial_tps, batched_tps = time_ablation_sampling(backend)
    fpt = flops_per_token(model_config)
    mfu = train_tps * fpt / backend.matmul_peak_flops()
    return BenchResult(name, backend.device, train_tps, per_iter * 1000, gen_tps, nocache_tps, fpt, mfu,
                       time_inspection(backend), threads_used, serial_tps, batched_tps)


def time_ablation_sampling(backend) -> tuple[float, float]:
    """Tokens/s of the temperature ablation's sampling (scores included), one sample at a time and as one batch."""
    tokenizer = bench_tokenizer()
    params, seeds = SamplingParams(temperature=1.0), list(range(ABLATION_SAMPLES))
    tokens = ABLATION_SAMPLES * ABLATION_LENGTH
    sample_with_scores(backend, tokenizer, [0], 10, params, 0)  # warm-up
    start = time.perf_counter()
    for seed in seeds:
        sample_with_scores(backend, tokenizer, [0], ABLATION_LENGTH, params, seed)
    serial = tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    sample_batch_with_scores(backend, tokenizer, [[0]] * ABLATION_SAMPLES, ABLATION_LENGTH, params, seeds)
    return serial, tokens / (time.perf_counter() - start)


def bench_tokenizer() -> CharTokenizer:
    return CharTokenizer([chr(32 + i) for i in range(BENCH_VOCAB)])


def time_inspection(backend, repeats: int = 7) -> float:
    """Median milliseconds of ``inspect_tokens`` on INSPECT_TOKENS random tokens, after one warm-up."""
    tokenizer = bench_tokenizer()
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, BENCH_VOCAB, INSPECT_TOKENS)]
    inspect_tokens(backend, tokens, tokenizer)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        inspect_tokens(backend, tokens, tokenizer)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# (label, config changes): what --optimizer-step times, AdamW first (the others are read as ratios to it)
OPTIMIZER_VARIANTS: tuple[tuple[str, dict], ...] = (
    ("AdamW", dict(optimizer="adamw")),
    ("Muon jordan 5", dict(optimizer="muon", muon_coefficients="jordan", muon_ns_steps=5)),
    ("Muon polar_express 5", dict(optimizer="muon", muon_coefficients="polar_express", muon_ns_steps=5)),
    ("Muon polar_express 4", dict(optimizer="muon", muon_coefficients="polar_express", muon_ns_steps=4)),
    ("Muon polar_express 3", dict(optimizer="muon", muon_coefficients="polar_express", muon_ns_steps=3)),
    ("Muon jordan 5 bf16", dict(optimizer="muon", muon_coefficients="jordan", muon_ns_steps=5, muon_bf16=True)),
    ("Muon polar_express 5 bf16", dict(optimizer="muon", muon_coefficients="polar_express", muon_ns_steps=5,
                                       muon_bf16=True)),
    ("Muon polar_express 3 bf16", dict(optimizer="muon", muon_coefficients="polar_express", muon_ns_steps=3,
                                       muon_bf16=True)),
)
UPDATES_PER_ROUND = 3  # updates timed back to back per variant and round (one is a few ms: too short alone)


@dataclass(frozen=True)
class OptimizerTiming:
    variant: str
    ms: float  # median over the rounds of the mean time of one update
    ratio: float  # ms over AdamW's ms
    rounds_ms: list[float]  # each round's mean time of one update, in round order


@dataclass(frozen=True)
class OptimizerBench:
    backend: str
    device: str
    threads: int
    rounds: int
    timings: list[OptimizerTiming]

    def to_dict(self) -> dict:
        return asdict(self)


def bench_optimizer_step(name: str, config: TrainConfig, *, rounds: int = 10, device: str | None = None,
                         threads: ThreadSetting | None = None,
                         variants: tuple[tuple[str, dict], ...] = OPTIMIZER_VARIANTS) -> OptimizerBench:
    """Milliseconds of one optimizer update (no forward, no backward) for each variant, on the model of
    ``config``: every variant starts from the same weights and the gradient of the same batch, then each
    round times UPDATES_PER_ROUND updates of every variant in turn (the order rotating from round to round),
    so a machine that slows down or speeds up meanwhile weighs on all of them alike. The first variant is
    the yardstick of the ratios."""
    config = config.with_vocab_size(BENCH_VOCAB)
    weights = init_weights(config.model, config.rng_seed)
    x = np.random.default_rng(0).integers(0, BENCH_VOCAB, (config.batch_size, config.model.block_size + 1))
    micro_batches = [(x[:, :-1], x[:, 1:])]
    backends = []
    for _, changes in variants:
        backend = build_backend(config.replace(**changes), weights, backend=name, device=device)
        try:
            backend.accumulate_gradients(micro_batches)
        except NotImplementedError:
            raise MiniGPTError(f"backend {name!r} cannot time its optimizer update alone (it has no "
                               "accumulate_gradients / optimizer_update)") from None
        backends.append(backend)
    lr = config.learning_rate

    def update(backend, n: int = 1) -> float:
        start = time.perf_counter()
        for _ in range(n):
            backend.optimizer_update(lr)
        backend.synchronize()
        return (time.perf_counter() - start) / n

    for backend in backends:  # warm-up: first-call allocations, kernels
        update(backend, 2)
    probe = backends[1] if len(backends) > 1 else backends[0]
    apply_threads(threads, probe.set_threads, lambda: update(probe))
    times: list[list[float]] = [[] for _ in backends]
    for r in range(rounds):
        for i in [(j + r) % len(backends) for j in range(len(backends))]:
            times[i].append(update(backends[i], UPDATES_PER_ROUND) * 1000)
    medians = [statistics.median(t) for t in times]
    timings = [OptimizerTiming(label, ms, ms / medians[0], t)
               for (label, _), ms, t in zip(variants, medians, times, strict=True)]
    return OptimizerBench(name, backends[0].device, probe.get_threads(), rounds, timings)

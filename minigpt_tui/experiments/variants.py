"""Training ablations: several variants of one base config, trained and scored the same way.

Each variant is a normal run folder under ``out/<name>/`` made by ``trainer.new_training``, scored on
the whole validation split (bits per character, comparable across tokenizers) and timed. With
``isolate`` each variant trains in a fresh process, so its peak RSS (``resource.getrusage``, the
resident memory high-water mark of that process, interpreter and torch included) is its own.
A variant whose ``result.json`` exists is not trained again, so rerunning an interrupted ablation
continues with the next variant (delete the folder of a variant that was cut short).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from backends.base import Backend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write_text
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.evaluation import evaluate_tokens
from minigpt_tui.training.runs import METRICS_FILE, load_backend_class, load_model, open_run, read_metrics
from minigpt_tui.training.sampling import SamplingParams, generate_text
from minigpt_tui.training.threads import ThreadSetting

RESULT_FILE = "result.json"
SAMPLE_CHARS = 300


@dataclass(frozen=True)
class VariantResult:
    name: str
    run_dir: str
    tokenizer: str
    vocab_size: int
    block_size: int
    batch_size: int
    pos_encoding: str
    max_iters: int
    tokens_seen: int  # training tokens: max_iters * batch_size * block_size * grad_accum_steps
    chars_seen: float  # the same budget in characters of text (tokens_seen / tokens_per_char)
    tokens_per_char: float
    val_loss: float  # nats per token over the whole val split, best checkpoint
    val_bpc: float
    train_tokens_per_s: float  # median of the logged throughput, first interval (warm-up) dropped
    wall_s: float  # training wall time, evaluations and checkpoints included
    peak_rss_mb: float  # high-water mark of the process at the end of training
    rss_before_training_mb: float  # the same just before the first step: data, model, optimizer built
    sample: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    # ru_maxrss is kilobytes on Linux, bytes on macOS
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def median_throughput(run_dir: Path) -> float:
    speeds = [r.tokens_per_s for r in read_metrics(Path(run_dir) / METRICS_FILE).steps]
    return float(np.median(speeds[1:] if len(speeds) > 1 else speeds)) if speeds else math.nan


def train_variant(name: str, config: TrainConfig, corpus: Corpus, out: Path,
                  extra_scores: Callable[[Backend, object, np.ndarray], dict] | None = None,
                  threads: ThreadSetting | None = None) -> VariantResult:
    """Train one variant in this process and score it; ``extra_scores(model, run, val_tokens)`` adds fields."""
    from minigpt_tui.training.trainer import new_training, tokenize_corpus

    run_dir = Path(out) / name
    trainer = new_training(config, corpus, run_dir, threads=threads)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    done = trainer.run()
    wall = time.perf_counter() - started
    rss_peak = peak_rss_mb()  # before the whole-split evaluation below, whose batches are larger
    if done.reason != "finished":
        raise MiniGPTError(f"variant {name} did not finish: {done.message}")
    run = open_run(run_dir)
    model, _ = load_model(run)
    val = tokenize_corpus(run, corpus.text).val
    score = evaluate_tokens(model, val, run.tokens_per_char)
    sample = "".join(generate_text(model, run.tokenizer, "\n", SAMPLE_CHARS, SamplingParams(0.8), seed=0))
    c = config
    tokens_seen = c.max_iters * c.tokens_per_step
    result = VariantResult(
        name=name, run_dir=str(run_dir), tokenizer=c.tokenizer, vocab_size=run.tokenizer.vocab_size,
        block_size=c.model.block_size, batch_size=c.batch_size, pos_encoding=c.model.pos_encoding,
        max_iters=c.max_iters,
        tokens_seen=tokens_seen, chars_seen=tokens_seen / run.tokens_per_char, tokens_per_char=run.tokens_per_char,
        val_loss=score.loss, val_bpc=score.bits_per_char, train_tokens_per_s=median_throughput(run_dir),
        wall_s=wall, peak_rss_mb=rss_peak, rss_before_training_mb=rss_before, sample=sample[:SAMPLE_CHARS],
        extra=extra_scores(model, run, val) if extra_scores else {},
    )
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=1))
    return result


def _train_in_child(name: str, config: dict, text: str, source: str, out: str, extra_scores,
                    threads: ThreadSetting | None):
    return train_variant(name, TrainConfig.from_dict(config), Corpus(text, source), Path(out), extra_scores,
                         threads).to_dict()


def run_variants(variants: list[tuple[str, TrainConfig]], corpus: Corpus, out: Path, *, isolate: bool = True,
                 threads: ThreadSetting | None = None, extra_scores=None,
                 on_result: Callable[[VariantResult], None] | None = None) -> list[VariantResult]:
    """Train every (name, config) not already done under ``out``; results in the order given.

    ``extra_scores`` must be a module-level function when ``isolate`` (it crosses a process boundary).
    """
    out = Path(out)
    if isinstance(threads, int):  # for whatever the caller measures afterwards (each trainer sets its own)
        for backend in {config.backend for _, config in variants}:
            load_backend_class(backend).set_threads(threads)
    results = []
    for name, config in variants:
        done_file = out / name / RESULT_FILE
        if done_file.is_file():
            result = VariantResult(**json.loads(done_file.read_text(encoding="utf-8")))
        elif isolate:
            # spawn, not fork: a clean interpreter per variant keeps peak RSS and torch threads per variant
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                data = pool.apply(_train_in_child, (name, config.to_dict(), corpus.text, corpus.source, str(out),
                                                    extra_scores, threads))
            result = VariantResult(**data)
        else:
            result = train_variant(name, config, corpus, out, extra_scores, threads)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


# the variants of each ablation


def tokenizer_variants(base: TrainConfig, vocab_sizes: list[int]) -> list[tuple[str, TrainConfig]]:
    """Character level, then byte-level BPE per vocabulary size; the same model, steps and tokens/step."""
    return [("char", base.replace(tokenizer="char"))] + [
        (f"bpe{v}", base.replace(tokenizer="bpe", vocab_size=v)) for v in vocab_sizes
    ]


def context_variants(base: TrainConfig, block_sizes: list[int], tokens_per_step: int) -> list[tuple[str, TrainConfig]]:
    """One variant per context length with batch_size * block_size = ``tokens_per_step``: the same
    training tokens and optimizer steps for every context, so only the window differs."""
    variants = []
    for block in block_sizes:
        if block < 1:
            raise MiniGPTError(f"context lengths must be positive, got {block}")
        if tokens_per_step % block:
            raise MiniGPTError(f"tokens per step ({tokens_per_step}) must be a multiple of the context {block}")
        variants.append((f"ctx{block}", base.replace(block_size=block, batch_size=tokens_per_step // block)))
    return variants


def posenc_variants(base: TrainConfig) -> list[tuple[str, TrainConfig]]:
    return [(p, base.replace(pos_encoding=p)) for p in ("learned", "sinusoidal")]


# scores beyond the val loss


def with_throughput(results: list[VariantResult], configs: list[TrainConfig], *, rounds: int = 3,
                    iters: int = 20, gen_tokens: int = 200) -> list[VariantResult]:
    """Add best-of-``rounds`` training and KV-cached generation tokens/s (``minigpt bench``'s measure) to
    each result's extra. Round-robin over the variants, so a change in the machine's load hits them
    all alike, which the throughput logged by runs trained minutes apart does not."""
    import dataclasses

    from minigpt_tui.experiments.bench import bench_backend

    best = [(0.0, 0.0)] * len(configs)
    for _ in range(rounds):
        for i, config in enumerate(configs):
            b = bench_backend(config.backend, config, train_iters=iters, gen_tokens=gen_tokens, nocache_tokens=1)
            best[i] = (max(best[i][0], b.train_tokens_per_s), max(best[i][1], b.generate_tokens_per_s))
    measured = [{"bench_train_tokens_per_s": train, "bench_generate_tokens_per_s": gen} for train, gen in best]
    return [dataclasses.replace(r, extra={**r.extra, **m}) for r, m in zip(results, measured, strict=True)]

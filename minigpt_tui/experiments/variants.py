"""Training ablations: several variants of one base config, trained and scored the same way.

Each variant is a normal run folder under ``out/<name>/`` made by ``trainer.new_training``, scored on
the whole validation split (bits per character, comparable across tokenizers) and timed. With
``isolate`` each variant trains in a fresh process, so its peak RSS (``resource.getrusage``, the
resident memory high-water mark of that process, interpreter and torch included) is its own.
A variant whose ``result.json`` exists, trained with the same config on the same corpus, is not trained
again; one cut short (Ctrl-C, SIGTERM, a crash) is resumed from its last checkpoint; one trained with
anything else is refused unless ``--overwrite``. So rerunning an interrupted ablation continues it.
A variant that diverges is recorded as such (``status``, NaN scores) and the ablation goes on.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from backends.base import Backend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write_text, check_file_name, read_input_bytes
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.evaluation import evaluate_tokens
from minigpt_tui.training.runs import (
    METRICS_FILE,
    checkpoint_state,
    corpus_fingerprint,
    has_checkpoint,
    load_backend_class,
    load_model,
    open_run,
    read_metrics,
)
from minigpt_tui.training.sampling import SamplingParams, generate_text
from minigpt_tui.training.threads import ThreadSetting
from minigpt_tui.typed import from_fields

RESULT_FILE = "result.json"
SAMPLE_CHARS = 300
MAX_VARIANTS = 256  # a grid beyond this is a typo more often than a plan: refused with its size


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
    status: str = "finished"  # or "diverged": NaN scores, the run stopped at a non-finite loss

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    # ru_maxrss is kilobytes on Linux, bytes on macOS
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def median_throughput(run_dir: Path) -> float:
    speeds = [r.tokens_per_s for r in read_metrics(Path(run_dir) / METRICS_FILE).steps]
    return float(np.median(speeds[1:] if len(speeds) > 1 else speeds)) if speeds else math.nan


def diverged_result(name: str, run_dir: Path, config: TrainConfig, vocab_size: int, tokens_per_char: float,
                    wall: float, rss: tuple[float, float]) -> VariantResult:
    """What a diverged variant contributes: its settings, NaN scores, and the status that says why."""
    tokens_seen = config.max_iters * config.tokens_per_step
    return VariantResult(
        name=name, run_dir=str(run_dir), tokenizer=config.tokenizer, vocab_size=vocab_size,
        block_size=config.model.block_size, batch_size=config.batch_size, pos_encoding=config.model.pos_encoding,
        max_iters=config.max_iters, tokens_seen=tokens_seen, chars_seen=tokens_seen / tokens_per_char,
        tokens_per_char=tokens_per_char, val_loss=math.nan, val_bpc=math.nan, train_tokens_per_s=math.nan,
        wall_s=wall, peak_rss_mb=rss[1], rss_before_training_mb=rss[0], sample="", status="diverged",
    )


def train_variant(name: str, config: TrainConfig, corpus: Corpus, out: Path,
                  extra_scores: Callable[[Backend, object, np.ndarray], dict] | None = None, *,
                  overwrite: bool = False, threads: ThreadSetting | None = None) -> VariantResult:
    """Train one variant in this process and score it; ``extra_scores(model, run, val_tokens)`` adds fields.

    A variant folder holding checkpoints (an interrupted earlier attempt, already checked by ``run_variants``
    to have this config and corpus) is resumed, unless ``overwrite``."""
    from minigpt_tui.training.trainer import new_training, resume_training, tokenize_corpus

    run_dir = Path(out) / name
    if overwrite:
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
    trainer = None
    if overwrite or not has_checkpoint(run_dir):
        trainer = new_training(config, corpus, run_dir, overwrite=overwrite, threads=threads)
    elif checkpoint_state(open_run(run_dir)).step < config.max_iters:
        trainer = resume_training(run_dir, corpus, {}, threads=threads)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    done = trainer.run() if trainer is not None else None  # None: trained to the end before, killed while scored
    wall = time.perf_counter() - started
    rss_peak = peak_rss_mb()  # before the whole-split evaluation below, whose batches are larger
    run = open_run(run_dir)
    if done is not None and done.reason == "diverged":
        result = diverged_result(name, run_dir, config, run.tokenizer.vocab_size, run.tokens_per_char, wall,
                                 (rss_before, rss_peak))
        atomic_write_text(run_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=1))
        return result
    if done is not None and done.reason != "finished":
        raise MiniGPTError(f"variant {name} did not finish: {done.message}")
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
                    threads: ThreadSetting | None, overwrite: bool):
    return train_variant(name, TrainConfig.from_dict(config), Corpus(text, source), Path(out), extra_scores,
                         overwrite=overwrite, threads=threads).to_dict()


def check_variant_count(count: int, what: str = "the ablation") -> None:
    if count < 1:
        raise MiniGPTError(f"{what} has no variants")
    if count > MAX_VARIANTS:
        raise MiniGPTError(f"{what} has {count:,} variants (seeds included); at most {MAX_VARIANTS} run in one "
                           "ablation")


def check_variants(variants: list[tuple[str, TrainConfig]]) -> None:
    """Names usable as folders, none twice (two variants would share one), and not too many."""
    check_variant_count(len(variants))
    names = [name for name, _ in variants]
    for name in names:
        check_file_name(name, "variant name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MiniGPTError(f"variant(s) {', '.join(repeated)} appear twice: a value is repeated in the lists")


def config_difference(trained: TrainConfig, asked: TrainConfig) -> str | None:
    """The first field where ``trained`` (a run's config.json) differs from ``asked``, in words; None if none.
    The vocabulary size is the tokenizer's in a run: compared as such."""
    asked = asked.with_vocab_size(trained.model.vocab_size)
    mine, theirs = trained.to_flat(), asked.to_flat()
    changed = [name for name in mine if mine[name] != theirs[name]]
    return None if not changed else ", ".join(f"{n}={mine[n]!r} (now {theirs[n]!r})" for n in changed[:3])


def earlier_result(name: str, config: TrainConfig, corpus: Corpus, out: Path) -> VariantResult | str | None:
    """What an earlier ablation left for this variant: its result (finished: reused), "resume" (interrupted),
    or None (nothing yet). MiniGPTError when it was trained with another config or corpus."""
    run_dir = Path(out) / name
    if not has_checkpoint(run_dir) and not os.path.lexists(run_dir / RESULT_FILE):
        return None
    run = open_run(run_dir)
    difference = config_difference(run.config, config)
    if difference is None and run.data_sha256 and run.data_sha256 != corpus_fingerprint(corpus):
        difference = f"another corpus ({run.data_source})"
    if difference is not None:
        raise MiniGPTError(f"variant {name} in {out} was trained with {difference}; use --overwrite to train the "
                           "variants afresh, or another --out")
    if not os.path.lexists(run_dir / RESULT_FILE):
        return "resume"
    try:
        document = json.loads(read_input_bytes(run_dir / RESULT_FILE, "result file"))
        result = from_fields(VariantResult, document, str(run_dir / RESULT_FILE))
    except (OSError, ValueError) as exc:
        raise MiniGPTError(f"{run_dir / RESULT_FILE} is damaged ({exc}); delete it to score the variant again") \
            from None
    if result.name != name or Path(result.run_dir).name != name:
        raise MiniGPTError(f"{run_dir / RESULT_FILE} is the result of {result.name}, not of {name}")
    return result


def run_variants(variants: list[tuple[str, TrainConfig]], corpus: Corpus, out: Path, *, isolate: bool = True,
                 threads: ThreadSetting | None = None, extra_scores=None, overwrite: bool = False,
                 on_result: Callable[[VariantResult], None] | None = None) -> list[VariantResult]:
    """Train every (name, config) not already done under ``out``; results in the order given.

    Before anything is trained, every variant's folder is checked: a finished variant is reused only when its
    config and corpus are the ones asked for now, an interrupted one is resumed, a mismatch is refused (or,
    with ``overwrite``, everything is trained afresh). ``extra_scores`` must be a module-level function when
    ``isolate`` (it crosses a process boundary).
    """
    out = Path(out)
    check_variants(variants)
    earlier = [None if overwrite else earlier_result(name, config, corpus, out) for name, config in variants]
    if isinstance(threads, int):  # for whatever the caller measures afterwards (each trainer sets its own)
        for backend in {config.backend for _, config in variants}:
            load_backend_class(backend).set_threads(threads)
    results = []
    for (name, config), before in zip(variants, earlier, strict=True):
        if isinstance(before, VariantResult):
            result = before
        elif isolate:
            # spawn, not fork: a clean interpreter per variant keeps peak RSS and torch threads per variant;
            # leaving the with-block (an error, Ctrl-C, SIGTERM as KeyboardInterrupt) terminates the worker
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                data = pool.apply(_train_in_child, (name, config.to_dict(), corpus.text, corpus.source, str(out),
                                                    extra_scores, threads, overwrite))
            result = VariantResult(**data)
        else:
            result = train_variant(name, config, corpus, out, extra_scores, overwrite=overwrite, threads=threads)
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

"""``minigpt report``: a learner's runs turned into one write-up folder (``report.md`` and its figures).

This module gathers the evidence: the runs and their corpus, checked to be comparable, and four computations
per run (the whole-split score, the temperature ablation, teacher forcing vs free running, what the heads
attend to). Each computation is cached in ``OUT/cache/`` under a key made of the checkpoint's sha256 (its
manifest) and the options it depends on, so a rerun reuses it and an interrupted report keeps what finished.
``report_markdown`` lays the evidence out and writes the folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from backends.base import Backend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.probes import exposure_bias
from minigpt_tui.experiments.temperature import TemperatureRow, default_prompt, temperature_ablation
from minigpt_tui.inspection.head_roles import HeadRoles, head_roles
from minigpt_tui.storage import atomic_write_text, check_output_folder
from minigpt_tui.training.checkpoint import TrainingState, checkpoint_folder, read_manifest
from minigpt_tui.training.corpus import corpus_for_run
from minigpt_tui.training.data import split_text
from minigpt_tui.training.datasets import Corpus, sha256
from minigpt_tui.training.evaluation import SplitScore, evaluate_tokens
from minigpt_tui.training.events import EvalEvent, StepEvent
from minigpt_tui.training.runs import Run, available_checkpoint, load_model, open_run, read_metrics

REPORT_DIR = "report"
CACHE_DIR = "cache"
TEMPERATURES = (0.5, 1.0, 1.5)
HEAD_WINDOWS = 32  # validation windows the head statistics average over
CACHE_FORMAT = 1  # bump when a computation's output changes meaning: old entries are then recomputed

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Note = Callable[[str], None]


@dataclass(frozen=True)
class ReportOptions:
    samples: int = 5  # per temperature, and free runs for exposure bias
    length: int = 300  # tokens per sample and per free run
    seed: int = 0
    prompt: str | None = None  # None: the start of a line of the validation text


@dataclass
class RunEvidence:
    """One run and what was measured on it (``temperature``, ``exposure`` and ``heads`` for the first run)."""

    run: Run
    label: str  # the path as the user gave it: the commands in the report use it
    corpus: Corpus
    state: TrainingState  # of the checkpoint scored
    checkpoint: str  # "best" or "latest"
    parameters: int
    scored_on: str  # "torch on cpu": where this report computed its numbers
    evals: list[EvalEvent]
    steps: list[StepEvent]
    score: SplitScore
    prompt: str = ""
    temperature: list[TemperatureRow] | None = None
    exposure: dict | None = None
    heads: HeadRoles | None = None

    @property
    def trainer_estimate(self) -> EvalEvent | None:
        """The trainer's own evaluation at the checkpoint's step (eval_iters random batches)."""
        return next((e for e in reversed(self.evals) if e.step == self.state.step), None)

    @property
    def wall_s(self) -> float:
        """From the first to the last metrics record (pauses between resumed sessions included)."""
        times = [r.time for r in [*self.evals, *self.steps]]
        return max(times) - min(times) if times else math.nan

    @property
    def tokens_per_s(self) -> float:
        rates = [s.tokens_per_s for s in self.steps if math.isfinite(s.tokens_per_s) and s.tokens_per_s > 0]
        return float(np.median(rates)) if rates else math.nan

    @property
    def tokens_seen(self) -> int:
        return self.state.step * self.run.config.tokens_per_step * self.run.world_size

    @property
    def chars_seen(self) -> float:
        return self.tokens_seen / self.run.tokens_per_char


# ---- checking the input before anything is computed or written


def open_runs(paths: list[Path]) -> list[Run]:
    """The runs, each with a checkpoint, all trained on one corpus; MiniGPTError otherwise."""
    if not paths:
        raise MiniGPTError("give at least one run folder")
    runs = [open_run(p) for p in paths]
    for run in runs:
        available_checkpoint(run)  # "run X has no checkpoint yet"
    first = runs[0]
    for run in runs[1:]:
        if corpus_identity(run) != corpus_identity(first):
            raise MiniGPTError(f"runs {first.path} and {run.path} were trained on different corpora "
                               f"({first.data_source} and {run.data_source}): their scores cannot be compared")
    return runs


def corpus_identity(run: Run) -> str:
    return run.data_sha256 or run.data_source


def check_out(out: Path) -> None:
    """Refuse an --out that is a file, lies inside a run's checkpoints or cannot be written
    (``storage.check_output_folder``); then make it and check that a file can be created in it."""
    out = check_output_folder(out)
    try:
        (out / CACHE_DIR).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise MiniGPTError(f"cannot write the report to {out}: {exc.strerror or exc}") from None


def run_corpus(run: Run, data: Path | None, dataset: str | None) -> Corpus:
    """The run's own corpus (found again, or given by --data/--dataset), checked against its sha256."""
    corpus = corpus_for_run(run, data, dataset)
    if run.data_sha256 and sha256(corpus.text.encode("utf-8")) != run.data_sha256:
        raise MiniGPTError(f"{corpus.source} is not the text run {run.path} was trained on (sha256 differs)")
    return corpus


# ---- the cache


class ComputationCache:
    """JSON results in a folder, one file per (computation, key); written atomically when complete."""

    def __init__(self, folder: Path, note: Note) -> None:
        self.folder = Path(folder)
        self.note = note

    def get(self, name: str, key: dict, compute: Callable[[], dict]) -> dict:
        digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "name": name, **key}, sort_keys=True)
                                .encode("utf-8")).hexdigest()[:16]
        path = self.folder / f"{name}-{digest}.json"
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            self.note(f"{name}: reused {path} (same checkpoint and options)")
            return result
        except (OSError, ValueError):  # absent, or damaged: computed again
            pass
        result = compute()
        atomic_write_text(path, json.dumps(result))
        self.note(f"{name}: computed, kept in {path}")
        return result


def checkpoint_key(run: Run, which: str) -> dict:
    """What identifies the weights: the sha256 of every file of the checkpoint, from its manifest."""
    return {"checkpoint": read_manifest(checkpoint_folder(run.checkpoint_dir(which)))}


# ---- the computations


def gather(paths: list[Path], options: ReportOptions, out: Path, *, data: Path | None = None,
           dataset: str | None = None, backend: str | None = None, device: str | None = None,
           progress: Progress | None = None, note: Note | None = None) -> list[RunEvidence]:
    """Check the runs and --out, then measure every run (the first one in full)."""
    progress = progress or (lambda stage, done, total: None)
    note = note or (lambda line: None)
    if options.samples < 1 or options.length < 1:
        raise MiniGPTError(f"samples and length must be positive, got {options.samples} and {options.length}")
    runs = open_runs(paths)
    corpora = [run_corpus(run, data, dataset) for run in runs]
    if options.prompt is not None:
        runs[0].tokenizer.encode(options.prompt)  # a character outside the vocabulary fails before any write
    check_out(out)
    cache = ComputationCache(Path(out) / CACHE_DIR, note)
    evidence = []
    for index, (path, run, corpus) in enumerate(zip(paths, runs, corpora, strict=True)):
        evidence.append(measure(run, str(path), corpus, options, cache, full=index == 0, backend=backend,
                                device=device, progress=progress))
    return evidence


def measure(run: Run, label: str, corpus: Corpus, options: ReportOptions, cache: ComputationCache, *, full: bool,
            backend: str | None, device: str | None, progress: Progress) -> RunEvidence:
    which = available_checkpoint(run)
    model, checkpoint = load_model(run, which=which, backend=backend, device=device)
    train_text, val_text = split_text(corpus.text)
    val = run.tokenizer.encode_array(val_text)
    key = checkpoint_key(run, which)
    metrics = read_metrics(run.metrics_path)
    name = Path(label).name or label

    def score() -> dict:
        progress(f"{name}: whole-split val loss", 0, 1)
        result = evaluate_tokens(model, val, run.tokens_per_char)
        progress(f"{name}: whole-split val loss", 1, 1)
        return vars(result)

    evidence = RunEvidence(
        run=run, label=label, corpus=corpus, state=checkpoint.state, checkpoint=which,
        parameters=model.num_parameters(), scored_on=f"{model.name} on {model.device}",
        evals=metrics.evals, steps=metrics.steps, score=SplitScore(**cache.get("eval", key, score)),
    )
    if full:
        measure_samples(evidence, model, train_text, val, val_text, options, cache, key, progress)
    return evidence


def measure_samples(evidence: RunEvidence, model: Backend, train_text: str, val: np.ndarray, val_text: str,
                    options: ReportOptions, cache: ComputationCache, key: dict, progress: Progress) -> None:
    """The temperature ablation, exposure bias and head roles of the first run."""
    run = evidence.run
    tokenizer = run.tokenizer
    prompt = default_prompt(val_text) if options.prompt is None else options.prompt
    evidence.prompt = prompt
    sampling = {**key, "samples": options.samples, "length": options.length, "seed": options.seed}

    def temperature() -> dict:
        rows = temperature_ablation(
            model, tokenizer, train_text, list(TEMPERATURES), samples=options.samples, length=options.length,
            prompt=prompt, seed=options.seed,
            on_progress=lambda done, total: progress("temperature samples", done, total))
        return {"rows": [r.to_dict() for r in rows]}

    rows = cache.get("temperature", {**sampling, "prompt": prompt}, temperature)["rows"]
    names = {f.name for f in fields(TemperatureRow)}
    evidence.temperature = [TemperatureRow(**{k: v for k, v in r.items() if k in names}) for r in rows]

    def exposure() -> dict:
        progress("exposure bias (free runs)", 0, 1)
        result = exposure_bias(model, tokenizer, val, samples=options.samples, length=options.length,
                               seed=options.seed)
        progress("exposure bias (free runs)", 1, 1)
        return result

    evidence.exposure = cache.get("exposure", sampling, exposure)

    def heads() -> dict:
        roles = head_roles(model, tokenizer, val, windows=HEAD_WINDOWS,
                           on_window=lambda done, total: progress("attention heads", done, total))
        return roles.to_dict()

    evidence.heads = roles_from_dict(cache.get("heads", {**key, "windows": HEAD_WINDOWS}, heads),
                                     tokenizer.kind)


def roles_from_dict(document: dict, tokenizer_kind: str) -> HeadRoles:
    kinds = tuple(document["kinds"])
    return HeadRoles(
        mass=np.asarray(document["mass"]), chance=np.asarray([document["chance"][k] for k in kinds]),
        queries=np.asarray([document["queries"][k] for k in kinds]), surprisal_bits=document["surprisal_bits"],
        surprisal_counts=document["surprisal_counts"], windows=document["windows"],
        window_tokens=document["window_tokens"], kinds=kinds, tokenizer_kind=tokenizer_kind,
    )


def default_out(paths: list[Path]) -> Path:
    return Path(paths[0]) / REPORT_DIR

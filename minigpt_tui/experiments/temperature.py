"""Temperature ablation: how T trades coherence for diversity, measured on the model's own samples.

Every temperature draws its samples with the same seeds (sample i uses ``seed + i``), so rows differ
only in T. Each generated token is scored twice from the same logits: the distribution at T that
it was drawn from (its entropy), and the model's own distribution at T=1 (its NLL, the coherence
measure: how surprising the text is to the model that wrote it).

A degenerate sample (empty, whitespace only, or one repeated unit: ``textmetrics.degeneracy``) is
flagged in its own column and left out of the diversity and known-word figures, which say over how many
samples they were computed: 400 spaces have no repeated words, and must not score as diverse text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from backends.base import Backend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.textmetrics import (
    degeneracy,
    distinct_n,
    entropy,
    known_word_share,
    nll,
    repeated_ngram_rate,
    words,
)
from minigpt_tui.storage import atomic_write_text
from minigpt_tui.training.sampling import SamplingParams, probabilities_rows, random_generator, sample_rows
from minigpt_tui.training.tokenizer import Tokenizer

REPEAT_N = 2  # repeated word bigrams within one sample: loops and stock phrases


@dataclass(frozen=True)
class TemperatureRow:
    temperature: float
    samples: list[str]
    mean_nll: float  # mean per-token NLL of the samples under the model at T=1, nats
    distinct_1: float  # over words, pooled over the samples
    distinct_2: float
    distinct_3: float
    repeated_ngram_rate: float  # word bigrams repeated within a sample
    known_word_share: float  # share of generated words found in the training text
    mean_entropy: float  # mean entropy (nats) of the distribution each token was drawn from
    # per sample: why it is degenerate ("whitespace only", "repeats 'the'"), "" when it is scored as text
    degenerate: list[str] = field(default_factory=list)

    @property
    def scored_samples(self) -> int:
        """Samples the diversity and known-word figures were computed over (the non-degenerate ones)."""
        return len(self.samples) - sum(bool(reason) for reason in self.degenerate)

    def to_dict(self) -> dict:
        return {**asdict(self), "scored_samples": self.scored_samples}


@dataclass(frozen=True)
class SampleTrace:
    text: str
    nlls: list[float]  # per generated token, under T=1
    entropies: list[float]  # per generated token, of the sampling distribution


def sample_with_scores(backend: Backend, tokenizer: Tokenizer, prompt_ids: list[int], length: int,
                       params: SamplingParams, seed: int) -> SampleTrace:
    """One sample of ``length`` tokens after the prompt, with the NLL and entropy of every token."""
    return sample_batch_with_scores(backend, tokenizer, [prompt_ids], length, params, [seed])[0]


def sample_batch_with_scores(backend: Backend, tokenizer: Tokenizer, prompts: list[list[int]], length: int,
                             params: SamplingParams, seeds: list[int],
                             should_stop: Callable[[], bool] | None = None) -> list[SampleTrace] | None:
    """Samples drawn side by side, one KV-cached session for all: row i is exactly ``sample_with_scores(
    prompts[i], seeds[i])`` (its own generator), at the cost of one batched forward per token. The prompts
    must have one length. ``should_stop`` is polled before each token; None when it stopped the batch."""
    if len(prompts) != len(seeds) or len({len(p) for p in prompts}) != 1:
        raise MiniGPTError("a batch of samples needs one seed per prompt and prompts of one length")
    rngs = [random_generator(seed) for seed in seeds]
    unit = SamplingParams(temperature=1.0)
    session = backend.generation_session(len(prompts))
    logits = session.feed_rows(np.asarray([p[-backend.config.block_size :] for p in prompts], dtype=np.int64))
    generated: list[list[int]] = [[] for _ in prompts]
    nlls: list[list[float]] = [[] for _ in prompts]
    entropies: list[list[float]] = [[] for _ in prompts]
    for i in range(length):
        if should_stop is not None and should_stop():
            return None
        tokens = sample_rows(logits, params, rngs)
        sampled, at_unit = probabilities_rows(logits, params), probabilities_rows(logits, unit)
        for row, token in enumerate(tokens):
            entropies[row].append(entropy(sampled[row]))
            nlls[row].append(nll(at_unit[row], token))
            generated[row].append(token)
        if i + 1 < length:
            logits = session.feed_rows(np.asarray(tokens, dtype=np.int64)[:, None])
    return [SampleTrace(tokenizer.decode(g), n, e) for g, n, e in zip(generated, nlls, entropies, strict=True)]


def temperature_ablation(backend: Backend, tokenizer: Tokenizer, train_text: str, temperatures: list[float], *,
                         samples: int, length: int, prompt: str, seed: int = 0,
                         should_stop: Callable[[], bool] | None = None,
                         on_progress: Callable[[int, int], None] | None = None) -> list[TemperatureRow]:
    """One row per temperature, in the order given. ``prompt``: see ``default_prompt`` for a fair one.

    ``should_stop`` is polled before each token; when it returns true, the rows finished so far are
    returned (a cancelled ablation has fewer rows than temperatures). ``on_progress(done, total)``
    is called after each temperature's samples (drawn as one batch).
    """
    if not temperatures:
        raise MiniGPTError("give at least one temperature")
    if samples < 1 or length < 1:
        raise MiniGPTError(f"samples and length must be positive, got {samples} and {length}")
    params = [SamplingParams(temperature=t) for t in temperatures]  # validates every T up front
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise MiniGPTError("the prompt is empty (give at least one character)")
    vocabulary = set(words(train_text))
    rows, total = [], len(temperatures) * samples
    for t_index, p in enumerate(params):
        # the samples of a temperature as one batch: the same texts as one by one, a forward per token for all
        traces = sample_batch_with_scores(backend, tokenizer, [prompt_ids] * samples, length, p,
                                          [seed + i for i in range(samples)], should_stop)
        if traces is None:
            return rows
        if on_progress is not None:
            on_progress((t_index + 1) * samples, total)
        rows.append(summarize(p.temperature, traces, vocabulary))
    return rows


def summarize(temperature: float, traces: list[SampleTrace], vocabulary: set[str]) -> TemperatureRow:
    """Coherence and entropy over every sample (they describe the model); diversity and known words over
    the non-degenerate samples only (NaN when there is none: no text, no figure)."""
    reasons = [degeneracy(t.text) for t in traces]
    sample_words = [words(t.text) for t, reason in zip(traces, reasons, strict=True) if not reason]
    all_words = [w for ws in sample_words for w in ws]
    nlls = [x for t in traces for x in t.nlls]
    entropies = [x for t in traces for x in t.entropies]

    def over_scored(value: float) -> float:
        return value if sample_words else math.nan

    return TemperatureRow(
        temperature=temperature,
        samples=[t.text for t in traces],
        mean_nll=float(np.mean(nlls)) if all(map(math.isfinite, nlls)) else math.inf,
        distinct_1=over_scored(distinct_n(sample_words, 1)),
        distinct_2=over_scored(distinct_n(sample_words, 2)),
        distinct_3=over_scored(distinct_n(sample_words, 3)),
        repeated_ngram_rate=over_scored(repeated_ngram_rate(sample_words, REPEAT_N)),
        known_word_share=over_scored(known_word_share(all_words, vocabulary)),
        mean_entropy=float(np.mean(entropies)),
        degenerate=reasons,
    )


def default_prompt(val_text: str, max_chars: int = 24) -> str:
    """The start of the first whole line of the validation text that has a word in it (cut at a word
    boundary): text the model has not trained on, in the corpus's own style. A bare newline invites the
    most common continuation of any text, which on some corpora is a run of blanks."""
    lines = val_text.split("\n")[1:]  # the split starts mid-line: the first piece is not a line start
    for line in lines:
        if line[:1].isspace() or not words(line):
            continue
        if len(line) <= max_chars:
            return line
        cut = line[:max_chars]
        if line[max_chars].isspace() or " " not in cut.strip():
            return cut.rstrip()
        return cut[: cut.rfind(" ")]
    raise MiniGPTError("the validation text has no line with a word in it: give --prompt")


def degenerate_cell(row: TemperatureRow) -> str:
    """``2/5: whitespace only`` (the reasons of the flagged samples, each once), or ``0/5``."""
    flagged = [reason for reason in row.degenerate if reason]
    reasons = ", ".join(dict.fromkeys(flagged))
    return f"{len(flagged)}/{len(row.samples)}" + (f": {reasons}" if reasons else "")


def ratio_cell(value: float, percent: bool = False) -> str:
    """A diversity figure, or "n/a" when every sample was degenerate."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.1%}" if percent else f"{value:.3f}"


def parse_temperatures(text: str) -> list[float]:
    """``"0.5,1.0,1.5"`` -> [0.5, 1.0, 1.5]; MiniGPTError on anything else."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MiniGPTError(f"temperatures must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise MiniGPTError("give at least one temperature")
    for value in values:
        SamplingParams(temperature=value)
    return values


def temperature_table_markdown(rows: list[TemperatureRow]) -> str:
    """NLL and entropy over every sample; distinct-n, repeats and known words over the scored samples."""
    header = ("| T | NLL at T=1 (nats/token) | entropy sampled (nats) | degenerate samples | scored samples "
              "| distinct-1 | distinct-2 | distinct-3 | repeated bigrams | known words |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    return header + "".join(
        f"| {r.temperature:g} | {r.mean_nll:.3f} | {r.mean_entropy:.3f} | {degenerate_cell(r)} "
        f"| {r.scored_samples} of {len(r.samples)} | {ratio_cell(r.distinct_1)} | {ratio_cell(r.distinct_2)} "
        f"| {ratio_cell(r.distinct_3)} | {ratio_cell(r.repeated_ngram_rate, True)} "
        f"| {ratio_cell(r.known_word_share, True)} |\n"
        for r in rows
    )


def sample_heading(row: TemperatureRow, index: int = 0) -> str:
    """``T = 0.5``, with the sample's degeneracy when it has one: a blank cell must not pass for text."""
    reason = row.degenerate[index] if index < len(row.degenerate) else ""
    return f"T = {row.temperature:g}" + (f" (degenerate: {reason})" if reason else "")


def shown_sample(text: str) -> str:
    """The sample as shown in a table or figure: blanks say what they are instead of showing nothing."""
    return text if text.strip() else f"[{len(text)} whitespace characters]"


def sample_table_markdown(rows: list[TemperatureRow], max_chars: int = 400) -> str:
    """The first sample of each temperature side by side; line breaks become <br>."""
    def cell(text: str) -> str:
        text = shown_sample(text).strip("\n")[:max_chars]
        return text.replace("|", "\\|").replace("\n", "<br>")

    header = "| " + " | ".join(sample_heading(r) for r in rows) + " |\n"
    return header + "|" + "---|" * len(rows) + "\n| " + " | ".join(cell(r.samples[0]) for r in rows) + " |\n"


def sample_columns(rows: list[TemperatureRow]) -> list[tuple[str, str]]:
    """(heading, text) of each temperature's first sample, for ``plots.save_sample_table``."""
    return [(sample_heading(r), shown_sample(r.samples[0])) for r in rows]


def temperature_charts(rows: list[TemperatureRow]):
    from minigpt_tui.plots import Chart, Series

    ts = [r.temperature for r in rows]
    nats = Chart("Coherence vs temperature", "temperature T", "nats per token", [
        Series("entropy of the sampling distribution", ts, [r.mean_entropy for r in rows]),
        Series("NLL of the samples under the model at T=1", ts, [r.mean_nll for r in rows]),
    ])
    scored = ", ".join(f"{r.scored_samples}/{len(r.samples)}" for r in rows)
    ratios = Chart(f"Diversity vs temperature (over non-degenerate samples: {scored})", "temperature T", "ratio", [
        Series("degenerate samples (share)", ts, [1 - r.scored_samples / len(r.samples) for r in rows]),
        Series("distinct-1 (words)", ts, [r.distinct_1 for r in rows]),
        Series("distinct-2", ts, [r.distinct_2 for r in rows]),
        Series("repeated word bigrams", ts, [r.repeated_ngram_rate for r in rows]),
        Series("known-word share", ts, [r.known_word_share for r in rows]),
    ])
    return {"nats": nats, "diversity": ratios}


def write_temperature_report(rows: list[TemperatureRow], out: Path, meta: dict) -> list[Path]:
    """``temperature.json``, ``temperature.md`` (table + samples), sample and metric charts in ``out``."""
    from minigpt_tui.plots import save_chart, save_sample_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "temperature.json", out / "temperature.md"
    atomic_write_text(json_path, json.dumps({**meta, "rows": [r.to_dict() for r in rows]}, indent=1))
    atomic_write_text(md_path, f"## Temperature ablation\n\nPrompt: {json.dumps(meta.get('prompt', ''))}\n\n"
                      + temperature_table_markdown(rows)
                      + "\n## Samples (first of each temperature)\n\n" + sample_table_markdown(rows))
    samples_png = save_sample_table(sample_columns(rows), out / "temperature-samples.png")
    paths = [json_path, md_path, samples_png]
    for suffix, chart in temperature_charts(rows).items():
        paths += save_chart(chart, out, f"temperature-{suffix}")
    return paths

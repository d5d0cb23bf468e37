"""The write-up of ``minigpt report``: Markdown sections over the evidence ``report.gather`` measured, and the
PNG figures they link. Every number sits next to the command that reproduces it; the journal's three
questions come with the run's own evidence and an empty space for the learner's answer.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import tempfile
from pathlib import Path

from minigpt_tui.experiments.report import TEMPERATURES, ReportOptions, RunEvidence
from minigpt_tui.experiments.reports import exposure_chart
from minigpt_tui.experiments.temperature import (
    sample_columns,
    sample_table_markdown,
    temperature_charts,
    temperature_table_markdown,
)
from minigpt_tui.inspection.figures import head_roles_figure, save_figure
from minigpt_tui.plots import Chart, RunCurves, Series, run_charts, save_png, save_sample_table
from minigpt_tui.storage import atomic_write_text
from minigpt_tui.training.data import split_text
from minigpt_tui.training.datasets import dataset_of_source

ANSWER_SPACE = "**Your answer:**\n\n\n\n"


def q(text: str) -> str:
    """A shell word, quoted when it needs to be (for the commands printed in the report)."""
    return shlex.quote(text)


def report_command(labels: list[str], options: ReportOptions, out: str | None = None) -> str:
    parts = ["minigpt report", *map(q, labels), f"--samples {options.samples}", f"--length {options.length}",
             f"--seed {options.seed}"]
    if options.prompt is not None:
        parts.append(f"--prompt {q(options.prompt)}")
    if out is not None:
        parts.append(f"--out {q(out)}")
    return " ".join(parts)


def corpus_flag(e: RunEvidence) -> str:
    dataset = dataset_of_source(e.run.data_source)
    return f"--dataset {dataset}" if dataset else f"--data {q(e.run.data_source)}"


def code(text: str) -> str:
    return f"`{text}`"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


class Figures:
    """The PNGs a document links, written into a staging folder (moved into the report folder later)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.paths: list[Path] = []

    def chart(self, chart: Chart, name: str) -> str:
        self.paths.append(save_png(chart, self.folder / f"{name}.png"))
        return f"![{chart.title}]({name}.png)"

    def add(self, path: Path, alt: str) -> str:
        self.paths.append(path)
        return f"![{alt}]({path.name})"


# ---- one run


def trained_section(e: RunEvidence) -> str:
    run, c = e.run, e.run.config
    m, o = c.model, c.optim
    train_chars = len(split_text(e.corpus.text)[0])
    optimizer = (f"{o.optimizer}: learning rate {c.learning_rate:g} to {c.min_lr:g} (cosine over "
                 f"{c.decay_iters} steps, warmup {c.warmup_iters}), weight decay {o.weight_decay:g}, betas "
                 f"{o.beta1:g}/{o.beta2:g}, gradient clip {o.grad_clip:g}")
    if o.optimizer == "muon":
        optimizer += f", Muon on hidden matrices at {o.muon_lr_scale:g}x the rate"
    world = f" x {run.world_size} processes" if run.world_size > 1 else ""
    rows = [
        ["corpus", f"{e.corpus.source}"],
        ["size", f"{len(e.corpus.text):,} characters ({len(e.corpus.text.encode('utf-8')):,} bytes): "
                 f"{train_chars:,} train, {len(e.corpus.text) - train_chars:,} validation"],
        ["sha256", code(run.data_sha256 or "unknown")],
        ["vocabulary", f"{run.tokenizer.kind} tokenizer, {run.tokenizer.vocab_size} tokens, "
                       f"{run.tokens_per_char:.3f} tokens per character"],
        ["model", f"{m.n_layer} layers, {m.n_head} heads, n_embd {m.n_embd}, context {m.block_size} tokens, "
                  f"{m.pos_encoding} positions, {e.parameters / 1e6:.2f}M parameters"],
        ["optimizer", optimizer],
        ["steps", f"{e.state.step} of {c.max_iters}; batch {c.batch_size} x accumulation {c.grad_accum_steps}"
                  f"{world} x context {m.block_size} = {c.tokens_per_step * run.world_size:,} tokens per step, "
                  f"{e.tokens_seen:,} tokens ({e.chars_seen:,.0f} characters) seen"],
        ["wall time", f"{number(e.wall_s, 0)} s from the first to the last metrics record "
                      f"(median {number(e.tokens_per_s, 0)} tokens/s)"],
        ["backend, device", f"trained with {c.backend} (device {c.device}); scored here with {e.scored_on}"],
        ["checkpoint scored", f"{e.checkpoint} (step {e.state.step})"],
    ]
    return ("## What was trained\n\n" + table(["", ""], rows)
            + f"\nFrom {code(f'{e.label}/config.json')} and {code(f'{e.label}/metrics.jsonl')}.\n")


def scores_section(e: RunEvidence) -> str:
    s, estimate = e.score, e.trainer_estimate
    c = e.run.config

    def est(value: float | None, digits: int) -> str:
        return number(value, digits) if value is not None else "no eval at this step"

    rows = [
        ["loss (nats/token)", number(s.loss), est(estimate and estimate.val_loss, 4)],
        ["perplexity (per token)", number(s.perplexity, 3), est(estimate and estimate.val_perplexity, 3)],
        ["**bits/char** (the headline)", f"**{number(s.bits_per_char)}**",
         est(estimate and estimate.val_bits_per_char, 4)],
    ]
    return ("## Scores\n\n"
            + table(["", f"whole validation split ({s.tokens:,} tokens)",
                     f"trainer's estimate at step {e.state.step}"], rows)
            + f"\nThe whole-split score counts every validation token once, in non-overlapping windows of "
              f"{c.model.block_size} tokens; the trainer's estimate averages {c.eval_iters} random batches of "
              f"{c.batch_size} windows, a sample of the split, so it differs by sampling noise (and for the best "
              f"checkpoint it leans low, since that checkpoint was kept for having the lowest estimate).\n\n"
              f"Reproduce: {code(f'minigpt eval {q(e.label)}')} (whole split); the estimate is the eval record of "
              f"step {e.state.step} in {code(f'{e.label}/metrics.jsonl')}.\n")


def curves_section(e: RunEvidence, figures: Figures) -> str:
    curves = run_charts([RunCurves(e.run.path.name, e.evals, e.steps)])
    links = "\n\n".join(figures.chart(chart, suffix) for suffix, chart in curves.items())
    rows = [[str(v.step), number(v.train_loss), number(v.val_loss), number(v.val_perplexity, 3),
             number(v.val_bits_per_char), number(v.train_bits_per_char), "yes" if v.is_best else ""]
            for v in e.evals]
    return (f"## Training curves\n\n{links}\n\nReproduce: {code(f'minigpt export-plots {q(e.label)}')}.\n\n"
            "### Every evaluation (the trainer's estimates)\n\n"
            + table(["step", "train loss", "val loss", "val perplexity", "val bits/char", "train bits/char",
                     "best so far"], rows)
            + f"\nThe eval records of {code(f'{e.label}/metrics.jsonl')}.\n")


def temperature_command(e: RunEvidence, options: ReportOptions) -> str:
    temperatures = ",".join(f"{t:g}" for t in TEMPERATURES)
    return (f"minigpt ablate temperature {q(e.label)} --temperatures {temperatures} --samples {options.samples} "
            f"--length {options.length} --seed {options.seed} --prompt {q(e.prompt)}")


def temperature_section(e: RunEvidence, options: ReportOptions, figures: Figures) -> str:
    rows = e.temperature
    where = "given with --prompt" if options.prompt is not None else "the start of a line of the validation text"
    charts = temperature_charts(rows)
    samples_png = save_sample_table(sample_columns(rows), figures.folder / "temperature-samples.png")
    return (f"## Temperature {' / '.join(f'{t:.1f}' for t in TEMPERATURES)}\n\n"
            f"Prompt: {code(json.dumps(e.prompt))} ({where}). {options.samples} samples of {options.length} tokens "
            f"per temperature; sample i uses seed {options.seed} + i at every temperature, so rows differ only in "
            "T.\n\n" + temperature_table_markdown(rows)
            + "\nNLL at T=1: how surprising the samples are to the model that wrote them (lower: more coherent "
              "to it). Entropy: of the distribution each token was drawn from. A degenerate sample (empty, "
              "whitespace only, or one repeated unit) is counted in NLL and entropy but left out of distinct-n, "
              "repeated bigrams and known words, which are computed over the scored samples only.\n\n"
            + figures.chart(charts["nats"], "temperature-nats") + "\n\n"
            + figures.chart(charts["diversity"], "temperature-diversity") + "\n\n"
            + "### Samples side by side (the first of each temperature)\n\n" + sample_table_markdown(rows) + "\n"
            + figures.add(samples_png, "first sample of each temperature") + "\n\n"
            + f"Reproduce: {code(temperature_command(e, options))}.\n")


def exposure_command(e: RunEvidence, options: ReportOptions) -> str:
    return (f"minigpt ablate exposure {q(e.label)} --samples {options.samples} --length {options.length} "
            f"--seed {options.seed}")


def exposure_section(e: RunEvidence, options: ReportOptions, figures: Figures) -> str:
    x = e.exposure
    rows = [[span, number(value)] for span, value in x["free_running_by_bucket"].items()]
    return ("## Exposure bias: teacher forcing vs free running\n\n"
            f"Teacher-forced (the true prefix, what training optimises): {number(x['teacher_forced_mean'])} "
            f"nats/token on average over the context. Free-running (the model's own samples at T=1, "
            f"{options.samples} runs of {options.length} tokens, each started from one validation token), by "
            "position in the sample:\n\n" + table(["positions", "NLL (nats/token)"], rows) + "\n"
            + figures.chart(exposure_chart(x), "exposure") + "\n\n"
            + f"Reproduce: {code(exposure_command(e, options))}.\n")


def heads_command(e: RunEvidence, windows: int) -> str:
    return f"minigpt heads {q(e.label)} --windows {windows} --weights {e.checkpoint}"


def heads_section(e: RunEvidence, figures: Figures) -> str:
    roles = e.heads
    rows = []
    for k, (kind, label) in enumerate(zip(roles.kinds, roles.labels, strict=True)):
        layer, head, mass = roles.strongest(kind)
        rows.append([label, f"L{layer} H{head}", number(mass, 3), number(float(roles.chance[k]), 3),
                     str(int(roles.queries[k]))])
    path = save_figure(head_roles_figure(roles, f"{roles.windows} validation windows of {roles.window_tokens}"),
                       figures.folder / "heads.png")
    speaker = ("" if "speaker name" in roles.kinds
               else " The corpus has no \"NAME:\" speaker lines, so no speaker target is measured.")
    return ("## What the attention heads look at\n\n"
            f"Mean attention mass on each target, over {roles.windows} validation windows of "
            f"{roles.window_tokens} tokens; chance is uniform attention over the same keys.{speaker}\n\n"
            + table(["target", "strongest head", "its mass", "chance", "queries"], rows) + "\n"
            + figures.add(path, "attention mass per head and target") + "\n\n"
            + f"Reproduce: {code(heads_command(e, roles.windows))}.\n")


# ---- several runs


def comparison_section(runs: list[RunEvidence], figures: Figures) -> str:
    curves = run_charts([RunCurves(Path(e.label).name, e.evals, e.steps) for e in runs])
    links = "\n\n".join(figures.chart(chart, f"compare-{suffix}") for suffix, chart in curves.items())
    rows = [[code(e.label), f"{e.run.tokenizer.kind} ({e.run.tokenizer.vocab_size})",
             str(e.run.config.model.block_size), str(e.state.step), f"{e.chars_seen:,.0f}", number(e.score.loss),
             number(e.score.bits_per_char), number(e.wall_s, 0), number(e.tokens_per_s, 0)] for e in runs]
    parts = ["## Comparison of the runs\n\n", "All trained on the same corpus, each scored on the whole validation "
             "split (bits/char compares across tokenizers; loss per token does not).\n\n",
             table(["run", "tokenizer (vocabulary)", "context", "steps", "characters seen", "val loss/token",
                    "val bits/char", "wall s", "tokens/s"], rows), "\n", links, "\n\n"]
    labels = [Path(e.label).name for e in runs]
    if len({e.run.tokenizer.kind for e in runs}) > 1:
        chart = Chart("Bits/char against characters seen", "characters seen", "val bits/char (whole split)",
                      [Series(f"{label} ({e.run.tokenizer.kind})", [e.chars_seen], [e.score.bits_per_char])
                       for label, e in zip(labels, runs, strict=True)])
        parts += ["### Characters vs subwords\n\n", figures.chart(chart, "compare-tokenizers"), "\n\n"]
    if len({e.run.config.model.block_size for e in runs}) > 1:
        ordered = sorted(runs, key=lambda e: e.run.config.model.block_size)
        blocks = [e.run.config.model.block_size for e in ordered]
        bpc = Chart("Bits/char against context", "context (tokens)", "val bits/char (whole split)",
                    [Series("val bits/char", blocks, [e.score.bits_per_char for e in ordered])], logx=True)
        cost = Chart("Cost against context", "context (tokens)", "training tokens/s (median)",
                     [Series("tokens/s", blocks, [e.tokens_per_s for e in ordered])], logx=True)
        parts += ["### Context sizes\n\n", figures.chart(bpc, "compare-context"), "\n\n",
                  figures.chart(cost, "compare-context-cost"), "\n\n"]
    commands = "; ".join(code(f"minigpt eval {q(e.label)}") for e in runs)
    overlay = code("minigpt export-plots " + " ".join(q(e.label) for e in runs))
    parts.append(f"Reproduce: {commands}; the overlay: {overlay}.\n")
    return "".join(parts)


# ---- the journal's questions


def questions_section(e: RunEvidence, runs: list[RunEvidence], options: ReportOptions) -> str:
    x, rows, roles = e.exposure, e.temperature, e.heads
    buckets = list(x["free_running_by_bucket"].items())
    last = e.evals[-1] if e.evals else None
    gap = (f" At the last evaluation the train loss was {number(last.train_loss)} and the val loss "
           f"{number(last.val_loss)}." if last else "")
    first_q = (
        "### 1. Why does teacher forcing work despite exposure bias?\n\n"
        f"Evidence: teacher-forced NLL {number(x['teacher_forced_mean'])} nats/token; free-running NLL "
        f"{number(buckets[0][1])} over positions {buckets[0][0]} and {number(buckets[-1][1])} over positions "
        f"{buckets[-1][0]} ([figure](exposure.png)).{gap} See more: {code(exposure_command(e, options))} with a "
        f"larger --length, and {code(f'minigpt inspect {q(e.label)} --text {q(e.prompt)}')} to read the surprisal "
        "of each token.\n\n" + ANSWER_SPACE)
    entropies = ", ".join(f"T={r.temperature:g}: {number(r.mean_entropy, 3)}" for r in rows)
    nlls = ", ".join(f"T={r.temperature:g}: {number(r.mean_nll, 3)}" for r in rows)
    flagged = ", ".join(f"T={r.temperature:g}: {len(r.samples) - r.scored_samples}/{len(r.samples)}" for r in rows)
    sample_cmd = f"minigpt sample {q(e.label)} --prompt {q(e.prompt)} --temperature 0.5 --seed 0"
    second_q = (
        "### 2. How does temperature reshape the distribution?\n\n"
        f"Evidence: entropy of the sampling distribution (nats) {entropies}; NLL of the samples at T=1 {nlls}; "
        f"degenerate samples {flagged} ([figure](temperature-nats.png), samples above). See more: "
        f"{code(f'minigpt inspect {q(e.label)} --text {q(e.prompt)} --png next-token.png')} draws the next-token "
        f"distribution at T=0.5, 1 and 1.5; {code(sample_cmd)}."
        "\n\n" + ANSWER_SPACE)
    teacher = x["teacher_forced_by_position"]
    block = e.run.config.model.block_size
    quarter = teacher[-max(1, len(teacher) // 4):]
    line_head = ""
    if "line start" in roles.kinds:
        layer, head, mass = roles.strongest("line start")
        line_head = (f" The head most on the line start is L{layer} H{head} (mass {number(mass, 3)}, chance "
                     f"{number(float(roles.chance[roles.kinds.index('line start')]), 3)}).")
    others = ""
    if len({r.run.config.model.block_size for r in runs}) > 1:
        others = " Across the runs compared above: " + ", ".join(
            f"context {r.run.config.model.block_size}: {number(r.score.bits_per_char)} bits/char at "
            f"{number(r.tokens_per_s, 0)} tokens/s" for r in runs) + "."
    context_cmd = (f"minigpt ablate context {corpus_flag(e)} --block-sizes 16,32,64,128 --out runs/context")
    third_q = (
        "### 3. What does a smaller or larger context trade?\n\n"
        f"Evidence: this run's context is {block} tokens ({block / e.run.tokens_per_char:.0f} characters). "
        f"Teacher-forced NLL at position 0 (one token of context) {number(teacher[0])}, over the last quarter of "
        f"the window {number(sum(quarter) / len(quarter))} nats/token ([figure](exposure.png)).{line_head}{others} "
        f"See more: {code(context_cmd)} trains one run per context at the same tokens seen (bits/char, tokens/s, "
        f"memory); {code(heads_command(e, roles.windows))}.\n\n" + ANSWER_SPACE)
    return "## Questions for your learning journal\n\n" + first_q + second_q + third_q


def report_document(runs: list[RunEvidence], staging: Path, options: ReportOptions,
                    command: str) -> tuple[str, list[Path]]:
    """The Markdown text and the figures (written into ``staging``) of the report over ``runs``."""
    figures = Figures(staging)
    first = runs[0]
    title = first.label if len(runs) == 1 else ", ".join(e.label for e in runs)
    intro = (f"# Report: {title}\n\nWritten by {code(command)}. Every number comes with the command that "
             "reproduces it. The computations are cached in `cache/`, keyed by the checkpoint's sha256 and the "
             "options: the same command again reuses them.\n\n")
    if len(runs) > 1:
        intro += (f"The sections up to the comparison describe the first run, {code(first.label)}; the "
                  "comparison scores every run.\n\n")
    parts = [intro, trained_section(first), "\n", scores_section(first), "\n", curves_section(first, figures), "\n",
             temperature_section(first, options, figures), "\n", exposure_section(first, options, figures), "\n",
             heads_section(first, figures), "\n"]
    if len(runs) > 1:
        parts += [comparison_section(runs, figures), "\n"]
    parts.append(questions_section(first, runs, options))
    return "".join(parts), figures.paths


def write_report(runs: list[RunEvidence], out: Path, options: ReportOptions, command: str) -> Path:
    """Figures and ``report.md`` into ``out``: built in a staging folder, then moved in, report.md last, so
    that a failure leaves the previous report (or none), never half of a new one."""
    out = Path(out)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        text, figures = report_document(runs, staging, options, command)
        for figure in figures:
            figure.replace(out / figure.name)
        atomic_write_text(out / "report.md", text)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "report.md"

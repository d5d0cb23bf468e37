"""The speedrun's experiments: a sweep over a grid of config fields, and the record ladder, which adds
the speedrun's changes to nanoGPT's baby config one at a time. Both are lists of variants for
``experiments.run_variants`` (each a normal run folder, scored on the whole validation split); this
module builds the lists and summarises the results per row over seeds.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.variants import VariantResult, check_variant_count
from minigpt_tui.storage import atomic_write_text
from minigpt_tui.training.config import PRESETS, TrainConfig, field_names, field_type, preset
from minigpt_tui.training.runs import METRICS_FILE, read_metrics

SEED_SUFFIX = "-seed"
DROPPED_SUFFIX = "-dropped"  # a ladder rung the top preset does not keep
TARGET_VAL_LOSS = 1.88  # nanoGPT's baby run ends near here on tiny Shakespeare (issue 11)

@dataclass(frozen=True)
class Rung:
    """One change of the record ladder. ``fields`` are read from the top preset; a rung whose fields the top
    preset leaves at the base config's values was tried and dropped: it runs with ``tried`` on top of the
    rungs above it, and the rungs below do not keep it."""

    name: str
    fields: tuple[str, ...]
    tried: dict = field(default_factory=dict)


# "budget" is the speedrun's step budget and schedule with nothing else changed. The kept rungs, in order,
# end at the top preset itself (a test checks it); the dropped ones show what each change cost or gave.
LADDER: list[Rung] = [
    Rung("baseline", ()),
    Rung("budget", ("max_iters", "warmup_iters", "learning_rate", "min_lr", "batch_size", "eval_interval",
                    "eval_iters")),
    Rung("muon", ("optimizer", "muon_lr_scale")),
    Rung("rope", ("pos_encoding",)),
    Rung("qk_norm", ("qk_norm",)),
    Rung("relu2", ("activation",)),
    Rung("zero_init", ("zero_init_proj",), {"zero_init_proj": True}),
    Rung("polar_express", ("muon_coefficients", "muon_ns_steps"),
         {"muon_coefficients": "polar_express", "muon_ns_steps": 3}),
    Rung("muon_bf16", ("muon_bf16",), {"muon_bf16": True}),
    Rung("momentum_warmup", ("muon_momentum_warmup",), {"muon_momentum_warmup": 100}),
    Rung("value_embed", ("value_embedding",), {"value_embedding": True}),
    Rung("softcap", ("logit_softcap",), {"logit_softcap": 30.0}),
    Rung("bigram", ("bigram_embedding",), {"bigram_embedding": True}),
    Rung("smear", ("smear_gate",), {"smear_gate": True}),
]


def rung(name: str) -> Rung:
    found = next((r for r in LADDER if r.name == name), None)
    if found is None:
        raise MiniGPTError(f"unknown ladder row {name!r}; rows: " + ", ".join(r.name for r in LADDER))
    return found


def value_label(value) -> str:
    """How a grid value appears in a variant's name (and so in its folder's)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_grid(text: str) -> dict[str, list]:
    """``"learning_rate=1e-3,2e-3 muon_lr_scale=5,10"`` -> {field: [values]}, typed like the config.

    Refused, before anything runs: a field given twice, an empty value, two values with one label (the
    variants would share a folder), and ``seed`` (seeds are ``--seeds``)."""
    grid: dict[str, list] = {}
    for part in text.split():
        name, sep, values = part.partition("=")
        if not sep or not values:
            raise MiniGPTError(f"grid entries look like field=v1,v2; got {part!r}")
        if name not in field_names():
            raise MiniGPTError(f"unknown config field {name!r} in the grid")
        if name == "seed":
            raise MiniGPTError("seed cannot be in the grid: give the seeds with --seeds")
        if name in grid:
            raise MiniGPTError(f"{name} is given twice in the grid; list all its values once: {name}=v1,v2")
        items = values.split(",")
        if not all(item.strip() for item in items):
            raise MiniGPTError(f"{name} has an empty value in the grid ({values!r})")
        kind = field_type(name)
        try:
            if kind is bool:
                grid[name] = [{"true": True, "false": False}[v.lower()] for v in items]
            else:
                grid[name] = [kind(v) for v in items]
        except (ValueError, KeyError, OverflowError):
            raise MiniGPTError(f"{name} takes {kind.__name__} values, got {values!r}") from None
        labels = [value_label(v) for v in grid[name]]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise MiniGPTError(f"{name}: the values {values!r} repeat {', '.join(repeated)}; give each value once")
    if not grid:
        raise MiniGPTError("the grid is empty")
    return grid


def with_seeds(variants: list[tuple[str, TrainConfig]], seeds: list[int]) -> list[tuple[str, TrainConfig]]:
    """Every variant once per seed (weights, batches and dropout all follow the seed)."""
    return [(f"{name}{SEED_SUFFIX}{seed}", config.replace(seed=seed)) for name, config in variants for seed in seeds]


def sweep_variants(base: TrainConfig, grid: dict[str, list], seeds: list[int]) -> list[tuple[str, TrainConfig]]:
    """The cartesian product of the grid over ``base``, named like ``learning_rate=0.002,max_iters=400``."""
    names = list(grid)
    check_variant_count(math.prod(len(grid[n]) for n in names) * len(seeds), "the grid")
    variants = []
    for values in itertools.product(*(grid[n] for n in names)):
        changes = dict(zip(names, values, strict=True))
        label = ",".join(f"{n}={value_label(v)}" for n, v in changes.items())
        variants.append((label, base.replace(**changes)))
    return with_seeds(variants, seeds)


def ladder_configs(top: str = "speedrun", base: TrainConfig | None = None) -> list[tuple[str, TrainConfig, bool]]:
    """The rungs from ``base`` (default: the baby preset) up to preset ``top``, as (name, config, kept): a
    kept rung takes its fields from ``top`` and stays for the rungs below; a dropped one adds its ``tried``
    values to the rungs above it only."""
    target, config, rungs = PRESETS[top], base or preset("baby"), []
    for step in LADDER:
        given = {f: target[f] for f in step.fields if f in target}
        if given or not step.tried:
            config = config.replace(**given)
            rungs.append((step.name, config, True))
        else:
            rungs.append((step.name, config.replace(**step.tried), False))
    return rungs


def ladder_variants(seeds: list[int], top: str = "speedrun", rows: list[str] | None = None,
                    overrides: dict | None = None, base: TrainConfig | None = None) -> list[tuple[str, TrainConfig]]:
    """The ladder from ``base`` (--preset and --config; default baby), once per seed; ``overrides`` (the
    config flags) apply to every rung, after the rung's own fields. A dropped rung is named ``N-name-dropped``."""
    rungs = [(name, f"{i}-{name}" + ("" if kept else DROPPED_SUFFIX), config)
             for i, (name, config, kept) in enumerate(ladder_configs(top, base))]
    if rows is not None:
        wanted = {rung(name).name for name in rows}
        rungs = [r for r in rungs if r[0] in wanted]
    variants = [(label, config.replace(**overrides) if overrides else config) for _, label, config in rungs]
    return with_seeds(variants, seeds)


def time_to_loss(run_dir: Path, target: float = TARGET_VAL_LOSS) -> float:
    """Seconds from the first evaluation (step 0) to the first whose val estimate is <= target; NaN if
    none is. The estimate is the run's own (eval_iters random batches), read from metrics.jsonl."""
    evals = read_metrics(Path(run_dir) / METRICS_FILE).evals
    if not evals:
        return math.nan
    start = evals[0].time
    return next((r.time - start for r in evals if r.val_loss <= target), math.nan)


@dataclass(frozen=True)
class RowSummary:
    name: str
    seeds: int
    max_iters: int
    tokens_seen: int
    val_loss_mean: float  # whole val split, best checkpoint, over seeds
    val_loss_sd: float  # sample standard deviation over seeds (NaN for one seed)
    wall_s: float  # median over seeds
    tokens_per_s: float  # median over seeds
    time_to_target_s: float  # median over seeds; NaN if any seed never got there


def row_name(variant: str) -> str:
    return variant.rsplit(SEED_SUFFIX, 1)[0]


def summarise(results: list[VariantResult], target: float = TARGET_VAL_LOSS) -> list[RowSummary]:
    rows: dict[str, list[VariantResult]] = {}
    for r in results:
        rows.setdefault(row_name(r.name), []).append(r)
    summaries = []
    for name, group in rows.items():
        losses = [r.val_loss for r in group]
        times = [time_to_loss(Path(r.run_dir), target) for r in group]
        summaries.append(RowSummary(
            name=name, seeds=len(group), max_iters=group[0].max_iters, tokens_seen=group[0].tokens_seen,
            val_loss_mean=statistics.fmean(losses),
            val_loss_sd=statistics.stdev(losses) if len(losses) > 1 else math.nan,
            wall_s=statistics.median(r.wall_s for r in group),
            tokens_per_s=statistics.median(r.train_tokens_per_s for r in group),
            time_to_target_s=math.nan if any(math.isnan(t) for t in times) else statistics.median(times),
        ))
    return summaries


def summary_markdown(summaries: list[RowSummary], target: float = TARGET_VAL_LOSS) -> str:
    columns = ("row", "seeds", "steps", "tokens seen", "val loss (whole split)", "wall s", "train tok/s",
               f"s to val {target}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in summaries:
        sd = "" if math.isnan(s.val_loss_sd) else f" ± {s.val_loss_sd:.3f}"
        reached = "not reached" if math.isnan(s.time_to_target_s) else f"{s.time_to_target_s:.0f}"
        lines.append(f"| {s.name} | {s.seeds} | {s.max_iters} | {s.tokens_seen:,} | {s.val_loss_mean:.3f}{sd} | "
                     f"{s.wall_s:.0f} | {s.tokens_per_s:,.0f} | {reached} |")
    return "\n".join(lines) + "\n"


def write_summary(results: list[VariantResult], out: Path) -> str:
    """Rows averaged over seeds (mean ± sd of the whole-split val loss, median times), written to
    ``out/summary.md``; the table."""
    table = summary_markdown(summarise(results))
    atomic_write_text(Path(out) / "summary.md", table)
    return table

"""Run configuration: ``TrainConfig`` nested over the backend's ``ModelConfig`` and ``OptimConfig``.

The sections are the backend's own dataclasses, not copies: a field added to ``ModelConfig`` or
``OptimConfig`` is at once a config field, a TOML key, a ``--flag`` and a key of config.json. Flags
and TOML files stay flat (``--n-layer``); ``FLAT_FIELDS`` is the one map from a flat name to its
place in the nesting. Validation lives with each dataclass (``__post_init__``) and runs whenever a
config is built; a failure is one MiniGPTError naming the field.

``model.vocab_size`` is the BPE vocabulary asked for until a tokenizer exists; a run's config holds
the tokenizer's actual size (``with_vocab_size``), which is what the backend is built with.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from backends.base import FLOAT32_MAX, ModelConfig, OptimConfig
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import read_input_bytes
from minigpt_tui.typed import checked_value, from_fields, scalar_type

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOKENIZERS = ("char", "bpe")
DTYPES = ("float32", "float64")
MIN_BPE_VOCAB = 256  # byte-level BPE: every byte is a token before any merge
MAX_BPE_VOCAB = 2**16  # GPT-2 has 50257; beyond this the merges outnumber what a small corpus can support
MAX_BIGRAM_VOCAB = 256  # the bigram table has V * V rows: 65 characters give 4,225, a BPE vocabulary millions
MAX_SEED = 2**63 - 1  # numpy and torch seeds are unsigned 64-bit; a negative seed is folded into this range


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=512))
    # beta2 0.99 rather than AdamW's 0.95: nanoGPT's choice for small models and few tokens per step
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(beta2=0.99))
    # data
    tokenizer: str = "char"
    # optimisation
    batch_size: int = 12
    grad_accum_steps: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: decay over max_iters
    # evaluation and logging
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    snapshots: bool = True  # the weights at every eval, for time-lapse inspection; off in the larger presets
    # execution
    seed: int = 1337
    backend: str = "torch"
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "max_iters", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr"):
            value = getattr(self, name)
            if not 0 <= value <= FLOAT32_MAX:
                raise ValueError(f"{name} must be a finite number >= 0 (at most {FLOAT32_MAX:.3g}), got {value}")
        for name in ("warmup_iters", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate * self.optim.muon_lr_scale > FLOAT32_MAX:  # Muon's rate is lr x scale, in float32
            raise ValueError(f"muon_lr_scale x learning_rate must be at most {FLOAT32_MAX:.3g}, got "
                             f"{self.optim.muon_lr_scale:g} x {self.learning_rate:g}")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.tokenizer == "bpe" and not MIN_BPE_VOCAB <= self.model.vocab_size <= MAX_BPE_VOCAB:
            raise ValueError(
                f"vocab_size must be in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB}] for BPE, got {self.model.vocab_size}"
            )
        if self.model.bigram_embedding and self.tokenizer == "bpe":
            raise ValueError(f"bigram_embedding needs the char tokenizer: its table has vocab_size ** 2 rows "
                             f"({self.model.vocab_size ** 2:,} for this BPE vocabulary)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not -MAX_SEED <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [-2**63 + 1, 2**63 - 1], got {self.seed}")

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.max_iters

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.block_size * self.grad_accum_steps

    @property
    def rng_seed(self) -> int:
        """The seed as the generators take it: any integer, negative ones folded into [0, 2**64)."""
        return self.seed % 2**64

    def with_vocab_size(self, vocab_size: int) -> TrainConfig:
        """This config for a tokenizer of ``vocab_size`` tokens (what a run's config records)."""
        if self.model.bigram_embedding and vocab_size > MAX_BIGRAM_VOCAB:
            raise MiniGPTError(f"bigram_embedding needs at most {MAX_BIGRAM_VOCAB} distinct characters (its table has "
                               f"vocab_size ** 2 rows); this text has {vocab_size}")
        return self.replace(vocab_size=vocab_size)

    def get(self, name: str):
        """A field by its flat name (``n_layer``, ``beta2``, ``max_iters``)."""
        section, attr = FLAT_FIELDS[name]
        return getattr(getattr(self, section) if section else self, attr)

    def to_dict(self) -> dict:
        """The nested form, as config.json stores it."""
        return dataclasses.asdict(self)

    def to_flat(self) -> dict:
        """The flat form, as flags and TOML files give it."""
        return {name: self.get(name) for name in FLAT_FIELDS}

    def replace(self, **changes) -> TrainConfig:
        """A copy with fields changed by flat name, validated; MiniGPTError names a bad field."""
        values = self.to_flat()
        for name, value in changes.items():
            if name not in FLAT_FIELDS:
                raise MiniGPTError(f"unknown config field {name!r}")
            values[name] = checked_value(field_type(name), value, name)
        return from_flat(values)

    @classmethod
    def from_dict(cls, data, where: str = "config") -> TrainConfig:
        """The nested form back, every field checked (missing ones take their defaults)."""
        if not isinstance(data, dict):
            raise MiniGPTError(f"{where} must be a JSON object")
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = data.get(name, {})
            if name == "model" and isinstance(values, dict) and "vocab_size" not in values:
                values = {**values, "vocab_size": 512}
            sections[name] = from_fields(section_cls, values, f"{where}: {name}")
        top = {k: v for k, v in data.items() if k not in SECTIONS}
        base = from_fields(cls, top, where)
        return dataclasses.replace(base, **sections)


SECTIONS: dict[str, type] = {"model": ModelConfig, "optim": OptimConfig}


def _flat_fields() -> dict[str, tuple[str | None, str]]:
    table: dict[str, tuple[str | None, str]] = {}
    for f in fields(TrainConfig):
        if f.name in SECTIONS:
            for sub in fields(SECTIONS[f.name]):
                assert sub.name not in table, f"{sub.name} is in two config sections"
                table[sub.name] = (f.name, sub.name)
        else:
            assert f.name not in table, f"{f.name} is both a section field and a top-level field"
            table[f.name] = (None, f.name)
    return table


# flat name -> (section or None, field): the one place where flags meet the nesting
FLAT_FIELDS = _flat_fields()


def field_names() -> list[str]:
    return list(FLAT_FIELDS)


def field_type(name: str) -> type:
    section, attr = FLAT_FIELDS[name]
    return scalar_type(SECTIONS[section] if section else TrainConfig, attr) or str


def from_flat(values: dict) -> TrainConfig:
    """A validated config from a complete flat dict of (already type-checked) values."""
    nested: dict = {name: {} for name in SECTIONS}
    for name, value in values.items():
        section, attr = FLAT_FIELDS[name]
        (nested[section] if section else nested)[attr] = value
    try:
        sections = {name: SECTIONS[name](**nested.pop(name)) for name in SECTIONS}
        return TrainConfig(**nested, **sections)
    except ValueError as exc:
        raise MiniGPTError(str(exc)) from None


FIELD_HELP = {
    "n_layer": "Transformer blocks.",
    "n_head": "Attention heads per block (must divide n_embd).",
    "n_embd": "Width of the residual stream.",
    "block_size": "Context length in tokens.",
    "dropout": "Dropout probability in [0, 1).",
    "bias": "Biases in Linear and LayerNorm layers.",
    "pos_encoding": "Positional encoding: learned, sinusoidal, or rope (rotary, inside attention).",
    "tie_weights": "Share the token embedding with the output projection.",
    "qk_norm": "RMS-normalise each head's queries and keys before attention.",
    "activation": "MLP activation: gelu_tanh (GPT-2), gelu (exact) or relu2 (ReLU squared).",
    "zero_init_proj": "Start the attention and MLP output projections at zero.",
    "value_embedding": "Value embeddings (modded-nanogpt): a second token table added, times a learned per-layer "
    "gain, to every layer's attention values.",
    "bigram_embedding": "Bigram embedding (modded-nanogpt): a table with a row per (previous, current) character "
    "pair, added to the embedding. Char tokenizer only, at most 256 characters.",
    "smear_gate": "Smear gate (modded-nanogpt): each position's embedding adds the previous one's, times a learned "
    "scalar and a sigmoid gate read from its own first 12 channels.",
    "logit_softcap": "Soft-cap the logits at this value: cap * tanh(logits / cap) (0: off; modded-nanogpt uses 15-30).",
    "tokenizer": "char, or bpe (byte-level BPE trained on the train split).",
    "vocab_size": "BPE vocabulary size (a character vocabulary is whatever the text holds).",
    "batch_size": "Sequences per micro-batch (per process under torchrun).",
    "grad_accum_steps": "Micro-batches accumulated per optimizer step.",
    "max_iters": "Optimizer steps in total.",
    "learning_rate": "Peak learning rate (after warmup).",
    "min_lr": "Learning rate at the end of the cosine decay.",
    "warmup_iters": "Steps of linear warmup.",
    "lr_decay_iters": "Steps of cosine decay (0: max_iters).",
    "weight_decay": "AdamW weight decay, matrices only.",
    "beta1": "AdamW beta1.",
    "beta2": "AdamW beta2.",
    "eps": "AdamW epsilon.",
    "grad_clip": "Clip the global gradient norm to this (0: off).",
    "optimizer": "adamw, or muon (Muon for the block matrices, AdamW for the rest).",
    "muon_lr_scale": "Muon's learning rate as a multiple of learning_rate (same schedule).",
    "muon_momentum": "Muon's (Nesterov) momentum.",
    "muon_ns_steps": "Newton-Schulz iterations per Muon update (polar_express: at most 5, its first k tuples).",
    "muon_coefficients": "Muon's Newton-Schulz polynomial: jordan (one quintic for every step, torch.optim.Muon's) "
    "or polar_express (a tuned quintic per step, Amsel et al. 2025, as in modded-nanogpt).",
    "muon_momentum_warmup": "Steps over which Muon's momentum rises linearly from muon_momentum_start to "
    "muon_momentum (0: off).",
    "muon_momentum_start": "Muon's momentum at the first step when muon_momentum_warmup is on.",
    "muon_bf16": "Run Muon's Newton-Schulz in bfloat16 on the CPU too (faster where the CPU has bfloat16 "
    "matmuls; GPUs always do). The NumPy backend rounds to bfloat16 the same way.",
    "eval_interval": "Evaluate and checkpoint every N steps.",
    "eval_iters": "Batches per evaluation estimate.",
    "log_interval": "Log a step record every N steps.",
    "snapshots": "Keep the weights at every eval in RUN/snapshots/ (for timelapse and --step). Disk: 4 bytes per "
    "parameter per eval, about 3.2 MB each for baby (29 MB for its 9 evals). On up to baby size, off in shakespeare.",
    "seed": "Seed of the initial weights, batches and dropout (any integer).",
    "backend": "Model backend: torch, numpy, or one from an entry point.",
    "device": "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.",
    "dtype": "float32, or float64 (slow; for exact checks).",
    "compile": "torch.compile the training forward (PyTorch backend). Helps on GPUs; on a CPU at the baby "
    "size it measured slower than eager (issue 11), so leave it off there.",
}


def field_help(name: str) -> str:
    """Help of a flat field; a field new to a section gets its section and name until it is described here."""
    section, attr = FLAT_FIELDS[name]
    return FIELD_HELP.get(name, f"{SECTIONS[section].__name__}.{attr}" if section else name)


# the baby model trained for speed (issues 11 and 22; chosen with `minigpt ablate sweep` and the ladder, see
# experiments_log.md): Muon on the block matrices with Polar Express's first three Newton-Schulz steps and a
# momentum warmup, rotary positions, QK-norm, ReLU^2, the bigram table, and a step budget an eighth of baby's.
# Tried and dropped: zero-initialised projections, value embeddings, the soft-cap, the smear gate, and
# Newton-Schulz in bfloat16 (much slower on a CPU without bfloat16 matmuls)
_SPEEDRUN = dict(
    pos_encoding="rope",
    qk_norm=True,
    activation="relu2",
    bigram_embedding=True,
    optimizer="muon",
    muon_lr_scale=5.0,
    muon_coefficients="polar_express",
    muon_ns_steps=3,
    muon_momentum_warmup=100,
    learning_rate=2e-3,
    min_lr=2e-4,
    max_iters=250,
    warmup_iters=20,
    eval_interval=250,  # one evaluation, at the end: each costs 40 forward passes
)

PRESETS: dict[str, dict] = {
    # seconds on a laptop CPU: for tests and demos
    "tiny": dict(
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=32,
        batch_size=8,
        max_iters=200,
        learning_rate=3e-3,
        min_lr=3e-4,
        warmup_iters=10,
        eval_interval=50,
        eval_iters=5,
        log_interval=10,
    ),
    # nanoGPT's CPU config for tiny Shakespeare (README of karpathy/nanoGPT)
    "baby": dict(),
    "speedrun": _SPEEDRUN,
    # the speedrun recipe given nanoGPT's whole baby wall-time budget
    "speedrun-long": {**_SPEEDRUN, "max_iters": 1250, "warmup_iters": 50, "eval_interval": 250},
    # nanoGPT's config/train_shakespeare_char.py: a GPU run
    "shakespeare": dict(
        n_layer=6,
        n_head=6,
        n_embd=384,
        block_size=256,
        batch_size=64,
        dropout=0.2,
        max_iters=5000,
        eval_interval=250,
        eval_iters=200,
        warmup_iters=100,
        snapshots=False,  # 10.7M parameters: 43 MB per eval, 900 MB over the run
    ),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise MiniGPTError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    return TrainConfig().replace(**PRESETS[name])


def load_toml(path: Path) -> dict:
    """Flat fields from a TOML file (flat, or under a [train] table); unknown keys are an error."""
    try:
        data = tomllib.loads(read_input_bytes(Path(path), "config file").decode("utf-8"))
    except FileNotFoundError:
        raise MiniGPTError(f"config file not found: {path}") from None
    except OSError as exc:
        raise MiniGPTError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MiniGPTError(f"config file {path} is not valid TOML: {exc}") from None
    if "train" in data:
        beside = sorted(set(data) - {"train"})
        if beside:  # they would be silently ignored
            raise MiniGPTError(f"config file {path}: {', '.join(beside)} beside the [train] table; put every "
                               "field under [train], or drop the table and keep them all at the top")
        data = data["train"]
        if not isinstance(data, dict):
            raise MiniGPTError(f"config file {path}: train must be one [train] table, not an array of tables")
    tables = sorted(name for name, value in data.items() if isinstance(value, (dict, list)) and name in FLAT_FIELDS)
    unknown = sorted(set(data) - set(FLAT_FIELDS) - {"preset"})
    if unknown:
        kinds = ["table [" + name + "]" if isinstance(data[name], dict) else
                 "array of tables [[" + name + "]]" if isinstance(data[name], list) and data[name]
                 and all(isinstance(v, dict) for v in data[name]) else "field " + name for name in unknown]
        raise MiniGPTError(f"config file {path}: unknown {', '.join(kinds)} (fields are flat, e.g. n_layer = 4)")
    if tables:
        raise MiniGPTError(f"config file {path}: {tables[0]} must be a single value, not a table or a list")
    if "preset" in data and not isinstance(data["preset"], str):
        raise MiniGPTError(f"config file {path}: preset must be a preset name (a string)")
    return data


def build_config(
    preset_name: str = "baby", file_values: dict | None = None, overrides: dict | None = None
) -> TrainConfig:
    """Preset, then the config file, then flags (all flat): later sources win."""
    values = dict(file_values or {})
    preset_name = values.pop("preset", preset_name)
    merged = {**values, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return preset(preset_name).replace(**merged)


def config_from_sources(preset_name: str | None, config_file: Path | None, overrides: dict) -> TrainConfig:
    """What the command line describes: ``--preset`` (default baby), then ``--config`` file, then flags."""
    return build_config(preset_name or "baby", load_toml(config_file) if config_file else None, overrides)

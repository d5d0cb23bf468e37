"""Run configuration: one flat dataclass, presets, TOML files and validation."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from backends.base import ACTIVATIONS, OPTIMIZERS, POS_ENCODINGS, ModelConfig, OptimConfig
from minigpt_tui.errors import MiniGPTError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOKENIZERS = ("char", "bpe")


@dataclass
class TrainConfig:
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False
    pos_encoding: str = "learned"
    tie_weights: bool = True
    qk_norm: bool = False
    activation: str = "gelu_tanh"
    zero_init_proj: bool = False
    # data
    tokenizer: str = "char"
    vocab_size: int = 512  # BPE only; a character vocabulary is whatever the text holds
    # optimisation
    batch_size: int = 12
    grad_accum_steps: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: decay over max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    muon_lr_scale: float = 1.0
    muon_momentum: float = 0.95
    # evaluation and logging
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    # execution
    seed: int = 1337
    backend: str = "torch"
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            dropout=self.dropout,
            bias=self.bias,
            pos_encoding=self.pos_encoding,
            tie_weights=self.tie_weights,
            qk_norm=self.qk_norm,
            activation=self.activation,
            zero_init_proj=self.zero_init_proj,
        )

    def optim_config(self) -> OptimConfig:
        return OptimConfig(
            weight_decay=self.weight_decay,
            beta1=self.beta1,
            beta2=self.beta2,
            grad_clip=self.grad_clip,
            optimizer=self.optimizer,
            muon_lr_scale=self.muon_lr_scale,
            muon_momentum=self.muon_momentum,
        )

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.max_iters

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size * self.grad_accum_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        return validated(dataclasses.replace(self, **changes))


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
    "tokenizer": "char, or bpe (byte-level BPE trained on the train split).",
    "vocab_size": "BPE vocabulary size (ignored for char).",
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
    "grad_clip": "Clip the global gradient norm to this (0: off).",
    "optimizer": "adamw, or muon (Muon for the block matrices, AdamW for the rest).",
    "muon_lr_scale": "Muon's learning rate as a multiple of learning_rate (same schedule).",
    "muon_momentum": "Muon's (Nesterov) momentum.",
    "eval_interval": "Evaluate and checkpoint every N steps.",
    "eval_iters": "Batches per evaluation estimate.",
    "log_interval": "Log a step record every N steps.",
    "seed": "Seed of the initial weights, batches and dropout.",
    "backend": "Model backend: torch, numpy, or one from an entry point.",
    "device": "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.",
    "dtype": "float32, or float64 (slow; for exact checks).",
    "compile": "torch.compile the training forward (PyTorch backend). Helps on GPUs; on a CPU at the baby "
    "size it measured slower than eager (issue 11), so leave it off there.",
}

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
    # the baby model trained for speed (issue 11; chosen with `minigpt ablate sweep`, see experiments_log.md):
    # Muon on the block matrices, rotary positions, QK-norm, ReLU^2, zero-initialised projections, and a
    # step budget a fraction of baby's
    "speedrun": dict(
        pos_encoding="rope",
        qk_norm=True,
        activation="relu2",
        zero_init_proj=True,
        optimizer="muon",
        muon_lr_scale=5.0,
        learning_rate=2e-3,
        min_lr=2e-4,
        max_iters=400,
        warmup_iters=20,
        eval_interval=100,
    ),
    # the speedrun recipe given nanoGPT's whole baby wall-time budget
    "speedrun-long": dict(
        pos_encoding="rope",
        qk_norm=True,
        activation="relu2",
        zero_init_proj=True,
        optimizer="muon",
        muon_lr_scale=5.0,
        learning_rate=2e-3,
        min_lr=2e-4,
        max_iters=1500,
        warmup_iters=50,
        eval_interval=250,
    ),
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
    ),
}


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def field_type(name: str) -> type:
    return {"int": int, "float": float, "bool": bool, "str": str}[TrainConfig.__dataclass_fields__[name].type]


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise MiniGPTError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    return TrainConfig(**PRESETS[name])


def load_toml(path: Path) -> dict:
    """Fields from a TOML file (flat, or under a [train] table); unknown keys are an error."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MiniGPTError(f"config file not found: {path}") from None
    except OSError as exc:
        raise MiniGPTError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MiniGPTError(f"config file {path} is not valid TOML: {exc}") from None
    data = data.get("train", data)
    unknown = sorted(set(data) - set(field_names()) - {"preset"})
    if unknown:
        raise MiniGPTError(f"config file {path}: unknown field(s) {', '.join(unknown)}")
    return data


def build_config(
    preset_name: str = "baby", file_values: dict | None = None, overrides: dict | None = None
) -> TrainConfig:
    """Preset, then the config file, then flags: later sources win."""
    values = dict(file_values or {})
    preset_name = values.pop("preset", preset_name)
    config = preset(preset_name)
    merged = {**values, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for name, value in merged.items():
        if name not in TrainConfig.__dataclass_fields__:
            raise MiniGPTError(f"unknown config field {name!r}")
        expected = field_type(name)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise MiniGPTError(f"{name} must be a {expected.__name__}, got {value!r}")
        merged[name] = value
    return validated(dataclasses.replace(config, **merged))


def config_from_sources(preset_name: str | None, config_file: Path | None, overrides: dict) -> TrainConfig:
    """What the command line describes: ``--preset`` (default baby), then ``--config`` file, then flags."""
    return build_config(preset_name or "baby", load_toml(config_file) if config_file else None, overrides)


def validated(config: TrainConfig) -> TrainConfig:
    """Raise MiniGPTError on an impossible configuration; return the config unchanged otherwise."""
    for name in (
        "n_layer",
        "n_head",
        "n_embd",
        "block_size",
        "batch_size",
        "grad_accum_steps",
        "max_iters",
        "eval_interval",
        "eval_iters",
        "log_interval",
        "vocab_size",
    ):
        if getattr(config, name) < 1:
            raise MiniGPTError(f"{name} must be positive, got {getattr(config, name)}")
    if config.n_embd % config.n_head:
        raise MiniGPTError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
    if config.pos_encoding == "sinusoidal" and config.n_embd % 2:
        raise MiniGPTError("sinusoidal positions need an even n_embd")
    if not 0.0 <= config.dropout < 1.0:
        raise MiniGPTError(f"dropout must be in [0, 1), got {config.dropout}")
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters"):
        value = getattr(config, name)
        if value < 0 or not math.isfinite(value):
            raise MiniGPTError(f"{name} must be a finite number >= 0, got {value}")
    if config.min_lr > config.learning_rate:
        raise MiniGPTError(f"min_lr ({config.min_lr}) must not exceed learning_rate ({config.learning_rate})")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(config, name) < 1.0:
            raise MiniGPTError(f"{name} must be in [0, 1), got {getattr(config, name)}")
    if config.pos_encoding not in POS_ENCODINGS:
        raise MiniGPTError(f"pos_encoding must be one of {', '.join(POS_ENCODINGS)}")
    if config.pos_encoding == "rope" and (config.n_embd // config.n_head) % 2:
        raise MiniGPTError(f"rope needs an even head size (n_embd / n_head), got {config.n_embd // config.n_head}")
    if config.activation not in ACTIVATIONS:
        raise MiniGPTError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {config.activation!r}")
    if config.optimizer not in OPTIMIZERS:
        raise MiniGPTError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if not (config.muon_lr_scale > 0 and math.isfinite(config.muon_lr_scale)):
        raise MiniGPTError(f"muon_lr_scale must be a finite number > 0, got {config.muon_lr_scale}")
    if not 0.0 <= config.muon_momentum < 1.0:
        raise MiniGPTError(f"muon_momentum must be in [0, 1), got {config.muon_momentum}")
    if config.tokenizer not in TOKENIZERS:
        raise MiniGPTError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {config.tokenizer!r}")
    if config.dtype not in ("float32", "float64"):
        raise MiniGPTError(f"dtype must be float32 or float64, got {config.dtype!r}")
    return config

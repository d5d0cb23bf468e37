"""Hugging Face ``transformers`` interop: a run <-> a GPT-2 folder, written and read with NumPy alone.

minigpt's network is GPT-2's (pre-LN blocks, learned positions, tanh GELU, LayerNorm eps 1e-5,
1/sqrt(head size) attention scaling), so a run maps exactly onto ``GPT2LMHeadModel``. The only
differences are in storage:

- GPT-2 keeps its linear layers as ``Conv1D`` modules whose weight is ``(in, out)``; ours are
  ``(out, in)`` like ``torch.nn.Linear``: the four matrices of each block are transposed.
- GPT-2 always has biases: a bias-free model is written with zero biases, which compute the same.
- ``save_pretrained`` writes weights under ``transformer.`` and leaves ``lm_head.weight`` out when it
  is tied to the token embedding; we do the same.

Neither torch nor transformers is imported here: ``config.json`` is plain JSON, the weights go
through ``safetensors.numpy`` and the tokenizer through the ``tokenizers`` library.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file
from safetensors.numpy import save as save_safetensors
from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from backends.base import ModelConfig, canonical_shapes, check_weights, count_parameters
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.storage import atomic_write_bytes, atomic_write_text, check_input_file, read_input_bytes
from minigpt_tui.training.bpe import BPETokenizer
from minigpt_tui.training.checkpoint import FOLDER_MODE, Checkpoint, TrainingState, load_checkpoint, save_checkpoint
from minigpt_tui.training.config import TrainConfig, preset
from minigpt_tui.training.data import split_text
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.runs import Run, available_checkpoint, corpus_fingerprint, create_run, open_run
from minigpt_tui.training.tokenizer import CharTokenizer, Tokenizer
from minigpt_tui.typed import checked_value

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_TOKENIZER = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
PREFIX = "transformer."
CONV1D_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stored (in, out) by GPT-2
LAYER_NORM_EPS = 1e-5  # what both backends use
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # transformers' two names for GPT-2's tanh GELU
# the fields of ModelConfig that GPT2Config expresses (zero_init_proj only changes the initial weights, not the
# network); any other must keep its (GPT-2) default
GPT2_FIELDS = (
    "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "tie_weights", "zero_init_proj"
)
GPT2_VALUES = {"pos_encoding": "learned"}  # a field that exists in both, but with one value only in GPT-2
MARKER = "minigpt"  # our own entry in config.json: what GPT-2's format cannot say (a bias-free model)


# ------------------------------------------------------------------------------------------ model


def gpt2_blocker(config: ModelConfig) -> str | None:
    """``option=value`` of the first setting GPT-2 cannot express, or None when the model maps exactly."""
    for field in dataclasses.fields(config):
        if field.name in GPT2_FIELDS:
            continue
        value = getattr(config, field.name)
        required = GPT2_VALUES.get(field.name, field.default)
        if value != required:
            return f"{field.name}={value!r} (GPT-2 has {field.name}={required!r})"
    return None


def is_conv1d(name: str) -> bool:
    return name.endswith(".weight") and any(f".{layer}." in name for layer in CONV1D_LAYERS)


def to_gpt2_weights(config: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical weights -> the tensors ``GPT2LMHeadModel.save_pretrained`` writes (float32)."""
    out = {}
    for name, value in weights.items():
        value = np.asarray(value, dtype=np.float32)
        if is_conv1d(name):
            value = value.T
        out[name if name == "lm_head.weight" else PREFIX + name] = np.ascontiguousarray(value)
    if not config.bias:  # GPT-2 always adds a bias: zeros compute what no bias computes
        with_bias = dataclasses.replace(config, bias=True)
        for name, shape in canonical_shapes(with_bias).items():
            if name.endswith(".bias"):
                out[PREFIX + name] = np.zeros(shape, np.float32)
    return out


def from_gpt2_weights(config: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GPT-2 tensors (with or without the ``transformer.`` prefix) -> canonical weights for ``config``."""
    found = {}
    for name, value in tensors.items():
        name = name.removeprefix(PREFIX)
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers that older transformers versions saved
        found[name] = value
    weights = {}
    for name in canonical_shapes(config):
        if name not in found:
            raise MiniGPTError(f"the weights have no tensor {PREFIX if name != 'lm_head.weight' else ''}{name}")
        value = np.asarray(found[name], dtype=np.float32)
        weights[name] = np.ascontiguousarray(value.T if is_conv1d(name) else value)
    try:
        check_weights(config, weights)
    except ValueError as exc:
        raise MiniGPTError(str(exc)) from None
    return weights


def gpt2_config(config: ModelConfig) -> dict:
    """The ``config.json`` of the equivalent GPT2LMHeadModel, field for field as GPT2Config writes it."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd, as ours
        "activation_function": "gelu_new",  # the tanh approximation, as ours
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_weights,
        # GPT2Config's defaults are GPT-2's <|endoftext|> (50256): outside a small vocabulary
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": "float32",
        MARKER: {"bias": config.bias},
    }


@dataclass(frozen=True)
class GPT2Shape:
    """What an imported folder's config.json says about the network."""

    config: ModelConfig
    bias_free_on_export: bool  # written by minigpt from a bias-free model (its biases are zeros)


# the GPT2Config fields minigpt reads: type and GPT2Config's default (a missing field takes it); None
# in the type's place means the field may be null
GPT2_CONFIG_FIELDS: dict[str, tuple[type, object, bool]] = {
    "model_type": (str, None, False),
    "vocab_size": (int, 50257, False),
    "n_positions": (int, 1024, False),
    "n_layer": (int, 12, False),
    "n_head": (int, 12, False),
    "n_embd": (int, 768, False),
    "n_inner": (int, None, True),
    "resid_pdrop": (float, 0.1, False),
    "tie_word_embeddings": (bool, True, False),
    "activation_function": (str, "gelu_new", False),
    "layer_norm_epsilon": (float, 1e-5, False),
    "scale_attn_weights": (bool, True, False),
    "scale_attn_by_inverse_layer_idx": (bool, False, False),
    "add_cross_attention": (bool, False, False),
}


def gpt2_fields(document: dict, where: str) -> dict:
    """The fields of ``GPT2_CONFIG_FIELDS`` from ``document``, each type-checked (MiniGPTError naming it)."""
    values = {}
    for name, (kind, default, nullable) in GPT2_CONFIG_FIELDS.items():
        value = document.get(name, default)
        values[name] = value if value is None and (nullable or name not in document) else checked_value(
            kind, value, f"{where}: field {name}")
    return values


def read_gpt2_config(document: dict, source: Path) -> GPT2Shape:
    """ModelConfig of a GPT-2 config.json; MiniGPTError naming the first thing minigpt cannot run."""
    fields = gpt2_fields(document, f"{source}/{HF_CONFIG}")
    if fields["model_type"] != "gpt2":
        raise MiniGPTError(f"{source} holds a {fields['model_type'] or 'unknown'} model, not GPT-2 "
                           "(model_type must be 'gpt2')")
    n_embd = fields["n_embd"]
    checks = [
        ("activation_function", fields["activation_function"] in TANH_GELUS, "gelu_new"),
        ("layer_norm_epsilon", math.isclose(fields["layer_norm_epsilon"], LAYER_NORM_EPS), 1e-5),
        ("n_inner", fields["n_inner"] in (None, 4 * n_embd), f"null or {4 * n_embd}"),
        ("scale_attn_weights", fields["scale_attn_weights"] is True, True),
        ("scale_attn_by_inverse_layer_idx", fields["scale_attn_by_inverse_layer_idx"] is False, False),
        ("add_cross_attention", fields["add_cross_attention"] is False, False),
    ]
    for name, ok, wanted in checks:
        if not ok:
            raise MiniGPTError(f"{source}: {name}={fields[name]!r} has no minigpt equivalent (needs {wanted})")
    marker = document.get(MARKER) if isinstance(document.get(MARKER), dict) else {}
    try:
        config = ModelConfig(
            vocab_size=fields["vocab_size"],
            block_size=fields["n_positions"],
            n_layer=fields["n_layer"],
            n_head=fields["n_head"],
            n_embd=n_embd,
            dropout=fields["resid_pdrop"],
            bias=True,
            pos_encoding="learned",
            tie_weights=fields["tie_word_embeddings"],
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise MiniGPTError(f"{source}: {exc}") from None
    return GPT2Shape(config, marker.get("bias") is False)


# -------------------------------------------------------------------------------------- tokenizer


def char_hf_tokenizer(chars: list[str]) -> HFTokenizer:
    """A fast tokenizer equal to ``CharTokenizer(chars)``: one token per character, decoded by concatenation.

    The pre-tokenizer isolates every character (``[\\s\\S]``, so newlines and spaces too) and the
    vocabulary looks it up; ``Fuse`` joins tokens without the spaces a word-level decoder would add.
    """
    hf = HFTokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    return hf


def to_hf_tokenizer(tokenizer: Tokenizer) -> HFTokenizer:
    if isinstance(tokenizer, CharTokenizer):
        return char_hf_tokenizer(tokenizer.chars)
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.hf
    raise MiniGPTError(f"cannot export a {tokenizer.kind} tokenizer")


def from_hf_tokenizer(hf: HFTokenizer) -> Tokenizer:
    """A char tokenizer when ``hf`` is exactly one ``char_hf_tokenizer`` writes, else the BPE class around it."""
    data = json.loads(hf.to_str())
    vocab = data.get("model", {}).get("vocab") if data.get("model", {}).get("type") == "WordLevel" else None
    if isinstance(vocab, dict) and all(len(token) == 1 for token in vocab):
        chars = sorted(vocab, key=vocab.get)
        if [vocab[c] for c in chars] == list(range(len(chars))):
            ours = json.loads(char_hf_tokenizer(chars).to_str())
            if all(data.get(key) == ours.get(key) for key in ("normalizer", "pre_tokenizer", "decoder", "model")):
                return CharTokenizer(chars)
    return BPETokenizer(hf)


def tokenizer_config(block_size: int) -> dict:
    return {
        # load tokenizer.json as it is (a GPT-2 model type would otherwise suggest GPT-2's own vocabulary)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,  # its clean-up rewrites " ." to "." and breaks round trips
        "model_max_length": block_size,
    }


def read_hf_tokenizer(hf_dir: Path) -> HFTokenizer:
    """tokenizer.json, or GPT-2's older vocab.json + merges.txt pair (byte-level BPE)."""
    try:
        if os.path.lexists(hf_dir / HF_TOKENIZER):
            return HFTokenizer.from_str(read_input_bytes(hf_dir / HF_TOKENIZER, "tokenizer").decode("utf-8"))
        if os.path.lexists(hf_dir / "vocab.json") and os.path.lexists(hf_dir / "merges.txt"):
            for name in ("vocab.json", "merges.txt"):
                check_input_file(hf_dir / name, "tokenizer file")
            hf = HFTokenizer(models.BPE.from_file(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt")))
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            hf.decoder = decoders.ByteLevel()
            return hf
    except MiniGPTError:
        raise
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise MiniGPTError(f"{hf_dir}: cannot read the tokenizer: {exc}") from None
    raise MiniGPTError(f"{hf_dir} has no tokenizer ({HF_TOKENIZER}, or vocab.json and merges.txt)")


# ---------------------------------------------------------------------------------------- folders


def check_out_dir(path: Path) -> None:
    """MiniGPTError unless ``path`` is free: absent, or an empty folder (nothing is ever overwritten)."""
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise MiniGPTError(f"{path} already exists; choose a new folder")


def publish(tmp: Path, out: Path) -> None:
    """Move the finished folder into place in one rename: ``out`` is complete or absent."""
    if out.is_dir():
        out.rmdir()  # empty (check_out_dir); rename cannot replace a directory on every platform
    os.replace(tmp, out)


def staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, FOLDER_MODE)  # mkdtemp makes it private; the published folder is meant to be shared
    return tmp


@dataclass(frozen=True)
class Export:
    path: Path
    step: int
    checkpoint: str
    parameters: int
    tokenizer: str


def export_run(run_dir: Path, out: Path, which: str = "best") -> Export:
    """Write ``out``: a folder ``AutoModelForCausalLM`` and ``AutoTokenizer`` load offline."""
    out = Path(out)
    run = open_run(run_dir)
    config = run.config.model
    blocker = gpt2_blocker(config)
    if blocker:
        raise MiniGPTError(f"cannot export to GPT-2: {blocker}")
    check_out_dir(out)
    checkpoint = load_checkpoint(run.checkpoint_dir(available_checkpoint(run, which)), with_optimizer=False)
    try:
        check_weights(config, checkpoint.weights)
    except ValueError as exc:
        raise MiniGPTError(f"run {run.path}: {exc}") from None
    tmp = staging_dir(out)
    try:
        atomic_write_text(tmp / HF_CONFIG, json.dumps(gpt2_config(config), indent=2))
        # "format": "pt" is how transformers recognises a safetensors file it can load into torch
        weights = save_safetensors(to_gpt2_weights(config, checkpoint.weights), metadata={"format": "pt"})
        atomic_write_bytes(tmp / HF_WEIGHTS, weights)
        to_hf_tokenizer(run.tokenizer).save(str(tmp / HF_TOKENIZER))
        atomic_write_text(tmp / HF_TOKENIZER_CONFIG, json.dumps(tokenizer_config(config.block_size), indent=2))
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(out, checkpoint.state.step, checkpoint.state.kind, count_parameters(config), run.tokenizer.kind)


def read_hf_weights(hf_dir: Path) -> dict[str, np.ndarray]:
    """The tensors of ``model.safetensors`` or of the shards its index names; never a pickle."""
    if os.path.lexists(hf_dir / HF_WEIGHTS):
        files = [hf_dir / HF_WEIGHTS]
    elif os.path.lexists(hf_dir / HF_WEIGHTS_INDEX):
        try:
            index = json.loads(read_input_bytes(hf_dir / HF_WEIGHTS_INDEX, "weights index"))
            names = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            raise MiniGPTError(f"{hf_dir}/{HF_WEIGHTS_INDEX} is corrupt") from None
        if not all(isinstance(n, str) and n and Path(n).name == n and n not in (".", "..") for n in names):
            raise MiniGPTError(f"{hf_dir}/{HF_WEIGHTS_INDEX} is corrupt: shards must be file names in the folder")
        files = [hf_dir / name for name in names]
    elif (hf_dir / "pytorch_model.bin").is_file():
        raise MiniGPTError(
            f"{hf_dir} holds only pytorch_model.bin, a pickle minigpt will not load (it can run code); "
            "re-save it with save_pretrained(..., safe_serialization=True)"
        )
    else:
        raise MiniGPTError(f"{hf_dir} has no {HF_WEIGHTS}")
    tensors = {}
    for file in files:
        try:
            check_input_file(file, "weights file")
            tensors.update(load_file(str(file)))
        except IsADirectoryError:
            raise MiniGPTError(f"{file} is a folder, not a weights file") from None
        except FileNotFoundError:
            raise MiniGPTError(f"{file} is missing") from None
        except (SafetensorError, ValueError, TypeError) as exc:  # bfloat16 has no NumPy dtype: a TypeError
            raise MiniGPTError(f"{file}: cannot read the weights as NumPy arrays ({exc})") from None
    return tensors


def imported_config(model: ModelConfig, tokenizer: Tokenizer) -> TrainConfig:
    """The baby preset's training settings around the imported network (fine-tuning changes them by flags)."""
    return preset("baby").replace(**model.to_dict(), tokenizer=tokenizer.kind)


def import_hf(hf_dir: Path, out: Path, corpus: Corpus | None = None) -> Run:
    """Turn a local GPT-2 folder into a run at step 0 that sample, eval, the TUI and ``train --resume`` accept.

    With a ``corpus`` the run is tied to it, as a trained run is to its own: eval and fine-tuning use it
    without --data, and bits per character are measured on its validation split.
    """
    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise MiniGPTError(f"folder not found: {hf_dir}")
    try:
        document = json.loads(read_input_bytes(hf_dir / HF_CONFIG, "config file"))
    except FileNotFoundError:
        raise MiniGPTError(f"{hf_dir} is not a Hugging Face model folder (no {HF_CONFIG})") from None
    except IsADirectoryError:
        raise MiniGPTError(f"{hf_dir}/{HF_CONFIG} is a folder, not a file") from None
    except (ValueError, UnicodeDecodeError):
        raise MiniGPTError(f"{hf_dir}/{HF_CONFIG} is corrupt") from None
    if not isinstance(document, dict):
        raise MiniGPTError(f"{hf_dir}/{HF_CONFIG} is corrupt")
    shape = read_gpt2_config(document, hf_dir)
    check_out_dir(out)
    tokenizer = from_hf_tokenizer(read_hf_tokenizer(hf_dir))
    if tokenizer.vocab_size != shape.config.vocab_size:
        raise MiniGPTError(
            f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} tokens but the model {shape.config.vocab_size}; "
            "minigpt needs them equal"
        )
    weights = from_gpt2_weights(shape.config, read_hf_weights(hf_dir))
    config = shape.config
    biases = [v for k, v in weights.items() if k.endswith(".bias")]
    if shape.bias_free_on_export and not any(np.any(b) for b in biases):
        # exported by minigpt from a bias-free model and untouched since: bias-free again, exactly
        config = dataclasses.replace(config, bias=False)
        weights = {k: v for k, v in weights.items() if not k.endswith(".bias")}
    run = Run(out, imported_config(config, tokenizer), tokenizer, f"imported from {hf_dir.resolve()}", 1.0)
    if corpus is not None:
        val_text = split_text(corpus.text)[1]
        run.data_source, run.data_sha256 = corpus.source, corpus_fingerprint(corpus)
        run.tokens_per_char = len(tokenizer.encode(val_text)) / max(1, len(val_text))
    tmp = staging_dir(out)
    try:
        run.path = tmp
        lock = create_run(tmp, run)
        try:
            # step 0, fresh AdamW moments, no RNG state (the name of no backend: none is restored)
            state = TrainingState(step=0, kind="latest", backend="")
            optimizer = {"step": np.array(0.0, np.float64)}
            save_checkpoint(run.checkpoint_dir("latest"), Checkpoint(weights, optimizer, {}, state))
        finally:
            lock.release()
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_run(out)

"""Which heads matter, causally: knock a head out and measure how much worse the model predicts.

Attention patterns are correlational (``head_roles``): a head can look at the previous character and still
not matter. Here each head is ablated alone, each layer's heads together, then every head at once, over
validation windows, and the rise in loss (nats per token) is measured; also the rise in surprisal (bits)
on each kind of character: a word's first letter, a later letter, the token after a newline, punctuation.

Zero-ablation replaces a head's output by zeros; mean-ablation by its mean output over the same windows,
which removes what the head says about *this* text while keeping what it always says (often the fairer
knockout: a zeroed head can push the stream somewhere the later layers never saw).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.base import Backend, HeadAblation
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.inspection.head_roles import HeadRoles, context_class
from minigpt_tui.inspection.inspector import LN2
from minigpt_tui.inspection.lens import cross_entropy, window_starts
from minigpt_tui.training.tokenizer import Tokenizer

MODES = ("zero", "mean")
CHAR_CLASSES = ("word start", "word middle", "after newline", "punctuation")


def char_classes(before: str, piece: str) -> list[str]:
    """The classes of a token ``piece`` whose preceding character is ``before``."""
    classes = [name for name in context_class(before, piece) if name in CHAR_CLASSES]
    first = piece[:1]
    if first and not first.isalnum() and not first.isspace():
        classes.append("punctuation")
    return classes


def parse_heads(spec: str, n_layer: int, n_head: int) -> np.ndarray:
    """"1.0,2.3" (layer.head, comma-separated) -> an (n_layer, n_head) bool mask; MiniGPTError when malformed."""
    mask = np.zeros((n_layer, n_head), bool)
    for item in (part.strip() for part in spec.split(",")):
        layer, dot, head = item.partition(".")
        if not (dot and layer.isdigit() and head.isdigit()):
            raise MiniGPTError(f"heads must be given as LAYER.HEAD, comma-separated (e.g. 1.0,2.3), got {item!r}")
        if int(layer) >= n_layer or int(head) >= n_head:
            raise MiniGPTError(f"head {item} does not exist (layers 0..{n_layer - 1}, heads 0..{n_head - 1})")
        mask[int(layer), int(head)] = True
    return mask


def head_labels(mask: np.ndarray) -> list[str]:
    return [f"{layer}.{head}" for layer, head in zip(*np.nonzero(mask), strict=True)]


@dataclass(frozen=True)
class Windows:
    """Validation windows, inputs and targets, with the class of every target token."""

    inputs: list[np.ndarray]  # each (1, T)
    targets: list[np.ndarray]  # each (T,)
    classes: np.ndarray  # (windows * T, classes) bool

    @classmethod
    def of(cls, val_tokens: np.ndarray, block: int, windows: int | None, tokenizer: Tokenizer) -> Windows:
        try:
            starts = window_starts(len(val_tokens), block, windows)
        except ValueError as exc:
            raise MiniGPTError(str(exc)) from None
        inputs, targets, classes = [], [], []
        for start in starts:
            window = np.asarray(val_tokens[start : start + block + 1], np.int64)
            inputs.append(window[None, :-1])
            targets.append(window[1:])
            pieces = [tokenizer.decode([int(t)]) for t in window]
            for before, piece in zip(pieces[:-1], pieces[1:], strict=True):
                found = char_classes(before[-1:], piece)
                classes.append([name in found for name in CHAR_CLASSES])
        return cls(inputs, targets, np.asarray(classes, bool).reshape(-1, len(CHAR_CLASSES)))

    def losses(self, backend: Backend, ablation: HeadAblation | None = None) -> np.ndarray:
        """(windows * T,) per-token losses in nats."""
        return np.concatenate([cross_entropy(backend.trace(x, ablation).logits.astype(np.float64), y)
                               for x, y in zip(self.inputs, self.targets, strict=True)])

    def mean_head_outputs(self, backend: Backend) -> np.ndarray:
        """(n_layer, n_head, head_size): each head's output averaged over every position of every window."""
        return np.mean([backend.trace(x).head_outputs.mean(axis=2) for x in self.inputs], axis=0)


@dataclass(frozen=True)
class HeadImportance:
    """The rise in validation loss when heads are ablated."""

    mode: str
    windows: int
    window_tokens: int
    base_loss: float  # nats per token, nothing ablated
    delta_loss: np.ndarray  # (n_layer, n_head): each head alone
    layer_delta_loss: np.ndarray  # (n_layer,): each layer's heads together
    all_heads_loss: float  # every head of every layer ablated
    unigram_loss: float  # the entropy of the split's own token frequencies: the best a context-free guess does
    bigram_loss: float  # the split's entropy of a token given the one before: the best a one-token context does
    class_delta_bits: np.ndarray  # (n_layer, n_head, classes): rise in mean surprisal per CHAR_CLASSES
    class_base_bits: np.ndarray  # (classes,)
    class_counts: np.ndarray  # (classes,)

    def ranked(self) -> list[tuple[int, int, float]]:
        """(layer, head, delta loss), most important first."""
        order = np.argsort(-self.delta_loss, axis=None, kind="stable")
        return [(int(i // self.delta_loss.shape[1]), int(i % self.delta_loss.shape[1]),
                 float(self.delta_loss.flat[i])) for i in order]

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "windows": self.windows,
            "window_tokens": self.window_tokens,
            "base_loss": self.base_loss,
            "delta_loss": self.delta_loss.tolist(),
            "layer_delta_loss": self.layer_delta_loss.tolist(),
            "all_heads_loss": self.all_heads_loss,
            "unigram_loss": self.unigram_loss,
            "bigram_loss": self.bigram_loss,
            "classes": list(CHAR_CLASSES),
            "class_delta_bits": self.class_delta_bits.tolist(),
            "class_base_bits": self.class_base_bits.tolist(),
            "class_counts": self.class_counts.tolist(),
        }


def unigram_entropy(tokens: np.ndarray) -> float:
    counts = np.bincount(np.asarray(tokens, np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def conditional_entropy(context: np.ndarray, targets: np.ndarray) -> float:
    """H(target | context) of the pairs themselves (nats): the lowest cross-entropy any predictor that sees
    only ``context`` (an int code per target) can reach on exactly these pairs."""
    pairs, counts = np.unique(np.stack([context, targets]), axis=1, return_counts=True)
    _, inverse = np.unique(pairs[0], return_inverse=True)
    context_counts = np.bincount(inverse, weights=counts)  # occurrences of each context
    joint = counts / counts.sum()
    return float(-(joint * np.log(counts / context_counts[inverse])).sum())


def head_importance(backend: Backend, tokenizer: Tokenizer, val_tokens: np.ndarray, *, windows: int | None = 64,
                    mode: str = "zero") -> HeadImportance:
    """Ablate each head alone, each layer whole and everything, over ``windows`` validation windows (None:
    the whole split); costs (heads + layers + 2) forwards per window, one more per window for ``mean``."""
    if mode not in MODES:
        raise MiniGPTError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    c = backend.config
    data = Windows.of(val_tokens, c.block_size, windows, tokenizer)
    values = data.mean_head_outputs(backend) if mode == "mean" else None

    def losses(mask: np.ndarray) -> np.ndarray:
        return data.losses(backend, HeadAblation(mask, values))

    base = data.losses(backend)
    counts = data.classes.sum(0)

    def class_bits(per_token: np.ndarray) -> np.ndarray:
        sums = (per_token[:, None] * data.classes).sum(0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan) / LN2

    delta = np.zeros((c.n_layer, c.n_head))
    class_delta = np.zeros((c.n_layer, c.n_head, len(CHAR_CLASSES)))
    for layer in range(c.n_layer):
        for head in range(c.n_head):
            mask = np.zeros((c.n_layer, c.n_head), bool)
            mask[layer, head] = True
            change = losses(mask) - base
            delta[layer, head] = change.mean()
            class_delta[layer, head] = class_bits(change)
    layer_delta = np.zeros(c.n_layer)
    for layer in range(c.n_layer):
        mask = np.zeros((c.n_layer, c.n_head), bool)
        mask[layer] = True
        layer_delta[layer] = (losses(mask) - base).mean()
    return HeadImportance(
        mode=mode,
        windows=len(data.inputs),
        window_tokens=c.block_size,
        base_loss=float(base.mean()),
        delta_loss=delta,
        layer_delta_loss=layer_delta,
        all_heads_loss=float(losses(np.ones((c.n_layer, c.n_head), bool)).mean()),
        unigram_loss=unigram_entropy(val_tokens),
        bigram_loss=conditional_entropy(np.asarray(val_tokens[:-1]), np.asarray(val_tokens[1:])),
        class_delta_bits=class_delta,
        class_base_bits=class_bits(base),
        class_counts=counts,
    )


def attention_role(roles: HeadRoles, layer: int, head: int) -> tuple[str, float, float]:
    """(kind, mass, multiple of uniform) of the target a head attends to most above chance."""
    ratio = roles.mass[layer, head] / np.maximum(roles.chance, 1e-12)
    k = int(np.argmax(ratio))
    return roles.kinds[k], float(roles.mass[layer, head, k]), float(ratio[k])

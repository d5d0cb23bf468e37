"""What the heads learned, measured over a validation split: how much attention each head puts on the
previous token, the start of the current word or line, the last newline, and the last speaker's name; and where the
model is surprised (word starts, word middles, after a newline). ``minigpt heads`` prints it.

The targets follow the corpus (``corpus_targets``): a speaker's name only where the text has "NAME:" lines
(a play), and "character" or "token" in the wording as the tokenizer cuts the text.

Every mass is compared with uniform attention over the same keys (``chance``): a head that looks at
nothing in particular scores chance on every kind, a specialised head scores far above it on one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backends.base import Backend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.inspection.inspector import Inspection, inspect_tokens
from minigpt_tui.training.tokenizer import Tokenizer

# what a query may attend to; word start, line start and speaker name only count when at least two
# tokens back, so that they never coincide with the query itself or the previous token
TARGET_KINDS = ("self", "previous", "word start", "line start", "last newline", "speaker name")
ALWAYS_TARGETS = ("self", "previous", "word start", "line start", "last newline")
# a speaker line as plays write it: "ROMEO:" or "First Citizen:" alone on its line
SPEAKER_LINE = re.compile(r"^[^\W\d_][\w' .-]{0,40}:[ \t]*$", re.MULTILINE)
MIN_SPEAKER_LINES = 3  # one "Note:" line does not make a play
# where a token sits in the text, for its surprisal
CONTEXT_CLASSES = ("all", "word start", "word middle", "after newline")


def corpus_targets(text: str) -> tuple[str, ...]:
    """The target kinds this text has: previous, word and line start always; a speaker's name only when
    the text has "NAME:" lines."""
    speakers = len(SPEAKER_LINE.findall(text)) >= MIN_SPEAKER_LINES
    return ALWAYS_TARGETS + (("speaker name",) if speakers else ())


def target_label(kind: str, tokenizer_kind: str) -> str:
    """A target kind in the tokenizer's wording: "previous character" for char, "previous token" for BPE."""
    unit = "character" if tokenizer_kind == "char" else "token"
    return {"self": f"self ({unit})", "previous": f"previous {unit}"}.get(kind, kind)


@dataclass(frozen=True)
class HeadRoles:
    """Attention and surprisal statistics of one set of weights over validation windows."""

    mass: np.ndarray  # (n_layer, n_head, kinds): mean attention mass on each kind's target keys
    chance: np.ndarray  # (kinds,): the same under uniform attention over the visible keys
    queries: np.ndarray  # (kinds,): queries that had such a target
    surprisal_bits: dict[str, float]  # mean surprisal by CONTEXT_CLASSES
    surprisal_counts: dict[str, int]
    windows: int
    window_tokens: int
    kinds: tuple[str, ...] = TARGET_KINDS  # the targets measured, in the order of the mass's last axis
    tokenizer_kind: str = "char"  # for the wording: characters or tokens

    @property
    def labels(self) -> list[str]:
        return [target_label(kind, self.tokenizer_kind) for kind in self.kinds]

    def strongest(self, kind: str) -> tuple[int, int, float]:
        """(layer, head, mass) of the head that attends most to ``kind``."""
        k = self.kinds.index(kind)
        layer, head = np.unravel_index(int(np.argmax(self.mass[:, :, k])), self.mass.shape[:2])
        return int(layer), int(head), float(self.mass[layer, head, k])

    def to_dict(self) -> dict:
        return {
            "kinds": list(self.kinds),
            "labels": self.labels,
            "mass": self.mass.tolist(),
            "chance": dict(zip(self.kinds, self.chance.tolist(), strict=True)),
            "queries": dict(zip(self.kinds, self.queries.tolist(), strict=True)),
            "strongest": {kind: self.strongest(kind) for kind in self.kinds},
            "surprisal_bits": self.surprisal_bits,
            "surprisal_counts": self.surprisal_counts,
            "windows": self.windows,
            "window_tokens": self.window_tokens,
        }


def targets(pieces: list[str]) -> list[dict[str, list[int]]]:
    """For each query position, the key positions of every target kind it has (absent when none)."""
    text_before, last = [], ""  # the character just before each token
    for piece in pieces:
        text_before.append(last)
        last = piece[-1:] or last
    out: list[dict[str, list[int]]] = []
    word_start = line_start = None  # of the current word / line
    name_line: list[int] | None = None  # tokens of the last "Name:" line before the current one
    last_newline: int | None = None
    line: list[int] = []
    for i, piece in enumerate(pieces):
        before = text_before[i]
        if i == 0 or before == "\n":
            line_start, line = i, []
        if piece[:1].isspace():
            word_start = None
        elif i == 0 or before.isspace():
            word_start = i
        line.append(i)
        found: dict[str, list[int]] = {"self": [i]}
        if i >= 1:
            found["previous"] = [i - 1]
        if word_start is not None and word_start <= i - 2:
            found["word start"] = [word_start]
        if line_start is not None and line_start <= i - 2:
            found["line start"] = [line_start]
        if last_newline is not None and last_newline <= i - 2:
            found["last newline"] = [last_newline]
        if name_line:
            found["speaker name"] = name_line
        out.append(found)
        if piece.endswith("\n"):
            last_newline = i
            spoken = "".join(pieces[j] for j in line).strip()
            if spoken.endswith(":") and len(spoken) > 1:
                name_line = [j for j in line if pieces[j].strip() not in ("", ":")]
    return out


def context_class(before: str, piece: str) -> list[str]:
    classes = ["all"]
    if piece[:1].isalpha():
        if before.isspace():
            classes.append("word start")
        elif before.isalpha():
            classes.append("word middle")
    if before == "\n":
        classes.append("after newline")
    return classes


def accumulate(inspection: Inspection, kinds: tuple[str, ...], mass: np.ndarray, chance: np.ndarray,
               queries: np.ndarray, surprisal: dict[str, list[float]]) -> None:
    pieces = inspection.pieces
    for i, found in enumerate(targets(pieces)):
        for kind, keys in found.items():
            if kind not in kinds:
                continue
            k = kinds.index(kind)
            mass[:, :, k] += inspection.attention[:, :, i, keys].sum(-1)
            chance[k] += len(keys) / (i + 1)
            queries[k] += 1
        if i >= 1:
            before = pieces[i - 1][-1:]
            for name in context_class(before, pieces[i]):
                surprisal[name].append(float(inspection.surprisal_bits[i]))


def head_roles(backend: Backend, tokenizer: Tokenizer, val_tokens: np.ndarray, *, windows: int = 64,
               on_window: Callable[[int, int], None] | None = None) -> HeadRoles:
    """Statistics over ``windows`` context-long windows spread evenly over ``val_tokens``, at most one per
    distinct start (more would repeat windows, and allocate without bound), for the targets the text has
    (``corpus_targets``); ``on_window(done, total)`` after each window."""
    block = backend.config.block_size
    if len(val_tokens) < block + 1:
        raise MiniGPTError(f"the validation split has {len(val_tokens)} tokens, fewer than one context ({block})")
    distinct = len(val_tokens) - block + 1
    starts = np.unique(np.linspace(0, distinct - 1, min(windows, distinct)).astype(int))
    kinds = corpus_targets(tokenizer.decode([int(t) for t in val_tokens]))
    c = backend.config
    mass = np.zeros((c.n_layer, c.n_head, len(kinds)))
    chance, queries = np.zeros(len(kinds)), np.zeros(len(kinds), np.int64)
    surprisal: dict[str, list[float]] = {name: [] for name in CONTEXT_CLASSES}
    for done, start in enumerate(starts, start=1):
        inspection = inspect_tokens(backend, [int(t) for t in val_tokens[start : start + block]], tokenizer)
        accumulate(inspection, kinds, mass, chance, queries, surprisal)
        if on_window is not None:
            on_window(done, len(starts))
    seen = np.maximum(queries, 1)
    return HeadRoles(
        mass=mass / seen,
        chance=chance / seen,
        queries=queries,
        surprisal_bits={name: float(np.mean(v)) if v else float("nan") for name, v in surprisal.items()},
        surprisal_counts={name: len(v) for name, v in surprisal.items()},
        windows=len(starts),
        window_tokens=block,
        kinds=kinds,
        tokenizer_kind=tokenizer.kind,
    )

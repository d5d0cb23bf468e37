"""Pure measures of generated text: diversity (distinct-n, repeats), plausibility (known words), entropy.

Everything here takes plain strings, token sequences or probability vectors, so it is checkable by hand.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

# letters with inner apostrophes: "o'er" and "thou'rt" are one word each
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``; digits and punctuation separate words."""
    return [w.lower() for w in WORD.findall(text)]


def ngrams(sequence: Sequence, n: int) -> list[tuple]:
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    return [tuple(sequence[i : i + n]) for i in range(len(sequence) - n + 1)]


def distinct_n(sequences: Iterable[Sequence], n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over ``sequences`` (n-grams never cross two of them).

    1.0 means no n-gram ever repeats; a model stuck in a loop tends to 0. 0.0 when there is no n-gram.
    """
    grams = [g for sequence in sequences for g in ngrams(sequence, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(sequences: Iterable[Sequence], n: int) -> float:
    """Share of n-grams that already occurred earlier in the same sequence (a loop detector).

    Unlike distinct-n it does not count two samples sharing a common phrase as repetition.
    """
    repeats = total = 0
    for sequence in sequences:
        grams = ngrams(sequence, n)
        repeats += len(grams) - len(set(grams))
        total += len(grams)
    return repeats / total if total else 0.0


def known_word_share(generated: Sequence[str], vocabulary: set[str]) -> float:
    """Share of generated words that are in ``vocabulary`` (0.0 when nothing was generated)."""
    return sum(w in vocabulary for w in generated) / len(generated) if generated else 0.0


def entropy(probs: np.ndarray) -> float:
    """Shannon entropy in nats of a probability vector; zero-probability entries contribute 0."""
    p = np.asarray(probs, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum()) if p.size else 0.0


def nll(probs: np.ndarray, token: int) -> float:
    """-ln p(token): the surprise of one token in nats (inf for an impossible token)."""
    p = float(np.asarray(probs)[token])
    return -math.log(p) if p > 0 else math.inf


# a sample counts as looping when one unit (a word n-gram, or a short run of characters) repeated back to
# back makes up this share of it: ordinary prose repeats words, but not half of itself
DOMINATED_SHARE = 0.5
LOOP_MAX_WORDS = 4  # longest word n-gram checked
LOOP_MAX_CHARS = 8  # longest character period checked (",,,,", "ha ha ha ")


def degeneracy(text: str) -> str:
    """Why a sample says nothing about diversity or plausibility, or "" when it is ordinary text.

    "empty", "whitespace only", or "repeats '<unit>'" when a word n-gram or a short character unit
    covers at least ``DOMINATED_SHARE`` of the sample. Such samples would otherwise score like text:
    400 spaces have no words, so no repeated words either.
    """
    if not text:
        return "empty"
    if not text.strip():
        return "whitespace only"
    tokens = words(text)
    for n in range(1, LOOP_MAX_WORDS + 1):
        grams = ngrams(tokens, n)
        if len(grams) < 3:
            break
        gram, count = Counter(grams).most_common(1)[0]
        if count >= 3 and count * n >= DOMINATED_SHARE * len(tokens):
            return f"repeats '{' '.join(gram)}'"
    chars = text.strip()
    for period in range(1, LOOP_MAX_CHARS + 1):
        if len(chars) < 3 * period:
            break
        same = sum(chars[i] == chars[i - period] for i in range(period, len(chars)))
        if same >= (1 - DOMINATED_SHARE / 2) * (len(chars) - period):  # three quarters of it one unit
            return f"repeats {chars[:period]!r}"
    return ""

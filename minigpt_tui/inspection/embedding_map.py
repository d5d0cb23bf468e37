"""A map of the token embeddings: their 2-D PCA (NumPy SVD), each point labelled with its token.

A trained character model places letters that behave alike near each other; on the map, vowels, consonants,
capitals, digits, punctuation and whitespace each get a group (a token of several characters, from BPE,
has the group ``piece``). The variance explained says how much of the picture two axes can show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.base import Backend
from minigpt_tui.training.tokenizer import Tokenizer

VOWELS = set("aeiouAEIOU")
GROUPS = ("vowel", "consonant", "Vowel", "Consonant", "digit", "punctuation", "whitespace", "piece")


def char_group(piece: str) -> str:
    """The group of a token: capitalised names are the upper-case letters."""
    if len(piece) != 1:
        return "piece"
    if piece.isspace():
        return "whitespace"
    if piece.isdigit():
        return "digit"
    if piece.isalpha():
        name = "vowel" if piece in VOWELS else "consonant"
        return name.capitalize() if piece.isupper() else name
    return "punctuation"


@dataclass(frozen=True)
class EmbeddingMap:
    labels: list[str]  # each token's text
    groups: list[str]  # each token's GROUPS entry
    points: np.ndarray  # (V, 2): the embeddings projected on the first two principal components
    variance_explained: np.ndarray  # (2,): the share of the total variance each component carries

    def centroids(self) -> dict[str, tuple[float, float]]:
        """Mean position of each group that has tokens."""
        out = {}
        for group in GROUPS:
            rows = [i for i, g in enumerate(self.groups) if g == group]
            if rows:
                x, y = self.points[rows].mean(0)
                out[group] = (float(x), float(y))
        return out

    def to_dict(self) -> dict:
        return {"labels": self.labels, "groups": self.groups, "points": self.points.tolist(),
                "variance_explained": self.variance_explained.tolist(), "centroids": self.centroids()}


def embedding_map(backend: Backend, tokenizer: Tokenizer) -> EmbeddingMap:
    """The PCA of the token embedding matrix (wte: the input table, and the output head when tied)."""
    table = backend.get_weights()["wte.weight"].astype(np.float64)
    centred = table - table.mean(0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    total = variance.sum()
    points = centred @ components[:2].T
    # an SVD's signs are arbitrary: fix them so the same weights always draw the same map
    points *= np.where(points[np.abs(points).argmax(0), [0, 1]] < 0, -1.0, 1.0)
    labels = [tokenizer.decode([i]) for i in range(len(table))]
    explained = variance[:2] / total if total > 0 else np.zeros(2)
    groups = [char_group(label) for label in labels]
    return EmbeddingMap(labels, groups, points, np.pad(explained, (0, 2 - len(explained))))

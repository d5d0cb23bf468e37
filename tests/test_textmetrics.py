import math

import numpy as np
import pytest

from minigpt_tui.experiments.textmetrics import (
    degeneracy,
    distinct_n,
    entropy,
    known_word_share,
    ngrams,
    nll,
    repeated_ngram_rate,
    words,
)


def test_words_lowercases_and_keeps_inner_apostrophes():
    assert words("O'er the Hill, 2 kings; thou'rt--MINE!") == ["o'er", "the", "hill", "kings", "thou'rt", "mine"]


def test_ngrams():
    assert ngrams("abcd", 2) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert ngrams("ab", 3) == []
    with pytest.raises(ValueError):
        ngrams("ab", 0)


def test_distinct_n_by_hand():
    # "a b a b": unigrams {a, b} of 4 -> 0.5; bigrams ab, ba, ab -> 2 of 3
    assert distinct_n([["a", "b", "a", "b"]], 1) == 0.5
    assert distinct_n([["a", "b", "a", "b"]], 2) == pytest.approx(2 / 3)
    # pooled over samples, never across them: bigrams (a,b) and (a,b) -> 1 distinct of 2, (b,a) never formed
    assert distinct_n([["a", "b"], ["a", "b"]], 2) == 0.5
    assert distinct_n([["a"]], 2) == 0.0


def test_repeated_ngram_rate_counts_repeats_within_a_sample_only():
    # bigrams ab, bc, ca, ab: one repeat of 4
    assert repeated_ngram_rate([["a", "b", "c", "a", "b"]], 2) == 0.25
    # the same phrase in two samples is not a loop
    assert repeated_ngram_rate([["a", "b"], ["a", "b"]], 2) == 0.0
    assert repeated_ngram_rate([["x"] * 5], 2) == 0.75
    assert repeated_ngram_rate([], 2) == 0.0


def test_known_word_share():
    vocabulary = set(words("To be or not to be"))
    assert known_word_share(["to", "bee", "or", "not"], vocabulary) == 0.75
    assert known_word_share([], vocabulary) == 0.0


def test_entropy_by_hand():
    assert entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    assert entropy(np.full(4, 0.25)) == pytest.approx(math.log(4))
    assert entropy(np.array([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))


def test_nll():
    assert nll(np.array([0.25, 0.75]), 0) == pytest.approx(math.log(4))
    assert nll(np.array([1.0, 0.0]), 1) == math.inf


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    (" \n\t  \n", "whitespace only"),
    ("the the the the the king", "repeats 'the'"),
    ("to be to be to be to be or not", "repeats 'to be'"),
    (",,,,,,,,,,,,", "repeats ','"),
    ("The king and queen walked into the garden where roses grew by the old stone wall.", ""),
    ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.", ""),
])
def test_degeneracy(text, reason):
    assert degeneracy(text) == reason

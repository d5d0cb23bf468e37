"""Corpora: reading text from disk and the named datasets (the bundled tiny Shakespeare, the Python docs)."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training import datasets
from minigpt_tui.training.corpus import resolve_corpus
from minigpt_tui.training.data import BatchSampler, TokenData, read_corpus, sequential_windows, split_text


def test_bundled_shakespeare_is_the_checked_text():
    corpus = datasets.load_dataset("shakespeare")
    assert len(corpus.text.encode("utf-8")) == 1_115_394
    assert corpus.text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert corpus.source == datasets.SHAKESPEARE_SOURCE


def test_a_damaged_bundle_is_a_clear_error_and_no_other_corpus(monkeypatch, tmp_path):
    import lzma

    damaged = tmp_path / "minigpt_tui" / datasets.SHAKESPEARE_RESOURCE
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(lzma.compress(b"First Citizen: not the real text"))
    monkeypatch.setattr(datasets.resources, "files", lambda package: tmp_path / package)
    with pytest.raises(MiniGPTError, match="damaged .sha256 mismatch.; reinstall"):
        resolve_corpus(None, None)
    damaged.write_bytes(b"not xz at all")
    with pytest.raises(MiniGPTError, match="cannot be read"):
        datasets.load_dataset("shakespeare")


def test_python_docs_are_always_available():
    corpus = datasets.load_dataset("python-docs")
    assert len(corpus.text) > 100_000
    assert "python-docs" in corpus.source
    assert "lambda" in corpus.text


def test_unknown_dataset():
    with pytest.raises(MiniGPTError, match="unknown dataset 'wiki'"):
        datasets.load_dataset("wiki")


def test_default_corpus_is_the_bundled_shakespeare_offline():
    # the test fixtures block every non-loopback URL: this is the no-network case
    corpus, note = resolve_corpus(None, None)
    assert corpus.source == datasets.SHAKESPEARE_SOURCE and "First Citizen" in corpus.text
    assert "bundled tiny Shakespeare" in note and "\n" not in note


@pytest.mark.parametrize("name", datasets.DATASETS)
def test_a_run_on_a_named_dataset_finds_its_corpus_again(name):
    corpus = datasets.load_dataset(name)
    assert datasets.dataset_of_source(corpus.source) == name
    assert datasets.dataset_of_source("/some/file.txt") is None


def test_data_and_dataset_together_is_an_error(corpus_path):
    with pytest.raises(MiniGPTError, match="not both"):
        resolve_corpus(corpus_path, "python-docs")


# reading corpora from disk


def test_folder_of_text_files(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("not text")
    (tmp_path / "folder.txt").mkdir()  # a folder named like a text file is not read as one
    (tmp_path / "folder.txt" / "c.txt").write_text("nested")
    assert read_corpus(tmp_path).text == "first\n\nsecond\n\nnested"


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty"),
    (b"  \n\t\n", "empty"),
    (b"text\x00with\x00nul", "binary"),
    (b"caf\xe9 au lait", r"not UTF-8 text \(byte 3"),
])
def test_bad_corpus_files(tmp_path, content, fragment):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(MiniGPTError, match=fragment):
        read_corpus(path)


def test_missing_corpus_and_empty_folder(tmp_path):
    with pytest.raises(MiniGPTError, match="not found"):
        read_corpus(tmp_path / "absent.txt")
    with pytest.raises(MiniGPTError, match="no .txt files"):
        read_corpus(tmp_path)


def test_split_is_contiguous_ninety_ten():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = split_text(text)
    assert train + val == text and len(train) == 900


def test_corpus_too_short_for_the_context():
    data = TokenData(np.arange(100), np.arange(10))
    data.check_fits(8)
    with pytest.raises(MiniGPTError, match="val split has 10 tokens, too few for a context of 16"):
        data.check_fits(16)


def test_batches_are_reproducible_and_resumable():
    tokens = np.arange(500)
    a, b = BatchSampler(tokens, 4, 8, seed=3), BatchSampler(tokens, 4, 8, seed=3)
    x, y = a.next()
    assert x.shape == y.shape == (4, 8)
    np.testing.assert_array_equal(y, x + 1)  # targets are the inputs shifted by one
    np.testing.assert_array_equal(b.next()[0], x)
    state = a.get_state()
    expected = a.next()[0]
    b.set_state(state)
    np.testing.assert_array_equal(b.next()[0], expected)


def test_sequential_windows_predict_every_token_once():
    tokens = np.arange(103)
    targets = np.concatenate([y.ravel() for _, y in sequential_windows(tokens, block_size=8, batch_size=3)])
    np.testing.assert_array_equal(targets, np.arange(1, 103))

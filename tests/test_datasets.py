"""Corpora: reading text from disk, named datasets, and the checksummed download (against loopback only)."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest

from minigpt_tui import datasets
from minigpt_tui.corpus import resolve_corpus
from minigpt_tui.data import BatchSampler, TokenData, read_corpus, sequential_windows, split_text
from minigpt_tui.errors import MiniGPTError

FAKE_SHAKESPEARE = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50


class FileServer:
    """A loopback HTTP server that serves ``body`` at every path and counts requests."""

    def __init__(self) -> None:
        self.body = FAKE_SHAKESPEARE
        self.status = 200
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/input.txt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.closed = True


@pytest.fixture
def server(monkeypatch, tmp_path):
    """Shakespeare comes from the loopback server; its checksum is that of the fake text."""
    srv = FileServer()
    monkeypatch.setattr(datasets, "SHAKESPEARE_SHA256", datasets.sha256(FAKE_SHAKESPEARE))
    local = functools.partial(datasets.find_shakespeare, url=srv.url, timeout=5)
    monkeypatch.setattr(datasets, "find_shakespeare", local)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    yield srv
    srv.close()


def cached_file(tmp_path):
    return tmp_path / "xdg" / "minigpt" / datasets.SHAKESPEARE_FILE


def test_download_is_verified_and_cached(server, tmp_path):
    corpus = datasets.load_dataset("shakespeare")
    assert corpus.text == FAKE_SHAKESPEARE.decode()
    assert cached_file(tmp_path).read_bytes() == FAKE_SHAKESPEARE
    assert corpus.source == str(cached_file(tmp_path))
    assert server.requests == 1
    datasets.load_dataset("shakespeare")  # the second time comes from the cache
    assert server.requests == 1


def test_corrupted_download_is_rejected_and_nothing_is_saved(server, tmp_path):
    server.body = FAKE_SHAKESPEARE[:-1] + b"!"
    with pytest.raises(MiniGPTError, match="corrupt.*nothing was saved"):
        datasets.load_dataset("shakespeare")
    assert server.requests == 1
    folder = cached_file(tmp_path).parent
    assert not folder.exists() or list(folder.iterdir()) == []


def test_truncated_download_is_rejected(server, tmp_path):
    server.body = FAKE_SHAKESPEARE[: len(FAKE_SHAKESPEARE) // 2]
    with pytest.raises(MiniGPTError, match="sha256 mismatch"):
        datasets.load_dataset("shakespeare")
    assert not cached_file(tmp_path).exists()


def test_http_error_is_a_clear_error(server):
    server.status, server.body = 404, b"not found"
    with pytest.raises(MiniGPTError, match="download of .* failed"):
        datasets.load_dataset("shakespeare")


def test_unreachable_server_is_a_clear_error(server, monkeypatch):
    server.close()
    with pytest.raises(MiniGPTError, match="download of .* failed"):
        datasets.load_dataset("shakespeare")


def test_tests_cannot_reach_the_real_source():
    assert datasets.SHAKESPEARE_URL.endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
    with pytest.raises(MiniGPTError, match="network access is disabled in tests"):
        datasets.load_dataset("shakespeare")


def test_data_dir_comes_first(server, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / datasets.SHAKESPEARE_FILE).write_bytes(FAKE_SHAKESPEARE)
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(data_dir))
    assert datasets.load_dataset("shakespeare").source == str(data_dir / datasets.SHAKESPEARE_FILE)
    assert server.requests == 0


def test_a_damaged_local_copy_is_ignored_and_replaced(server, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / datasets.SHAKESPEARE_FILE).write_bytes(b"not shakespeare")
    monkeypatch.setenv("MINIGPT_DATA_DIR", str(data_dir))
    cached_file(tmp_path).parent.mkdir(parents=True)
    cached_file(tmp_path).write_bytes(FAKE_SHAKESPEARE[:100])
    corpus = datasets.load_dataset("shakespeare")
    assert server.requests == 1
    assert corpus.source == str(cached_file(tmp_path))
    assert cached_file(tmp_path).read_bytes() == FAKE_SHAKESPEARE


def test_python_docs_are_always_available():
    corpus = datasets.load_dataset("python-docs")
    assert len(corpus.text) > 100_000
    assert "python-docs" in corpus.source
    assert "lambda" in corpus.text


def test_unknown_dataset():
    with pytest.raises(MiniGPTError, match="unknown dataset 'wiki'"):
        datasets.load_dataset("wiki")


def test_default_corpus_is_shakespeare_when_it_can_be_had(server):
    corpus, note = resolve_corpus(None, None)
    assert corpus.text == FAKE_SHAKESPEARE.decode()
    assert "tiny Shakespeare" in note and "\n" not in note


def test_default_corpus_falls_back_to_python_docs(server):
    server.status, server.body = 503, b"unavailable"
    corpus, note = resolve_corpus(None, None)
    assert corpus.source.startswith("python-docs")
    assert "unavailable" in note and "using python-docs" in note and "\n" not in note


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

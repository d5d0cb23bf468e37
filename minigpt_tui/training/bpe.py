"""Byte-level BPE (GPT-2 style) trained locally on the train split with the ``tokenizers`` library.

The 256 byte values are always in the vocabulary, so any text encodes (no unknown characters);
``vocab_size - 256`` merges are learned on top. A token may end in the middle of a UTF-8 character;
``sampling.stream_text`` decodes the running sequence for that reason.
"""

from __future__ import annotations

import json
import threading

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.tokenizer import Tokenizer, check_utf8

BYTE_ALPHABET = 256
# BPE training time grows with the square of a pre-token's length: a corpus with no whitespace (one "word"
# of a million characters) would train for hours. Pieces of at most this many characters keep it linear in
# the corpus; only merges across a cut are lost, and ordinary text (lines far shorter) is fed unchanged.
MAX_PIECE = 1000


def training_pieces(text: str):
    """The text line by line, long lines cut into ``MAX_PIECE`` pieces; a generator, so that the library
    comes back to Python between pieces and a Ctrl-C is seen while it reads."""
    for line in text.splitlines(keepends=True):
        for start in range(0, len(line), MAX_PIECE):
            yield line[start:start + MAX_PIECE]


def interruptibly(work) -> None:
    """Run ``work`` in a thread and wait for it here: the library's merge loop (native code, GIL released)
    never returns to Python, so a Ctrl-C would wait for it; this thread stays free to raise KeyboardInterrupt."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the waiting thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="bpe-training", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if failure:
        raise failure[0]


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        if vocab_size < BYTE_ALPHABET:
            raise MiniGPTError(f"a byte-level BPE vocabulary needs at least {BYTE_ALPHABET} tokens, got {vocab_size}")
        if not text:
            raise MiniGPTError("cannot train a BPE tokenizer on an empty text")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
        # line by line: the same pre-tokenization, and the library can count words in parallel
        interruptibly(lambda: hf.train_from_iterator(training_pieces(text), trainer, length=len(text) // MAX_PIECE
                                                     + 1))
        return cls(hf)

    @classmethod
    def from_dict(cls, data: dict) -> BPETokenizer:
        try:
            return cls(HFTokenizer.from_str(json.dumps(data["tokenizer"])))
        except Exception as exc:  # a missing key, or the bare Exception that tokenizers raises
            raise MiniGPTError(f"tokenizer file holds an invalid BPE tokenizer: {exc}") from None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(check_utf8(text)).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps({"type": "bpe", "tokenizer": json.loads(self.hf.to_str())}, ensure_ascii=False)

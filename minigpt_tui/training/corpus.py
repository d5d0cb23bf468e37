"""Choosing the text a command works on: --data, --dataset, the run's own source, or the default."""

from __future__ import annotations

from pathlib import Path

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.data import read_corpus, split_text
from minigpt_tui.training.datasets import Corpus, dataset_of_source, default_corpus, load_dataset
from minigpt_tui.training.runs import Run


def resolve_corpus(data: Path | None, dataset: str | None) -> tuple[Corpus, str | None]:
    """The corpus, and a note for the user when the default was chosen for them."""
    if data is not None and dataset is not None:
        raise MiniGPTError("give --data or --dataset, not both")
    if data is not None:
        return read_corpus(data), None
    if dataset is not None:
        return load_dataset(dataset), None
    return default_corpus()


def corpus_for_run(run: Run, data: Path | None, dataset: str | None) -> Corpus:
    """The text a run was trained on, unless --data/--dataset names another."""
    if data is not None or dataset is not None:
        return resolve_corpus(data, dataset)[0]
    dataset = dataset_of_source(run.data_source)
    if dataset is not None:
        return load_dataset(dataset)
    if Path(run.data_source).exists():
        return read_corpus(Path(run.data_source))
    raise MiniGPTError(f"the run's corpus {run.data_source} is gone; pass --data PATH or --dataset NAME")


def corpus_splits(run: Run, data: Path | None = None, dataset: str | None = None) -> tuple[str, str]:
    """The train and validation text of the run's corpus."""
    return split_text(corpus_for_run(run, data, dataset).text)


def training_text(run: Run, data: Path | None = None, dataset: str | None = None) -> str:
    """The train split of the run's corpus: what "a word found in the training text" is checked against."""
    return corpus_splits(run, data, dataset)[0]

import math

import numpy as np
import pytest

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.temperature import (
    SampleTrace,
    parse_temperatures,
    sample_batch_with_scores,
    sample_with_scores,
    summarize,
    temperature_ablation,
)
from minigpt_tui.training.config import build_config
from minigpt_tui.training.data import split_text
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.runs import load_model, open_run
from minigpt_tui.training.sampling import SamplingParams
from minigpt_tui.training.trainer import new_training

PROMPT = "to be"
TEXT = "to be or not to be, that is the question.\nwhether tis nobler in the mind to suffer.\n" * 40


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = build_config("tiny", overrides={"max_iters": 60, "eval_interval": 30, "eval_iters": 2, "device": "cpu"})
    new_training(config, Corpus(TEXT, "test"), out).run()
    run = open_run(out)
    model, _ = load_model(run)
    return run, model


def test_temperature_ablation_rows_are_sane(tiny_run):
    run, model = tiny_run
    train_text, _ = split_text(TEXT)
    rows = temperature_ablation(model, run.tokenizer, train_text, [0.5, 1.0, 1.5], samples=2, length=60, seed=3,
                                prompt=PROMPT)
    assert [r.temperature for r in rows] == [0.5, 1.0, 1.5]
    for row in rows:
        assert len(row.samples) == 2 and all(len(s) == 60 for s in row.samples)  # char tokenizer: 1 token = 1 char
        assert 0 < row.mean_nll < math.log(run.tokenizer.vocab_size) + 5
        assert 0 < row.mean_entropy <= math.log(run.tokenizer.vocab_size) + 1e-9
        for value in (row.distinct_1, row.distinct_2, row.distinct_3, row.repeated_ngram_rate, row.known_word_share):
            assert 0.0 <= value <= 1.0
    # flattening the distribution raises its entropy; sampling from it makes the text less likely at T=1
    assert rows[0].mean_entropy < rows[1].mean_entropy < rows[2].mean_entropy
    assert rows[0].mean_nll < rows[2].mean_nll


def test_same_seed_same_samples_and_greedy_has_zero_entropy(tiny_run):
    run, model = tiny_run
    a = temperature_ablation(model, run.tokenizer, TEXT, [0.8], samples=1, length=20, seed=5, prompt=PROMPT)
    b = temperature_ablation(model, run.tokenizer, TEXT, [0.8], samples=1, length=20, seed=5, prompt=PROMPT)
    assert a == b
    greedy = temperature_ablation(model, run.tokenizer, TEXT, [0.0], samples=2, length=20, seed=5, prompt=PROMPT)[0]
    assert greedy.mean_entropy == 0.0
    assert greedy.samples[0] == greedy.samples[1]


def test_should_stop_cancels_between_tokens(tiny_run):
    run, model = tiny_run
    calls = []

    def stop_after_first_temperature():  # polled before each token of a batch: 5 tokens, then the next batch
        calls.append(1)
        return len(calls) > 5

    rows = temperature_ablation(model, run.tokenizer, TEXT, [0.5, 1.0], samples=2, length=5, prompt=PROMPT,
                                should_stop=stop_after_first_temperature)
    assert [r.temperature for r in rows] == [0.5]
    assert len(calls) == 6


def test_bad_input_is_a_minigpt_error(tiny_run):
    run, model = tiny_run
    with pytest.raises(MiniGPTError):
        temperature_ablation(model, run.tokenizer, TEXT, [-1.0], samples=1, length=5, prompt=PROMPT)
    with pytest.raises(MiniGPTError):
        temperature_ablation(model, run.tokenizer, TEXT, [1.0], samples=1, length=5, prompt="Z")
    with pytest.raises(MiniGPTError):
        parse_temperatures("0.5,hot")
    assert parse_temperatures("0.5, 1,1.5") == [0.5, 1.0, 1.5]


def test_summarize_by_hand():
    traces = [SampleTrace("the cat saw the dog and the cat ran", [1.0, 2.0], [0.5, 0.5]),
              SampleTrace("dog zzq", [3.0], [2.0]),
              SampleTrace("the cat the cat the cat", [2.0], [1.0])]  # a loop: in NLL and entropy, not diversity
    row = summarize(0.7, traces, vocabulary={"the", "cat", "dog"})
    assert row.mean_nll == 2.0
    assert row.mean_entropy == 1.0
    assert row.degenerate == ["", "", "repeats 'the'"] and row.scored_samples == 2
    assert row.distinct_1 == pytest.approx(7 / 11)  # the, cat, saw, dog, and, ran, zzq of 11 words
    assert row.repeated_ngram_rate == pytest.approx(1 / 9)  # (the, cat) repeats once; 8 + 1 bigrams
    assert row.known_word_share == pytest.approx(7 / 11)


def test_cli_ablate_temperature_writes_the_report(tiny_run, tmp_path):
    import json

    from click.testing import CliRunner

    from minigpt_tui.cli import main

    run, _ = tiny_run
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["ablate", "temperature", str(run.path), "--temperatures", "0.5,1.0,1.5",
                                       "--samples", "1", "--length", "30", "--data", str(corpus), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "temperature.json").read_text(encoding="utf-8"))
    assert [row["temperature"] for row in report["rows"]] == [0.5, 1.0, 1.5]
    assert "| 1.5 |" in (out / "temperature.md").read_text(encoding="utf-8")
    assert (out / "temperature-samples.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("params", [SamplingParams(0.9), SamplingParams(1.3, top_k=5), SamplingParams(1.0, top_p=0.8),
                                    SamplingParams(0.0)], ids=["T", "top-k", "top-p", "greedy"])
def test_batched_samples_equal_serial_samples(tiny_run, backend, params):
    """A batch of samples through one KV cache gives sample i exactly as drawn alone with seed + i; 100 tokens
    overflow the 32-token context, so the cache is rebuilt on the way too."""
    run, _ = tiny_run
    model, _ = load_model(run, backend=backend)
    prompt = run.tokenizer.encode("to be")
    seeds = [7, 8, 9, 10]
    batched = sample_batch_with_scores(model, run.tokenizer, [prompt] * 4, 100, params, seeds)
    serial = [sample_with_scores(model, run.tokenizer, prompt, 100, params, seed) for seed in seeds]
    assert [t.text for t in batched] == [t.text for t in serial]
    assert len({t.text for t in serial}) == (1 if params.temperature == 0 else 4)  # the seeds do differ
    for b, s in zip(batched, serial, strict=True):
        assert np.allclose(b.nlls, s.nlls, rtol=1e-4) and np.allclose(b.entropies, s.entropies, rtol=1e-4)


def test_ablation_rows_hold_the_serial_samples(tiny_run):
    run, model = tiny_run
    rows = temperature_ablation(model, run.tokenizer, TEXT, [0.7], samples=3, length=40, seed=2, prompt="to")
    prompt = run.tokenizer.encode("to")
    assert rows[0].samples == [sample_with_scores(model, run.tokenizer, prompt, 40, SamplingParams(0.7), 2 + i).text
                               for i in range(3)]


def test_a_batch_needs_one_seed_per_prompt_of_one_length(tiny_run):
    run, model = tiny_run
    ids = run.tokenizer.encode("to be")
    with pytest.raises(MiniGPTError):
        sample_batch_with_scores(model, run.tokenizer, [ids, ids[:2]], 5, SamplingParams(1.0), [1, 2])
    with pytest.raises(MiniGPTError):
        sample_batch_with_scores(model, run.tokenizer, [ids, ids], 5, SamplingParams(1.0), [1])


def test_whitespace_only_samples_are_flagged_and_score_no_diversity():
    """The misleading case: every T=0.5 sample 400 spaces. It used to report distinct-1 0.750 and 93.8% known
    words (the few words of other samples); now the blanks are flagged and figures cover text only."""
    from minigpt_tui.experiments.temperature import degenerate_cell, sample_table_markdown, temperature_table_markdown

    blank = [SampleTrace(" " * 400, [0.1] * 400, [0.2] * 400) for _ in range(3)]
    row = summarize(0.5, blank, vocabulary={"the", "king"})
    assert row.degenerate == ["whitespace only"] * 3 and row.scored_samples == 0
    assert all(math.isnan(v) for v in (row.distinct_1, row.distinct_2, row.repeated_ngram_rate, row.known_word_share))
    assert degenerate_cell(row) == "3/3: whitespace only"
    table = temperature_table_markdown([row])
    assert "| 3/3: whitespace only | 0 of 3 | n/a | n/a | n/a | n/a | n/a |" in table
    samples = sample_table_markdown([row])
    assert "(degenerate: whitespace only)" in samples and "[400 whitespace characters]" in samples

    mixed = summarize(0.5, [*blank, SampleTrace("the king the queen", [1.0], [1.0])], vocabulary={"the", "king"})
    assert mixed.scored_samples == 1 and degenerate_cell(mixed) == "3/4: whitespace only"
    assert mixed.distinct_1 == pytest.approx(3 / 4) and mixed.known_word_share == pytest.approx(3 / 4)
    assert "| 1 of 4 |" in temperature_table_markdown([mixed])


def test_default_prompt_is_a_line_start_of_the_validation_text():
    from minigpt_tui.experiments.temperature import default_prompt

    assert default_prompt("tail of a line\n\n   indented\nKING RICHARD: now is the winter of our discontent\n") == \
        "KING RICHARD: now is the"
    assert default_prompt("x\nShort line\n") == "Short line"
    with pytest.raises(MiniGPTError, match="give --prompt"):
        default_prompt("only a partial line")

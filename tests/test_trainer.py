"""The training loop: events, run folder, exact resume, overfitting, and divergence."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest
from conftest import make_corpus_text, tiny_config, train_tiny

from backends.base import StepResult
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.checkpoint import load_checkpoint
from minigpt_tui.training.data import read_corpus
from minigpt_tui.training.events import CheckpointEvent, DoneEvent, EvalEvent, StepEvent
from minigpt_tui.training.runs import load_model, open_run, read_metrics
from minigpt_tui.training.trainer import new_training, resume_training


def test_events_and_run_folder(tmp_path, corpus_path):
    trainer, done, events = train_tiny(tmp_path / "run", corpus_path, tiny_config(max_iters=6, eval_interval=4))
    assert done.reason == "finished" and done.step == 6 and events[-1] == done
    assert [e.step for e in events if isinstance(e, StepEvent)] == list(range(1, 7))
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert [e.step for e in evals] == [0, 4, 6]
    for e in evals:
        assert e.val_perplexity == pytest.approx(math.exp(e.val_loss))
        assert e.val_bits_per_char == pytest.approx(e.val_loss / math.log(2))  # one token per character
    assert done.best_val_loss == min(e.val_loss for e in evals)
    saved = {(e.step, e.kind) for e in events if isinstance(e, CheckpointEvent)}
    assert {(0, "latest"), (4, "latest"), (6, "latest"), (0, "best")} <= saved

    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"config.json", "tokenizer.json", "metrics.jsonl", "checkpoints", ".lock",
                                             ".lock.owner", "snapshots"}  # snapshots: on by default at this size
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step-0000000", "step-0000004", "step-0000006"]
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"latest", "best"}
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["max_iters"] == 6
    assert config["config"]["model"]["vocab_size"] == trainer.backend.config.vocab_size
    records = read_metrics(run / "metrics.jsonl")
    assert records.evals == evals  # the metrics records are the events, field for field
    assert [r.step for r in records.evals] == [0, 4, 6]
    assert [r.step for r in records.steps] == [2, 4, 6]
    assert load_checkpoint(run / "checkpoints" / "latest").state.step == 6


def test_same_seed_same_weights(tmp_path, corpus_path):
    config = tiny_config(max_iters=3, dropout=0.1)
    first = train_tiny(tmp_path / "a", corpus_path, config)[0].backend.get_weights()
    second = train_tiny(tmp_path / "b", corpus_path, config)[0].backend.get_weights()
    other = train_tiny(tmp_path / "c", corpus_path, config.replace(seed=7))[0].backend.get_weights()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert any(not np.array_equal(first[n], other[n]) for n in first)


def stop_at(step: int):
    def callback(event):
        if isinstance(event, StepEvent) and event.step == step:
            trainer_holder[0].request_stop()

    trainer_holder: list = []
    return callback, trainer_holder


def test_resume_continues_exactly(tmp_path, corpus_path):
    # dropout > 0 and gradient accumulation: the dropout RNG, the samplers and AdamW must all be restored
    config = tiny_config(max_iters=10, dropout=0.2, grad_accum_steps=2, eval_interval=3, warmup_iters=3)
    straight, straight_done, _ = train_tiny(tmp_path / "straight", corpus_path, config)
    assert straight_done.reason == "finished"

    corpus = read_corpus(corpus_path)
    first = new_training(config, corpus, tmp_path / "resumed")
    callback, holder = stop_at(5)
    holder.append(first)
    first.callbacks.append(callback)
    stopped = first.run()
    assert stopped.reason == "stopped" and stopped.step == 5
    assert f"--resume {tmp_path / 'resumed'}" in stopped.message
    del first

    second = resume_training(tmp_path / "resumed", corpus, {})
    assert second.step == 5
    resumed_done = second.run()
    assert resumed_done.reason == "finished" and resumed_done.step == 10

    expected, actual = straight.backend.get_weights(), second.backend.get_weights()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    assert resumed_done.best_val_loss == straight_done.best_val_loss

    def losses(run):
        records = read_metrics(tmp_path / run / "metrics.jsonl")
        return [(r.kind, r.step, getattr(r, "loss", None), getattr(r, "val_loss", None)) for r in records.records]

    assert losses("resumed") == losses("straight")


def test_resume_without_dropout_rng_restore_would_differ(tmp_path, corpus_path):
    """Guards the test above: with dropout, a resume that forgot the RNG state would not match."""
    config = tiny_config(max_iters=4, dropout=0.2, eval_interval=100)
    straight = train_tiny(tmp_path / "straight", corpus_path, config)[0].backend.get_weights()
    corpus = read_corpus(corpus_path)
    first = new_training(config, corpus, tmp_path / "resumed")
    callback, holder = stop_at(2)
    holder.append(first)
    first.callbacks.append(callback)
    first.run()
    second = resume_training(tmp_path / "resumed", corpus, {})
    second.backend.generator.manual_seed(12345)  # lose the restored dropout state
    second.run()
    resumed = second.backend.get_weights()
    assert any(not np.array_equal(resumed[n], straight[n]) for n in straight)


def test_resume_refuses_to_change_the_shape(trained_run, corpus_path):
    with pytest.raises(MiniGPTError, match="cannot change n_layer"):
        resume_training(trained_run, read_corpus(corpus_path), {"n_layer": 3})


def test_resume_can_extend_training(trained_run, corpus_path):
    trainer = resume_training(trained_run, read_corpus(corpus_path), {"max_iters": 11})
    assert trainer.step == 8
    done = trainer.run()
    assert done.step == 11 and done.reason == "finished"
    assert json.loads((trained_run / "config.json").read_text())["config"]["max_iters"] == 11


def unigram_entropy(text: str) -> float:
    counts = collections.Counter(text)
    return -sum(c / len(text) * math.log(c / len(text)) for c in counts.values())


def test_tiny_model_overfits_tiny_corpus(tmp_path):
    text = make_corpus_text(n_lines=6) * 12  # ~2.6 KB: six lines repeated, memorisable
    path = tmp_path / "small.txt"
    path.write_text(text)
    config = tiny_config(max_iters=200, learning_rate=1e-2, min_lr=1e-3, warmup_iters=10, block_size=32,
                         batch_size=8, eval_interval=200, eval_iters=4)
    _, done, events = train_tiny(tmp_path / "run", path, config)
    evals = [e for e in events if isinstance(e, EvalEvent)]
    first, last = evals[0], evals[-1]
    entropy = unigram_entropy(text)  # the best loss a model that ignores context can reach (~3.0 nats)
    assert first.train_loss > 0.9 * entropy
    assert last.train_loss < 0.25 * entropy
    assert last.val_loss < 0.25 * entropy
    assert done.reason == "finished"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus_path):
    config = tiny_config(max_iters=10, eval_interval=2)
    trainer = new_training(config, read_corpus(corpus_path), tmp_path / "run")
    real_step = trainer.backend.train_step

    def poisoned(micro_batches, lr):
        result = real_step(micro_batches, lr)
        return StepResult(float("nan"), result.grad_norm) if trainer.step == 4 else result

    trainer.backend.train_step = poisoned
    events = []
    trainer.callbacks.append(events.append)
    done = trainer.run()
    assert done.reason == "diverged" and done.step == 4
    assert "loss became nan at step 5" in done.message and "last good checkpoint" in done.message
    assert isinstance(events[-1], DoneEvent)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest").state.step == 4
    assert max(e.step for e in events if isinstance(e, StepEvent)) == 4


def test_huge_learning_rate_diverges_and_the_kept_checkpoint_still_works(tmp_path, corpus_path):
    # after one step at lr 1e9 the weights are finite but huge: the evaluation, not the step, sees nan first
    config = tiny_config(max_iters=50, learning_rate=1e9, min_lr=0.0, warmup_iters=0, eval_interval=1)
    trainer, done, _ = train_tiny(tmp_path / "run", corpus_path, config)
    assert done.reason == "diverged"
    assert "became nan" in done.message and "last good checkpoint" in done.message
    model, ckpt = load_model(open_run(tmp_path / "run"), which="latest")
    assert ckpt.state.step < config.max_iters
    inputs, targets = trainer.samplers.eval_val.next()
    assert math.isfinite(model.eval_loss(inputs, targets))
    assert math.isfinite(done.best_val_loss)


def test_a_failed_resume_leaves_the_run_config_as_it_was(tmp_path, corpus_path):
    out = tmp_path / "run"
    train_tiny(out, corpus_path, tiny_config(max_iters=4))
    before = (out / "config.json").read_text()
    with pytest.raises(MiniGPTError, match="unknown backend"):
        resume_training(out, read_corpus(corpus_path), {"backend": "nope", "max_iters": 8})
    assert (out / "config.json").read_text() == before
    assert load_model(open_run(out))[0].name == "torch"


def test_extending_max_iters_keeps_the_original_learning_rate_schedule(tmp_path, corpus_path):
    out = tmp_path / "run"
    train_tiny(out, corpus_path, tiny_config(max_iters=6, warmup_iters=2, min_lr=1e-4))
    trainer = resume_training(out, read_corpus(corpus_path), {"max_iters": 12})
    assert trainer.config.lr_decay_iters == 6
    assert trainer.lr_at(6) == pytest.approx(1e-4) and trainer.lr_at(11) == pytest.approx(1e-4)


def test_a_character_seen_only_in_the_val_split_is_in_the_vocabulary(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus_text() + "\nZebra quartz!" + "#" * 3, encoding="utf-8")  # '#' only at the end
    trainer = new_training(tiny_config(max_iters=2), read_corpus(corpus), tmp_path / "run")
    assert "#" in trainer.run_dir.tokenizer.decode(list(range(trainer.run_dir.tokenizer.vocab_size)))


def test_the_corpus_path_is_stored_absolute(tmp_path, corpus_path, monkeypatch):
    monkeypatch.chdir(corpus_path.parent)
    out = tmp_path / "run"
    train_tiny(out, corpus_path.name, tiny_config(max_iters=2))
    assert open_run(out).data_source == str(corpus_path.resolve())

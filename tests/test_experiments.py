import math
from types import SimpleNamespace

import numpy as np
import pytest

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.probes import length_generalisation, position_losses
from minigpt_tui.experiments.reports import results_markdown, write_ablation_report
from minigpt_tui.experiments.variants import context_variants, posenc_variants, run_variants, tokenizer_variants
from minigpt_tui.training.config import build_config
from minigpt_tui.training.datasets import Corpus

TEXT = "to be or not to be, that is the question.\nwhether tis nobler in the mind to suffer.\n" * 40


def test_context_variants_keep_tokens_per_step():
    base = build_config("tiny")
    variants = context_variants(base, [16, 32, 64], 256)
    shapes = [(n, c.model.block_size, c.batch_size) for n, c in variants]
    assert shapes == [("ctx16", 16, 16), ("ctx32", 32, 8), ("ctx64", 64, 4)]
    assert {c.tokens_per_step for _, c in variants} == {256}
    with pytest.raises(MiniGPTError, match="multiple"):
        context_variants(base, [48], 256)


def test_tokenizer_variants_change_only_the_tokenizer():
    base = build_config("tiny")
    variants = tokenizer_variants(base, [256, 512])
    assert [(n, c.tokenizer, c.model.vocab_size) for n, c in variants] == [
        ("char", "char", base.model.vocab_size), ("bpe256", "bpe", 256), ("bpe512", "bpe", 512)]
    assert {(c.max_iters, c.tokens_per_step, c.model.n_layer) for _, c in variants} == {
        (base.max_iters, base.tokens_per_step, base.model.n_layer)}


def test_position_losses_of_a_uniform_model_are_log_vocab():
    vocab = 5

    class Uniform:
        config = SimpleNamespace(block_size=4)

        def logits(self, inputs):
            return np.zeros((*inputs.shape, vocab), np.float32)

    tokens = np.arange(100) % vocab
    losses = position_losses(Uniform(), tokens, window=8)
    assert losses.shape == (8,)
    assert np.allclose(losses, math.log(vocab))


def test_posenc_ablation_in_process_and_resumed(tmp_path):
    base = build_config("tiny", overrides={"max_iters": 20, "eval_interval": 20, "eval_iters": 1, "block_size": 16,
                                           "device": "cpu"})
    corpus = Corpus(TEXT, "test")
    results = run_variants(posenc_variants(base), corpus, tmp_path, isolate=False, extra_scores=length_generalisation)
    learned, sinusoidal = results
    assert learned.pos_encoding == "learned" and sinusoidal.pos_encoding == "sinusoidal"
    assert list(learned.extra["mean_loss_by_span"]) == ["0-16"]
    assert list(sinusoidal.extra["mean_loss_by_span"]) == ["0-16", "16-32", "32-64"]
    assert len(sinusoidal.extra["loss_by_position"]) == 64
    for r in results:
        assert 0 < r.val_bpc < 10 and r.tokens_seen == 20 * 8 * 16 and r.peak_rss_mb > 0
        assert (tmp_path / r.name / "result.json").is_file()
    again = run_variants(posenc_variants(base), corpus, tmp_path, isolate=False, extra_scores=length_generalisation)
    assert again == results  # read back, not retrained
    paths = write_ablation_report("posenc", results, tmp_path / "report", {})
    assert {p.name for p in paths} >= {"results.json", "results.md", "posenc-position.png", "posenc-runs-loss.png"}
    assert "| sinusoidal | sinusoidal |" in results_markdown("posenc", results)

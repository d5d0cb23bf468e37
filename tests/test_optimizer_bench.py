"""``minigpt bench --optimizer-step`` and the split of a training step it times (never its figures: those
come from a quiet machine, not a test)."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from test_cli import assert_one_line_error, invoke

from backends.base import ModelConfig, OptimConfig, init_weights
from backends.numpy_backend import NumpyBackend
from minigpt_tui.experiments.bench import OPTIMIZER_VARIANTS, UPDATES_PER_ROUND, bench_optimizer_step
from minigpt_tui.training.config import preset

CONFIG = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def backends():
    from backends.torch_backend import TorchBackend

    return [(NumpyBackend, {}), (TorchBackend, {"device": "cpu"})]


@pytest.mark.parametrize("optim", [OptimConfig(grad_clip=0.5), OptimConfig(optimizer="muon", muon_ns_steps=3,
                                                                          muon_momentum_warmup=3)])
def test_a_split_step_is_the_training_step(optim):
    """accumulate_gradients + optimizer_update is train_step, bit for bit, in both backends; a second
    optimizer_update repeats the update from the same gradient (what the benchmark times)."""
    rng = np.random.default_rng(0)
    steps = [[(ids[:, :-1], ids[:, 1:]) for ids in rng.integers(0, 11, (2, 3, 9))] for _ in range(3)]
    for cls, kw in backends():
        whole, split = (cls(CONFIG, init_weights(CONFIG, 0), optim, **kw) for _ in range(2))
        for micro in steps:
            expected = whole.train_step(micro, 1e-2)
            assert split.accumulate_gradients(micro) == expected
            split.optimizer_update(1e-2)
        for name, value in whole.get_weights().items():
            np.testing.assert_array_equal(split.get_weights()[name], value, err_msg=f"{cls.name} {name}")
        before = split.get_weights()["h.0.mlp.c_fc.weight"].copy()  # torch's may be a view of the parameter
        split.optimizer_update(1e-2)
        assert np.abs(split.get_weights()["h.0.mlp.c_fc.weight"] - before).max() > 1e-5


def test_the_optimizer_bench_times_every_variant_and_derives_the_ratios():
    bench = bench_optimizer_step("numpy", preset("tiny"), rounds=3)
    assert [t.variant for t in bench.timings] == [label for label, _ in OPTIMIZER_VARIANTS]
    assert bench.timings[0].variant == "AdamW" and bench.timings[0].ratio == 1.0
    assert bench.rounds == 3 and bench.device == "cpu" and bench.threads >= 1
    for t in bench.timings:
        assert len(t.rounds_ms) == 3 and all(ms > 0 for ms in t.rounds_ms)
        assert t.ms == statistics.median(t.rounds_ms)
        assert t.ratio == pytest.approx(t.ms / bench.timings[0].ms) and t.ratio > 0


def test_bench_optimizer_step_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = invoke("bench", "--optimizer-step", "--preset", "tiny", "--iters", "2", "--device", "cpu",
                    "--json", out)
    assert result.exit_code == 0, (result.output, result.stderr)
    document = json.loads(out.read_text())
    assert document["preset"] == "tiny" and document["updates_per_round"] == UPDATES_PER_ROUND
    torch_bench = document["results"]["torch"]
    assert torch_bench["rounds"] == 2 and torch_bench["threads"] == 1  # MINIGPT_THREADS=1 in the tests
    adamw = torch_bench["timings"][0]["ms"]
    for timing in torch_bench["timings"]:
        assert timing["ratio"] == pytest.approx(timing["ms"] / adamw)
        assert f"{timing['ms']:.2f}" in result.stdout and timing["variant"] in result.stdout
    assert "x AdamW" in result.stdout


def test_optimizer_step_and_contention_are_not_asked_together():
    assert_one_line_error(invoke("bench", "--optimizer-step", "--contention"), "one at a time")

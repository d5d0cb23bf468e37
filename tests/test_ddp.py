"""Data-parallel training: two gloo processes under torch's own launcher equal one process with the global batch.

Each rank trains on its slice of a global batch drawn from one seeded stream, and DDP averages the
gradients, so 2 ranks x batch B must reproduce 1 process x batch 2B up to float32 rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from conftest import tiny_config, train_tiny

from backends.base import init_weights
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.checkpoint import load_checkpoint
from minigpt_tui.training.data import read_corpus
from minigpt_tui.training.distributed import World, start_world, world_from_env
from minigpt_tui.training.events import ThreadsEvent
from minigpt_tui.training.runs import read_metrics
from minigpt_tui.training.trainer import resume_training

RANKS, RANK_BATCH, ACCUM, STEPS = 2, 2, 2, 3
SHARED = dict(grad_accum_steps=ACCUM, max_iters=STEPS, lr_decay_iters=5, eval_interval=2, log_interval=1,
              dropout=0.0, backend="torch", device="cpu")


def launch_ddp(out: Path, corpus: Path, cwd: Path) -> subprocess.CompletedProcess:
    flags = dict(SHARED, batch_size=RANK_BATCH, n_layer=2, n_head=2, n_embd=32, block_size=16, eval_iters=2,
                 warmup_iters=2)
    args = [f"--{name.replace('_', '-')}={value}" for name, value in flags.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={RANKS}", "--standalone",
               "-m", "minigpt_tui", "train", "--headless", "--preset=tiny", f"--data={corpus}", f"--out={out}", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo")
def test_two_gloo_ranks_equal_one_process_with_the_global_batch(tmp_path: Path, corpus_path: Path) -> None:
    workdir = tmp_path / "ddp"
    workdir.mkdir()
    ddp_run = workdir / "run"
    result = launch_ddp(ddp_run, corpus_path, workdir)
    assert result.returncode == 0, result.stdout + result.stderr

    single_config = tiny_config(batch_size=RANKS * RANK_BATCH, **SHARED)
    single_run = tmp_path / "single"
    train_tiny(single_run, corpus_path, single_config)

    ddp_weights = load_checkpoint(ddp_run / "checkpoints" / "latest").weights
    single_weights = load_checkpoint(single_run / "checkpoints" / "latest").weights
    assert ddp_weights.keys() == single_weights.keys()
    for name, value in single_weights.items():
        np.testing.assert_allclose(ddp_weights[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    # the steps moved the weights far more than the tolerance: the comparison is not vacuous
    initial = init_weights(single_config.with_vocab_size(len(single_weights["wte.weight"])).model, single_config.seed)
    assert np.abs(initial["h.0.mlp.c_fc.weight"] - single_weights["h.0.mlp.c_fc.weight"]).max() > 1e-3

    # rank 0 alone wrote: one metrics file, every record once, the global losses of the single run
    assert [p.relative_to(workdir) for p in workdir.rglob("*.jsonl")] == [Path("run/metrics.jsonl")]
    ddp_records, single_records = read_metrics(ddp_run / "metrics.jsonl"), read_metrics(single_run / "metrics.jsonl")
    # the thread count is this process's setting (the CLI's --threads, MINIGPT_THREADS=1 in tests), not the run's
    threads = [r for r in ddp_records.records if isinstance(r, ThreadsEvent)]
    assert [(r.threads, r.reason) for r in threads] == [(1, "fixed")]
    ddp_records.records = [r for r in ddp_records.records if not isinstance(r, ThreadsEvent)]
    assert [(r.kind, r.step) for r in ddp_records.records] == [(r.kind, r.step) for r in single_records.records]
    assert [r.step for r in ddp_records.steps] == list(range(1, STEPS + 1))
    for ddp_record, single_record in zip(ddp_records.records, single_records.records, strict=True):
        for key in ("loss", "train_loss", "val_loss"):
            if hasattr(single_record, key):
                assert getattr(ddp_record, key) == pytest.approx(getattr(single_record, key), rel=1e-5)
    output = result.stdout + result.stderr
    assert output.count(f"finished {STEPS} steps") == 1
    global_tokens = RANKS * RANK_BATCH * ACCUM * 16
    assert f"{global_tokens} tokens/step (batch {RANK_BATCH} x accum {ACCUM} x {RANKS} ranks x block 16)" in output

    # resume the 2-rank checkpoint in one process with the same global batch: it continues exactly
    # like the single-process run does
    corpus = read_corpus(corpus_path)
    more = {"max_iters": STEPS + 2}
    from_ddp = resume_training(ddp_run, corpus, {**more, "batch_size": RANKS * RANK_BATCH})
    from_single = resume_training(single_run, corpus, more)
    for trainer in (from_ddp, from_single):
        assert trainer.run().reason == "finished"
    resumed, reference = from_ddp.backend.get_weights(), from_single.backend.get_weights()
    for name, value in reference.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_each_rank_takes_its_own_rows_of_the_global_batch() -> None:
    inputs, targets = np.arange(12).reshape(6, 2), np.arange(12).reshape(6, 2) + 100
    slices = [World(rank, 3).shard((inputs, targets)) for rank in range(3)]
    assert np.array_equal(np.concatenate([x for x, _ in slices]), inputs)
    assert np.array_equal(np.concatenate([y for _, y in slices]), targets)
    assert np.array_equal(slices[1][0], inputs[2:4])


def test_world_from_env() -> None:
    assert world_from_env({}) == World(0, 1, 0)
    world = world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.is_writer, world.is_distributed) == (3, 4, 1, False, True)
    assert world_from_env({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}).is_writer
    with pytest.raises(MiniGPTError, match="inconsistent"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    with pytest.raises(MiniGPTError, match="integers"):
        world_from_env({"WORLD_SIZE": "two"})


def test_a_single_process_world_agrees_with_itself() -> None:
    world = World()
    assert world.mean([1.5, 2.0]) == [1.5, 2.0]
    assert world.any(True) and not world.any(False)


@pytest.mark.parametrize(("backend", "device", "message"), [
    ("numpy", "cpu", "needs the torch backend"),
    ("torch", "cuda:1", "cuda:LOCAL_RANK"),
    ("torch", "mps", "cuda \\(NCCL\\) or cpu \\(gloo\\)"),
])
def test_unsupported_multi_process_settings_are_refused(monkeypatch, backend: str, device: str, message: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(MiniGPTError, match=message):
        start_world(backend, device)
    assert not dist.is_initialized()

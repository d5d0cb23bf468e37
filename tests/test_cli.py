"""The ``minigpt`` CLI: the happy path, and a one-line ``error:`` with exit code 2 for every bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import TINY

from minigpt_tui.cli import main
from minigpt_tui.training.checkpoint import MODEL_FILE
from minigpt_tui.training.config import field_names
from minigpt_tui.training.data import split_text

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(fragment, lines[0]), (fragment, lines[0])
    assert "Traceback" not in result.output + result.stderr


@pytest.fixture
def paths(workspace, tmp_path):
    """Per-test paths: bad corpora, a copy of the trained run, an unused --out."""
    bad = {
        "empty": b"",
        "blank": b"   \n\n\t",
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20,
        "latin1": "Ça va très bien, merci.\n".encode("latin-1") * 20,
        "short": b"hello there\n" * 20,
    }
    for name, content in bad.items():
        (tmp_path / f"{name}.txt").write_bytes(content)
    (tmp_path / "unknown.toml").write_text("n_layers = 2\n")
    (tmp_path / "not_a_run").mkdir()
    run = tmp_path / "run"
    shutil.copytree(workspace.run, run)
    return SimpleNamespace(tmp=tmp_path, corpus=workspace.corpus, run=run, out=tmp_path / "new_run")


TRAIN_BAD_INPUTS = {
    "missing corpus": (lambda p: ["--data", p.tmp / "absent.txt"], "corpus not found"),
    "empty corpus": (lambda p: ["--data", p.tmp / "empty.txt"], "is empty"),
    "blank corpus": (lambda p: ["--data", p.tmp / "blank.txt"], "is empty"),
    "binary corpus": (lambda p: ["--data", p.tmp / "binary.txt"], "looks binary"),
    "non-UTF-8 corpus": (lambda p: ["--data", p.tmp / "latin1.txt"], "not UTF-8"),
    "folder without text": (lambda p: ["--data", p.tmp / "not_a_run"], "no .txt files"),
    "corpus shorter than the context": (lambda p: ["--data", p.tmp / "short.txt", "--block-size", "32"],
                                        "too few for a context of 32"),
    "n_embd not divisible by n_head": (lambda p: ["--data", p.corpus, "--n-embd", "30", "--n-head", "4"],
                                       r"n_embd \(30\) must be divisible by n_head \(4\)"),
    "zero layers": (lambda p: ["--data", p.corpus, "--n-layer", "0"], "n_layer must be positive"),
    "negative batch": (lambda p: ["--data", p.corpus, "--batch-size", "-2"], "batch_size must be positive"),
    "zero context": (lambda p: ["--data", p.corpus, "--block-size", "0"], "block_size must be positive"),
    "zero iterations": (lambda p: ["--data", p.corpus, "--max-iters", "0"], "max_iters must be positive"),
    "zero channels": (lambda p: ["--data", p.corpus, "--n-embd", "0"], "n_embd must be positive"),
    "negative learning rate": (lambda p: ["--data", p.corpus, "--learning-rate", "-1"], "learning_rate"),
    "not a number": (lambda p: ["--data", p.corpus, "--n-layer", "two"], "'two' is not a valid integer"),
    "unknown preset": (lambda p: ["--data", p.corpus, "--preset", "huge"], "'huge' is not one of"),
    "unknown backend": (lambda p: ["--data", p.corpus, "--backend", "jax"], "unknown backend 'jax'"),
    "unknown device": (lambda p: ["--data", p.corpus, "--device", "tpu"], "unknown device 'tpu'"),
    "unknown dataset": (lambda p: ["--dataset", "wiki"], "'wiki' is not one of"),
    "unknown config field": (lambda p: ["--data", p.corpus, "--config", p.tmp / "unknown.toml"],
                             "unknown field.*n_layers"),
    "missing config file": (lambda p: ["--data", p.corpus, "--config", p.tmp / "absent.toml"], "not found"),
    "data and dataset": (lambda p: ["--data", p.corpus, "--dataset", "python-docs"], "not both"),
    "out already holds a run": (lambda p: ["--data", p.corpus, "--out", p.run], "already holds a run"),
    "out is a file": (lambda p: ["--data", p.corpus, "--out", p.tmp / "short.txt"], "is a file, not a folder"),
    "out inside a file": (lambda p: ["--data", p.corpus, "--out", p.tmp / "short.txt" / "run"],
                          "cannot create the run folder"),
    "config file is a folder": (lambda p: ["--data", p.corpus, "--config", p.tmp], "cannot read config file"),
    "malformed device": (lambda p: ["--data", p.corpus, "--device", "cpu:x"], "invalid device 'cpu:x'"),
    "resume a folder that is not a run": (lambda p: ["--resume", p.tmp / "not_a_run"], "not a minigpt run folder"),
    "resume a missing folder": (lambda p: ["--resume", p.tmp / "nowhere"], "run folder not found"),
    "resume with a new shape": (lambda p: ["--resume", p.run, "--n-layer", "3"], "cannot change n_layer"),
}


@pytest.mark.parametrize("case", TRAIN_BAD_INPUTS, ids=list(TRAIN_BAD_INPUTS))
def test_train_bad_input(paths, case):
    make_args, fragment = TRAIN_BAD_INPUTS[case]
    args = make_args(paths)
    if "--out" not in args and "--resume" not in args:
        args += ["--out", paths.out]
    base = [] if "--resume" in args else ["--preset", "tiny", "--device", "cpu"]
    result = invoke("train", "--headless", *base, *args)
    assert_one_line_error(result, fragment)
    assert not paths.out.exists()  # nothing half-created


def test_without_headless_bad_options_fail_before_the_tui_opens(paths, monkeypatch):
    from minigpt_tui.tui import app

    def must_not_open(*args, **kwargs):
        raise AssertionError("the TUI opened despite a bad option")

    monkeypatch.setattr(app, "create_app", must_not_open)
    assert_one_line_error(invoke("train", "--data", paths.corpus, "--n-layer", "0"), "n_layer must be positive")
    assert_one_line_error(invoke("train", "--resume", paths.run, "--preset", "tiny"), "add --headless")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_train_on_missing_cuda(paths):
    result = invoke("train", "--headless", "--preset", "tiny", "--data", paths.corpus, "--device", "cuda",
                    "--out", paths.out)
    assert_one_line_error(result, "CUDA is not available")


def truncate_best(run: Path) -> None:
    path = run / "checkpoints" / "best" / MODEL_FILE
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def tamper_best(run: Path) -> None:
    path = run / "checkpoints" / "best" / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


SAMPLE_BAD_INPUTS = {
    "negative temperature": (["--temperature", "-0.5"], None, "temperature must be a finite number >= 0"),
    "top-p zero": (["--top-p", "0"], None, r"top-p must be in \(0, 1\]"),
    "top-p above one": (["--top-p", "1.5"], None, r"top-p must be in \(0, 1\]"),
    "top-k zero": (["--top-k", "0"], None, "top-k must be >= 1"),
    "negative token count": (["--max-new-tokens", "-1"], None, "max-new-tokens"),
    "unknown prompt characters": (["--prompt", "Zebra ~"], None,
                                  r"2 character\(s\) outside the model's vocabulary: 'Z', '~'"),
    "unknown backend": (["--backend", "jax"], None, "unknown backend 'jax'"),
    "unknown device": (["--device", "tpu"], None, "unknown device 'tpu'"),
    "malformed device": (["--device", "cpu:x"], None, "invalid device 'cpu:x'"),
    "truncated checkpoint": ([], truncate_best, "corrupt or was modified"),
    "tampered checkpoint": ([], tamper_best, "corrupt or was modified"),
}


@pytest.mark.parametrize("case", SAMPLE_BAD_INPUTS, ids=list(SAMPLE_BAD_INPUTS))
def test_sample_bad_input(paths, case):
    args, damage, fragment = SAMPLE_BAD_INPUTS[case]
    if damage:
        damage(paths.run)
    assert_one_line_error(invoke("sample", paths.run, "--max-new-tokens", "5", *args), fragment)


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_a_folder_that_is_not_a_run(paths, command):
    assert_one_line_error(invoke(command, paths.tmp / "not_a_run"), "not a minigpt run folder")
    assert_one_line_error(invoke(command, paths.tmp / "nowhere"), "run folder not found")
    assert_one_line_error(invoke(command, paths.corpus), "is not a folder")


@pytest.mark.parametrize("file, content, fragment", [
    ("config.json", "{not json", "config.json is corrupt"),
    ("config.json", "{}", "config.json: field config is missing"),
    ("config.json", '{"config": "tiny"}', "config.json: config must be an? dict"),
    ("config.json", '{"config": {"model": {"n_head": 3.5}}}', "config.json: config: model: n_head must be an int"),
    ("tokenizer.json", None, "cannot read tokenizer"),
    ("tokenizer.json", '{"type": "words"}', "not a minigpt tokenizer"),
])
def test_a_damaged_run_folder(paths, file, content, fragment):
    if content is None:
        (paths.run / file).unlink()
    else:
        (paths.run / file).write_text(content)
    for command in ("sample", "eval"):
        assert_one_line_error(invoke(command, paths.run), fragment)


@pytest.mark.parametrize("damage", [truncate_best, tamper_best])
def test_eval_refuses_a_damaged_checkpoint(paths, damage):
    damage(paths.run)
    assert_one_line_error(invoke("eval", paths.run, "--data", paths.corpus), "corrupt or was modified")


def test_eval_when_the_corpus_is_gone(paths):
    config = json.loads((paths.run / "config.json").read_text())
    config["data_source"] = str(paths.tmp / "moved.txt")
    (paths.run / "config.json").write_text(json.dumps(config))
    assert_one_line_error(invoke("eval", paths.run), "corpus .* is gone; pass --data")


def test_unknown_command():
    assert_one_line_error(invoke("fly"), "No such command 'fly'")


def test_train_sample_eval(tmp_path, workspace):
    config_file = tmp_path / "run.toml"
    config_file.write_text('preset = "tiny"\nmax_iters = 6\neval_interval = 3\nn_layer = 1\nlearning_rate = 5e-3\n')
    out = tmp_path / "run"
    result = invoke("train", "--headless", "--config", config_file, "--data", workspace.corpus, "--out", out,
                    "--device", "cpu", "--batch-size", "4", "--block-size", "16", "--eval-iters", "1", "--n-layer", "2")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "step 6/6: loss" in result.stdout and "eval step 6:" in result.stdout  # plain lines: not a terminal
    assert "finished 6 steps" in result.stdout
    train = json.loads((out / "config.json").read_text())["config"]
    assert (train["max_iters"], train["learning_rate"], train["batch_size"]) == (6, 5e-3, 4)
    assert train["model"]["n_layer"] == 2

    sampled = invoke("sample", out, "--prompt", "The ", "--max-new-tokens", "40", "--seed", "3", "--top-k", "5")
    assert sampled.exit_code == 0, sampled.stderr
    text = sampled.stdout
    assert text.startswith("The ") and text.endswith("\n") and len(text) == len("The ") + 40 + 1
    assert set(text[:-1]) <= set(workspace.corpus.read_text())
    again = invoke("sample", out, "--prompt", "The ", "--max-new-tokens", "40", "--seed", "3", "--top-k", "5")
    assert again.stdout == text  # the seed makes samples reproducible
    greedy = [invoke("sample", out, "--temperature", "0", "--max-new-tokens", "20").stdout for _ in range(2)]
    assert greedy[0] == greedy[1]

    scores = tmp_path / "scores.json"
    evaluated = invoke("eval", out, "--json", scores)
    assert evaluated.exit_code == 0, evaluated.stderr
    numbers = json.loads(scores.read_text())
    val_text = split_text(workspace.corpus.read_text())[1]
    assert numbers["tokens"] == len(val_text) - 1  # every val token predicted once
    assert f"val loss {numbers['val_loss']:.4f}" in evaluated.stdout
    assert numbers["val_bits_per_char"] == pytest.approx(numbers["val_loss"] / 0.6931471805599453)


def test_resume_from_the_cli(paths):
    result = invoke("train", "--headless", "--resume", paths.run, "--max-iters", "6")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "steps 4 -> 6" in result.stderr and "finished 6 steps" in result.stdout
    assert json.loads((paths.run / "checkpoints" / "latest" / "state.json").read_text())["step"] == 6


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_and_says_how_to_resume(tmp_path, workspace, monkeypatch, signum):
    from minigpt_tui.training.events import StepEvent
    from minigpt_tui.training.trainer import Trainer

    real_emit = Trainer.emit

    def emit_then_signal(self, event):
        real_emit(self, event)
        if isinstance(event, StepEvent) and event.step == 3:
            # a default handler here would kill the test process rather than fail the test
            assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.default_int_handler)
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Trainer, "emit", emit_then_signal)
    out = tmp_path / "run"
    result = invoke("train", "--headless", *TINY, "--max-iters", "1000", "--data", workspace.corpus, "--out", out)
    assert result.exit_code == 130, (result.output, result.stderr)
    assert f"stopped at step 3; resume with: minigpt train --headless --resume {out}" in result.stderr
    assert json.loads((out / "checkpoints" / "latest" / "state.json").read_text())["step"] == 3
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)  # handlers restored


def test_divergence_stops_with_a_clear_message(tmp_path, workspace):
    out = tmp_path / "run"
    result = invoke("train", "--headless", *TINY, "--max-iters", "20", "--learning-rate", "1e9", "--min-lr", "0",
                    "--warmup-iters", "0", "--eval-interval", "1", "--data", workspace.corpus, "--out", out)
    assert result.exit_code == 1
    assert "became nan" in result.stderr and "last good checkpoint is kept" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert json.loads((out / "checkpoints" / "latest" / "state.json").read_text())["step"] == 0


def test_every_config_field_has_a_flag():
    help_text = invoke("train", "--help").stdout
    for name in field_names():
        assert f"--{name.replace('_', '-')}" in help_text, name


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from minigpt_tui.cli import main\n"
        "for args in (['--help'], ['train', '--help'], ['sample', '--help'], ['eval', '--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, args\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m == 'minigpt_tui.training.trainer'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"

"""``minigpt report``: the write-up of a run on a corpus that is not Shakespeare, its cache, and bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY, make_corpus_text

from minigpt_tui.cli import main

FAST = ["--samples", "1", "--length", "12"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def train(root: Path, corpus: Path, name: str, *extra: str) -> Path:
    out = root / name
    result = invoke("train", "--headless", *TINY, "--max-iters", "4", "--eval-interval", "2", "--data", corpus,
                    "--out", out, *extra)
    assert result.exit_code == 0, (result.output, result.stderr)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run on generated plain lines (no speakers, no Shakespeare), one with a shorter context, one on another text."""
    root = tmp_path_factory.mktemp("report")
    corpus = root / "notes.txt"
    corpus.write_text(make_corpus_text(150, seed=4), encoding="utf-8")
    other = root / "other.txt"
    other.write_text(make_corpus_text(150, seed=9), encoding="utf-8")
    return {"root": root, "corpus": corpus, "run": train(root, corpus, "run"),
            "short": train(root, corpus, "short", "--block-size", "8"), "other": train(root, other, "other"),
            "bpe": train(root, corpus, "bpe", "--tokenizer", "bpe", "--vocab-size", "260")}


def linked_images(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)


def test_report_of_a_run_on_generated_text(runs, tmp_path):
    out = tmp_path / "write-up"
    result = invoke("report", runs["run"], "--out", out, *FAST)
    assert result.exit_code == 0, (result.output, result.stderr)
    report = (out / "report.md").read_text(encoding="utf-8")
    images = linked_images(report)
    assert {"loss.png", "perplexity.png", "bpc.png", "temperature-samples.png", "exposure.png", "heads.png"} <= set(
        images)
    for name in images:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for t in ("0.5", "1", "1.5"):
        assert re.search(rf"^\| {t} \| \d+\.\d+ \| \d+\.\d+ \| \d/1", report, re.MULTILINE), t
    assert "whole validation split" in report and "minigpt eval" in report
    assert "trainer's estimate at step 4" in report
    assert "Prompt: `" in report and 'prompt: "' in result.stderr  # the prompt is always said
    assert "| speaker name |" not in report and "no \"NAME:\" speaker lines" in report  # not a play
    questions = ["Why does teacher forcing work despite exposure bias?",
                 "How does temperature reshape the distribution?", "What does a smaller or larger context trade?"]
    for question in questions:
        assert question in report
    # every answer space is empty: the next thing after it is the next question, or the end
    after = report.split("**Your answer:**")[1:]
    assert len(after) == 3 and all(not part.strip() or part.lstrip().startswith("###") for part in after)
    assert not list(out.glob(".staging-*"))


def test_a_rerun_reuses_the_cache_and_says_so(runs, tmp_path):
    out = tmp_path / "again"
    first = invoke("report", runs["run"], "--out", out, *FAST)
    assert first.exit_code == 0 and "reused" not in first.stderr
    second = invoke("report", runs["run"], "--out", out, *FAST)
    assert second.exit_code == 0, second.stderr
    assert second.stderr.count("reused") == 4  # eval, temperature, exposure, heads
    other = invoke("report", runs["run"], "--out", out, "--samples", "1", "--length", "13")
    assert "temperature: computed" in other.stderr and "eval: reused" in other.stderr  # keyed by the options


def test_runs_of_other_contexts_and_tokenizers_are_compared(runs, tmp_path):
    out = tmp_path / "all"
    result = invoke("report", runs["run"], runs["short"], runs["bpe"], "--out", out, *FAST)
    assert result.exit_code == 0, result.stderr
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Comparison of the runs" in report and "### Context sizes" in report
    assert "### Characters vs subwords" in report and "| bpe (260) |" in report.replace("`", "")
    assert {"compare-context.png", "compare-context-cost.png", "compare-loss.png", "compare-tokenizers.png"} <= set(
        linked_images(report))
    assert all((out / name).is_file() for name in linked_images(report))


def test_ctrl_c_keeps_the_finished_computations(runs, tmp_path, monkeypatch):
    import minigpt_tui.experiments.report as report_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "head_roles", interrupted)
    out = tmp_path / "cut"
    result = invoke("report", runs["run"], "--out", out, *FAST)
    assert result.exit_code == 130 and "finished computations are kept" in result.stderr
    kept = sorted(p.name.split("-")[0] for p in (out / "cache").iterdir())
    assert kept == ["eval", "exposure", "temperature"] and not (out / "report.md").exists()


def test_bad_input_is_one_error_line_and_writes_nothing(runs, tmp_path):
    no_checkpoint = tmp_path / "fresh"
    shutil.copytree(runs["run"], no_checkpoint)
    shutil.rmtree(no_checkpoint / "checkpoints")
    (no_checkpoint / "checkpoints").mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        ([runs["run"], runs["other"], "--out", tmp_path / "mixed"], "different corpora"),
        ([no_checkpoint, "--out", tmp_path / "none"], "no checkpoint"),
        ([runs["run"], "--out", runs["run"] / "checkpoints" / "report"], "inside the run folder's checkpoints"),
        ([runs["run"], "--out", blocker / "report"], "is a file, not a folder"),
        ([runs["run"], "--out", blocker], "not a folder"),
        ([runs["run"], "--out", tmp_path / "bad-prompt", "--prompt", "~"], "~"),
    ]
    for args, fragment in cases:
        result = invoke("report", *args, *FAST)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and lines[-1].startswith("error:") and fragment in lines[-1], (args, lines)
        assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in result.output
    for name in ("mixed", "none", "bad-prompt"):
        assert not (tmp_path / name).exists()
    assert not (runs["run"] / "checkpoints" / "report").exists()


def test_progress_off_a_terminal_is_a_few_plain_lines(capsys):
    from minigpt_tui.progress import stage_progress

    with stage_progress(False) as progress:
        for done in range(101):
            progress("temperature samples", done, 100)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "temperature samples: 0/100" and lines[-1] == "temperature samples: 100/100"
    assert len(lines) == 6  # the start, every fifth, the end

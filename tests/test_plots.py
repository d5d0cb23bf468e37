import json

import matplotlib.image
import pytest

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.plots import Chart, Series, export_plots, file_stem, render_text, save_sample_table
from minigpt_tui.training.events import EvalEvent, StepEvent

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(folder, evals=True, scale=1.0):
    folder.mkdir(parents=True)
    records = [StepEvent(step=s, max_iters=100, loss=4.0 * scale - s / 100, lr=1e-3, grad_norm=1.0,
                         tokens_per_s=1000.0, elapsed_s=s / 10, time=float(s)) for s in range(10, 110, 10)]
    if evals:
        records += [EvalEvent(step=s, train_loss=4.0 * scale - s / 50, val_loss=4.1 * scale - s / 50,
                              val_perplexity=60.0 - s / 5, val_bits_per_char=5.9 - s / 40,
                              train_bits_per_char=5.8 - s / 40, best_val_loss=1.0, is_best=True, time=float(s))
                    for s in (0, 50, 100)]
    text = "".join(json.dumps(r.to_record()) + "\n" for r in records) + '{"type": "ev'
    (folder / "metrics.jsonl").write_text(text)
    return folder


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) < 200_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_export_plots_writes_pngs_and_text_with_deterministic_names(tmp_path):
    a = write_run(tmp_path / "runs" / "alpha")
    b = write_run(tmp_path / "runs" / "beta", scale=1.1)
    paths = export_plots([a, b], tmp_path / "viz")
    names = sorted(p.name for p in paths)
    kinds = ("loss", "perplexity", "bpc")
    assert names == sorted(f"alpha+beta-{kind}.{ext}" for kind in kinds for ext in ("png", "txt"))
    for path in paths:
        if path.suffix == ".png":
            assert_png(path)
        else:
            text = path.read_text(encoding="utf-8")
            assert "\x1b[" not in text and "alpha val" in text and "beta val" in text
    first = {p: p.read_bytes() for p in paths}
    assert {p: p.read_bytes() for p in export_plots([a, b], tmp_path / "viz")} == first


def test_a_run_without_evals_is_a_clear_error(tmp_path):
    with pytest.raises(MiniGPTError, match="no evaluations yet"):
        export_plots([write_run(tmp_path / "fresh", evals=False)], tmp_path / "viz")
    with pytest.raises(MiniGPTError, match="not a run folder"):
        export_plots([tmp_path], tmp_path / "viz")


def test_same_folder_names_are_told_apart_by_parent(tmp_path):
    a = write_run(tmp_path / "one" / "run")
    b = write_run(tmp_path / "two" / "run")
    assert export_plots([a, b], tmp_path / "viz")[0].name == "one_run+two_run-loss.png"
    assert file_stem(["a b", "c/d"]) == "a_b+c_d"


def test_text_rendering_shows_title_and_labels():
    chart = Chart("Bits", "step", "bits/char", [Series("val", [0, 1, 2], [3.0, 2.0, 1.5])])
    text = render_text(chart, size=(50, 12))
    assert "Bits" in text and "val" in text and "step" in text


def test_sample_table_png(tmp_path):
    path = save_sample_table([("T = 0.5", "To be\nor not"), ("T = 1.5", "x" * 300)], tmp_path / "s.png")
    assert_png(path)


def test_cli_export_plots_and_its_error(tmp_path):
    from click.testing import CliRunner

    from minigpt_tui.cli import main

    run = write_run(tmp_path / "base")
    result = CliRunner().invoke(main, ["export-plots", str(run), "--out", str(tmp_path / "viz")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "viz" / "base-loss.png").is_file()
    fresh = write_run(tmp_path / "fresh", evals=False)
    result = CliRunner().invoke(main, ["export-plots", str(fresh)])
    assert result.exit_code == 2
    assert "error: run" in result.output and "no evaluations yet" in result.output


def test_cli_export_plots_defaults_to_the_run_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from minigpt_tui.cli import main

    monkeypatch.chdir(tmp_path)
    run = write_run(tmp_path / "base")
    result = CliRunner().invoke(main, ["export-plots", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "plots" / "base-loss.png").is_file()
    assert not (tmp_path / "visualizations").exists()


def test_a_single_value_gets_a_readable_window_not_rounding_noise():
    from minigpt_tui.plots import axis_limits

    lo, hi = axis_limits([6.1245])
    assert hi - lo >= 0.2 and lo < 6.1245 < hi
    lo, hi = axis_limits([69.7], log=True)
    assert lo < 69.7 < hi and hi / lo > 1.5
    assert axis_limits([1.0, 2.0]) == (0.95, 2.05)


@pytest.mark.parametrize("x_max, expected", [
    (1, [0, 1]), (8, [0, 2, 4, 6, 8]), (200, [0, 50, 100, 150, 200]), (2000, [0, 500, 1000, 1500, 2000]),
    (7, [0, 2, 4, 6]),
])
def test_step_ticks_are_whole_round_steps(x_max, expected):
    from minigpt_tui.plots import step_ticks

    assert step_ticks(x_max) == expected

"""The speedrun's sweep and ladder: variant lists, the ladder's rungs, time to a target loss, summaries."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from minigpt_tui.cli import main
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.experiments.speedrun import (
    LADDER,
    Rung,
    ladder_configs,
    ladder_variants,
    parse_grid,
    summarise,
    sweep_variants,
    time_to_loss,
)
from minigpt_tui.experiments.variants import VariantResult
from minigpt_tui.training.config import preset
from minigpt_tui.training.events import EvalEvent


def test_parse_grid_types_values_like_the_config():
    grid = parse_grid("learning_rate=1e-3,2e-3 batch_size=12,24 qk_norm=true,false optimizer=muon")
    assert grid == {"learning_rate": [1e-3, 2e-3], "batch_size": [12, 24], "qk_norm": [True, False],
                    "optimizer": ["muon"]}


@pytest.mark.parametrize("text, fragment", [("nope=1", "unknown config field"), ("batch_size=x", "int"),
                                            ("learning_rate", "field=v1,v2"), ("", "empty")])
def test_bad_grids_are_clear_errors(text, fragment):
    with pytest.raises(MiniGPTError, match=fragment):
        parse_grid(text)


def test_sweep_is_the_product_of_the_grid_times_the_seeds():
    variants = sweep_variants(preset("speedrun"), {"learning_rate": [1e-3, 2e-3], "max_iters": [100, 200]}, [1, 2])
    assert len(variants) == 8
    name, config = variants[-1]
    assert name == "learning_rate=0.002,max_iters=200-seed2"
    assert (config.learning_rate, config.max_iters, config.seed, config.optim.optimizer) == (2e-3, 200, 2, "muon")


def test_the_ladder_climbs_from_baby_to_the_speedrun_one_change_at_a_time():
    rungs = ladder_configs("speedrun")
    assert [name for name, _, _ in rungs] == [r.name for r in LADDER]
    kept = [(name, config) for name, config, keep in rungs if keep]
    assert kept[0][1] == preset("baby") and kept[-1][1] == preset("speedrun")
    steps = {r.name: r for r in LADDER}
    previous = preset("baby")
    for name, config, keep in rungs[1:]:
        changed = {k for k, v in config.to_flat().items() if previous.to_flat()[k] != v}
        assert changed and changed <= set(steps[name].fields), name
        if keep:
            previous = config


def test_a_rung_the_top_preset_does_not_keep_is_tried_on_top_and_then_dropped(monkeypatch):
    import minigpt_tui.experiments.speedrun as speedrun

    monkeypatch.setattr(speedrun, "LADDER", [Rung("baseline", ()), Rung("muon", ("optimizer",)),
                                             Rung("relu2", ("activation",), {"activation": "relu2"}),
                                             Rung("rope", ("pos_encoding",))])
    monkeypatch.setitem(speedrun.PRESETS, "top", {"optimizer": "muon", "pos_encoding": "rope"})
    rungs = {name: (config, keep) for name, config, keep in ladder_configs("top")}
    assert rungs["relu2"][1] is False and rungs["relu2"][0].model.activation == "relu2"
    assert rungs["relu2"][0].optim.optimizer == "muon"  # on top of the rungs above it
    assert rungs["rope"][0].model.activation == "gelu_tanh" and rungs["rope"][0].model.pos_encoding == "rope"
    names = [name for name, _ in ladder_variants([1], top="top")]
    assert names == ["0-baseline-seed1", "1-muon-seed1", "2-relu2-dropped-seed1", "3-rope-seed1"]
    assert [name for name, _ in ladder_variants([1], top="top", rows=["relu2"])] == ["2-relu2-dropped-seed1"]


def test_ladder_rows_seeds_and_overrides():
    variants = ladder_variants([1, 2], rows=["baseline", "muon"], overrides={"backend": "numpy"})
    assert [name for name, _ in variants] == ["0-baseline-seed1", "0-baseline-seed2", "2-muon-seed1", "2-muon-seed2"]
    assert {config.backend for _, config in variants} == {"numpy"}
    with pytest.raises(MiniGPTError, match="unknown ladder row 'warp'; rows: baseline, budget"):
        ladder_variants([1], rows=["warp"])


def write_evals(run_dir, losses_and_times):
    run_dir.mkdir(parents=True)
    lines = [json.dumps(EvalEvent(10 * i, loss, loss, math.exp(loss), loss / math.log(2), loss / math.log(2), loss,
                                  False, t).to_record())
             for i, (loss, t) in enumerate(losses_and_times)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def result(name: str, run_dir, val_loss: float) -> VariantResult:
    return VariantResult(name=name, run_dir=str(run_dir), tokenizer="char", vocab_size=65, block_size=64,
                         batch_size=12, pos_encoding="rope", max_iters=20, tokens_seen=15360, chars_seen=15360.0,
                         tokens_per_char=1.0, val_loss=val_loss, val_bpc=val_loss / math.log(2),
                         train_tokens_per_s=1000.0, wall_s=30.0, peak_rss_mb=1.0, rss_before_training_mb=1.0,
                         sample="")


def test_time_to_loss_and_summary(tmp_path):
    write_evals(tmp_path / "a-seed1", [(4.0, 100.0), (1.9, 110.0), (1.85, 125.0)])
    write_evals(tmp_path / "a-seed2", [(4.0, 200.0), (1.87, 220.0), (1.80, 230.0)])
    write_evals(tmp_path / "b-seed1", [(4.0, 0.0), (2.5, 10.0)])
    assert time_to_loss(tmp_path / "a-seed1", 1.88) == 25.0
    assert math.isnan(time_to_loss(tmp_path / "b-seed1", 1.88))
    rows = summarise([result("a-seed1", tmp_path / "a-seed1", 1.86), result("a-seed2", tmp_path / "a-seed2", 1.88),
                      result("b-seed1", tmp_path / "b-seed1", 2.4)])
    assert [r.name for r in rows] == ["a", "b"]
    assert rows[0].val_loss_mean == pytest.approx(1.87) and rows[0].val_loss_sd == pytest.approx(math.sqrt(2e-4))
    assert rows[0].time_to_target_s == 22.5 and rows[0].seeds == 2
    assert math.isnan(rows[1].val_loss_sd) and math.isnan(rows[1].time_to_target_s)


def test_sweep_with_a_bad_grid_exits_2_with_one_line(tmp_path):
    out = CliRunner().invoke(main, ["ablate", "sweep", "--grid", "warp=9", "--out", str(tmp_path / "s")])
    assert out.exit_code == 2 and out.output.startswith("error:") and "warp" in out.output
    assert not (tmp_path / "s").exists()

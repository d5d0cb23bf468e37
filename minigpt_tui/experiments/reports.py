"""Ablation reports: markdown tables, sample tables, charts and the files they are written to."""

from __future__ import annotations

import json
import math
from pathlib import Path

from minigpt_tui.experiments.variants import VariantResult
from minigpt_tui.storage import atomic_write_text

COLUMNS = {
    "tokenizer": ("variant", "vocab", "tokens/char", "chars seen", "val loss/token", "val bits/char", "train tok/s",
                  "wall s"),
    "context": ("variant", "context", "batch", "val bits/char", "train tok/s (run log)", "wall s", "peak RSS MB",
                "RSS growth MB", "bench train tok/s", "bench generate tok/s"),
    "posenc": ("variant", "pos. encoding", "val bits/char", "bits/char by position span (trained context T)"),
    "sweep": ("variant", "steps", "batch", "tokens seen", "val loss/token", "train tok/s", "wall s"),
    "ladder": ("variant", "steps", "batch", "tokens seen", "val loss/token", "train tok/s", "wall s"),
}


def _cells(kind: str, r: VariantResult) -> list[str]:
    if kind == "tokenizer":
        return [r.name, str(r.vocab_size), f"{r.tokens_per_char:.3f}", f"{r.chars_seen / 1e6:.2f}M",
                f"{r.val_loss:.4f}", f"{r.val_bpc:.4f}", f"{r.train_tokens_per_s:,.0f}", f"{r.wall_s:.0f}"]
    if kind == "context":
        return [r.name, str(r.block_size), str(r.batch_size), f"{r.val_bpc:.4f}", f"{r.train_tokens_per_s:,.0f}",
                f"{r.wall_s:.0f}", f"{r.peak_rss_mb:.0f}", f"{r.peak_rss_mb - r.rss_before_training_mb:.0f}",
                f"{r.extra.get('bench_train_tokens_per_s', math.nan):,.0f}",
                f"{r.extra.get('bench_generate_tokens_per_s', math.nan):,.0f}"]
    if kind in ("sweep", "ladder"):
        return [r.name, str(r.max_iters), str(r.batch_size), f"{r.tokens_seen:,}", f"{r.val_loss:.4f}",
                f"{r.train_tokens_per_s:,.0f}", f"{r.wall_s:.0f}"]
    spans = r.extra.get("bpc_by_span", {})
    return [r.name, r.pos_encoding, f"{r.val_bpc:.4f}", ", ".join(f"{k}: {v:.3f}" for k, v in spans.items())]


def results_markdown(kind: str, results: list[VariantResult]) -> str:
    columns = COLUMNS[kind]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cells(kind, r)) + " |" for r in results]
    return "\n".join(lines) + "\n"


def samples_markdown(results: list[VariantResult]) -> str:
    return "".join(f"### {r.name}\n\n```text\n{r.sample.strip()}\n```\n\n" for r in results)


def ablation_charts(kind: str, results: list[VariantResult]) -> dict:
    from minigpt_tui.plots import Chart, Series

    if kind == "tokenizer":
        return {"bpc": Chart("Val bits/char by vocabulary (same tokens seen)", "vocabulary size", "bits/char",
                             [Series("val bits/char", [r.vocab_size for r in results], [r.val_bpc for r in results])],
                             logx=True)}
    if kind == "context":
        blocks = [r.block_size for r in results]
        return {
            "bpc": Chart("Val bits/char vs context length", "context (tokens)", "bits/char",
                         [Series("val bits/char", blocks, [r.val_bpc for r in results])], logx=True),
            "speed": Chart("Throughput vs context length", "context (tokens)", "tokens/s", [
                Series("train (run log)", blocks, [r.train_tokens_per_s for r in results]),
                Series("train (bench, best of rounds)", blocks,
                       [r.extra.get("bench_train_tokens_per_s", math.nan) for r in results]),
                Series("generate, KV cache (bench)", blocks,
                       [r.extra.get("bench_generate_tokens_per_s", math.nan) for r in results]),
            ], logx=True),
            "memory": Chart("Memory vs context length", "context (tokens)", "MB",
                            [Series("peak RSS", blocks, [r.peak_rss_mb for r in results]),
                             Series("RSS growth during training", blocks,
                                    [r.peak_rss_mb - r.rss_before_training_mb for r in results])], logx=True),
        }
    if kind in ("sweep", "ladder"):
        from minigpt_tui.plots import wall_clock_chart

        return {"wall": wall_clock_chart([Path(r.run_dir) for r in results])}
    curves = [Series(r.name, list(range(len(r.extra["loss_by_position"]))), r.extra["loss_by_position"])
              for r in results]
    return {"position": Chart("Val loss by position in the window", "position", "loss (nats/token)", curves,
                              vline=results[0].block_size)}


def write_ablation_report(kind: str, results: list[VariantResult], out: Path, meta: dict) -> list[Path]:
    """``results.json``, ``results.md``, the ablation's charts and the variants' training curves in ``out``."""
    from minigpt_tui.plots import export_plots, save_chart

    out = Path(out)
    json_path, md_path = out / "results.json", out / "results.md"
    atomic_write_text(json_path, json.dumps({**meta, "results": [r.to_dict() for r in results]}, indent=1))
    atomic_write_text(md_path, f"## {kind} ablation\n\n{results_markdown(kind, results)}\n## Samples (T = 0.8)\n\n"
                      + samples_markdown(results))
    paths = [json_path, md_path]
    for suffix, chart in ablation_charts(kind, results).items():
        paths += save_chart(chart, out, f"{kind}-{suffix}")
    return paths + export_plots([Path(r.run_dir) for r in results], out, name=f"{kind}-runs")


def exposure_chart(scores: dict):
    """Teacher-forced NLL by position in the window beside free-running NLL by position in the sample."""
    from minigpt_tui.plots import Chart, Series

    teacher, free = scores["teacher_forced_by_position"], scores["free_running_by_position"]
    return Chart("Teacher forcing vs free running", "position", "NLL (nats/token)", [
        Series("true prefix (teacher forcing)", list(range(len(teacher))), teacher),
        Series("own samples at T=1 (free running)", list(range(len(free))), free),
    ], vline=len(teacher))


def write_exposure_report(scores: dict, out: Path, meta: dict) -> list[Path]:
    from minigpt_tui.plots import save_chart

    out = Path(out)
    json_path = out / "exposure.json"
    atomic_write_text(json_path, json.dumps({**meta, **scores}, indent=1))
    return [json_path, *save_chart(exposure_chart(scores), out, "exposure")]

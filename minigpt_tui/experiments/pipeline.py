"""The pipeline every training ablation shares: variants of a base config, trained, scored and reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from minigpt_tui.experiments.reports import write_ablation_report
from minigpt_tui.experiments.variants import VariantResult, run_variants
from minigpt_tui.training.config import TrainConfig
from minigpt_tui.training.datasets import Corpus
from minigpt_tui.training.threads import ThreadSetting


def run_training_ablation(
    kind: str,
    base: TrainConfig,
    variants: list[tuple[str, TrainConfig]],
    corpus: Corpus,
    out: Path,
    *,
    isolate: bool = True,
    threads: ThreadSetting | None = None,
    overwrite: bool = False,
    extra_scores=None,
    finish: Callable[[list[VariantResult], list[TrainConfig]], list[VariantResult]] | None = None,
    on_result: Callable[[VariantResult], None] | None = None,
) -> tuple[list[VariantResult], list[Path]]:
    """Train the variants not yet done under ``out``, let ``finish`` add measurements, write the report.

    Returns the results and the report files written."""
    results = run_variants(
        variants, corpus, out, isolate=isolate, threads=threads, extra_scores=extra_scores, overwrite=overwrite,
        on_result=on_result,
    )
    if finish is not None:
        results = finish(results, [config for _, config in variants])
    meta = {
        "ablation": kind,
        "base_config": base.to_dict(),
        "data_source": corpus.source,
        "variants": [name for name, _ in variants],
    }
    return results, write_ablation_report(kind, results, out, meta)

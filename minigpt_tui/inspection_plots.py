"""An inspection as one PNG: the surprisal strip of the text, the next-token bars at three
temperatures, and every layer x head attention map. Built on a ``matplotlib.figure.Figure`` (no
pyplot state), so it is safe from a worker thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from minigpt_tui.inspection import Inspection
from minigpt_tui.inspection_text import SURPRISAL_FULL_BITS, label
from minigpt_tui.plots import PNG_DPI, PNG_METADATA
from minigpt_tui.sampling import SamplingParams
from minigpt_tui.tokenizer import Tokenizer

FIGURE_TEMPERATURES = (0.5, 1.0, 1.5)
STRIP_WIDTH = 64  # tokens per row of the surprisal strip
BARS = 10


def inspection_figure(inspection: Inspection, tokenizer: Tokenizer, position: int, title: str = "") -> Figure:
    position = inspection.check_position(position)
    L, H, T = inspection.n_layer, inspection.n_head, inspection.length
    strip_rows = -(-T // STRIP_WIDTH)
    fig = Figure(figsize=(max(10, 2.2 * H), 2 + 0.45 * strip_rows + 2.6 + 2.2 * L), layout="constrained")
    outer = fig.add_gridspec(3, 1, height_ratios=[0.45 * strip_rows + 0.6, 2.6, 2.2 * L])
    if title:
        fig.suptitle(title)

    # surprisal strip: the text in rows of STRIP_WIDTH tokens, each cell coloured by its bits
    ax = fig.add_subplot(outer[0])
    grid = np.full((strip_rows, STRIP_WIDTH), np.nan)
    grid.flat[:T] = inspection.surprisal_bits
    image = ax.imshow(grid, cmap="RdYlGn_r", vmin=0, vmax=SURPRISAL_FULL_BITS, aspect="auto")
    for i, piece in enumerate(inspection.pieces):
        text = label(piece)[:2]
        ax.text(i % STRIP_WIDTH, i // STRIP_WIDTH, text, ha="center", va="center", fontsize=6,
                fontweight="bold" if i == position else "normal")
    ax.add_patch(_box(position % STRIP_WIDTH, position // STRIP_WIDTH))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("surprisal per token (bits); the boxed token is the inspected position")
    fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)

    # next-token bars at three temperatures, the same candidates on each
    bars = outer[1].subgridspec(1, len(FIGURE_TEMPERATURES))
    for j, temperature in enumerate(FIGURE_TEMPERATURES):
        view = inspection.next_tokens(position, SamplingParams(temperature), tokenizer, k=BARS)
        ax = fig.add_subplot(bars[j])
        names = [label(c.text) for c in view.candidates]
        ax.bar(range(len(names)), [c.sampled for c in view.candidates], color="tab:blue")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"T = {temperature:g}: entropy {view.entropy_bits:.2f} bits", fontsize=9)
        if j == 0:
            ax.set_ylabel(f"p(next | ...{label(''.join(inspection.pieces[max(0, position - 8) : position + 1]))})")

    # every head's attention map
    maps = outer[2].subgridspec(L, H)
    for layer in range(L):
        for head in range(H):
            ax = fig.add_subplot(maps[layer, head])
            ax.imshow(inspection.attention[layer, head], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
    return fig


def _box(x: int, y: int) -> Rectangle:
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5)


def write_inspection_figure(path: Path, inspection: Inspection, tokenizer: Tokenizer, position: int,
                            title: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inspection_figure(inspection, tokenizer, position, title).savefig(path, dpi=PNG_DPI, metadata=PNG_METADATA)
    return path

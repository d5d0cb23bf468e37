"""Inspections as PNG: for one text, the surprisal strip, the next-token bars at three temperatures
and every layer x head attention map; for a validation split, what each head attends to. Built on
``matplotlib.figure.Figure`` (no pyplot state), so they are safe from a worker thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from minigpt_tui.inspection.head_roles import CONTEXT_CLASSES, HeadRoles
from minigpt_tui.inspection.inspector import Inspection
from minigpt_tui.inspection.text import SURPRISAL_FULL_BITS, label
from minigpt_tui.plots import PNG_DPI, write_png
from minigpt_tui.training.sampling import SamplingParams
from minigpt_tui.training.tokenizer import Tokenizer

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


def head_roles_figure(roles: HeadRoles, title: str = "") -> Figure:
    """Left: each head's attention mass on each target kind, as a multiple of uniform attention's;
    right: mean surprisal by where the token sits."""
    L, H, K = roles.mass.shape
    fig = Figure(figsize=(11, 0.35 * L * H + 1.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    ratio = roles.mass / np.maximum(roles.chance, 1e-12)
    image = left.imshow(ratio.reshape(L * H, K), cmap="viridis", aspect="auto", vmin=0)
    for row in range(L * H):
        for k in range(K):
            left.text(k, row, f"{roles.mass.reshape(L * H, K)[row, k]:.2f}", ha="center", va="center", fontsize=7,
                      color="white")
    left.set_xticks(range(K), roles.labels, fontsize=8)
    left.set_yticks(range(L * H), [f"L{i // H} H{i % H}" for i in range(L * H)], fontsize=7)
    left.set_title("attention mass on each target (number); colour: multiple of uniform attention", fontsize=9)
    fig.colorbar(image, ax=left, fraction=0.04, pad=0.01)
    values = [roles.surprisal_bits[name] for name in CONTEXT_CLASSES]
    right.barh(range(len(values)), values, color="tab:red")
    right.set_yticks(range(len(values)), [f"{n} (n={roles.surprisal_counts[n]})" for n in CONTEXT_CLASSES],
                     fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, max(7.0, max(values) * 1.05))
    right.set_xlabel("mean surprisal (bits/token)")
    for i, value in enumerate(values):
        right.text(value, i, f" {value:.2f}", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    return write_png(fig, path, dpi=PNG_DPI)


def _box(x: int, y: int) -> Rectangle:
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5)


def write_inspection_figure(path: Path, inspection: Inspection, tokenizer: Tokenizer, position: int,
                            title: str = "") -> Path:
    return save_figure(inspection_figure(inspection, tokenizer, position, title), path)

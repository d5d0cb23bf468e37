"""The causal inspections as PNG: the head-ablation table beside the attention roles, the logit lens,
the embedding map and the time-lapse. ``matplotlib.figure.Figure`` only (no pyplot state)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from minigpt_tui.inspection.embedding_map import GROUPS, EmbeddingMap
from minigpt_tui.inspection.head_ablation import CHAR_CLASSES, HeadImportance
from minigpt_tui.inspection.head_roles import HeadRoles
from minigpt_tui.inspection.lens import LayerLosses, LogitLens, depth_name
from minigpt_tui.inspection.text import label
from minigpt_tui.inspection.timelapse import Timelapse

GROUP_COLOURS = dict(zip(GROUPS, ("tab:red", "tab:blue", "tab:orange", "tab:cyan", "tab:purple", "tab:green",
                                  "black", "tab:gray"), strict=True))


def centred(values: np.ndarray) -> dict[str, float]:
    """Colour limits symmetric about 0: red where an ablation hurts, blue where it helps."""
    peak = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    return {"vmin": -(peak or 1.0), "vmax": peak or 1.0}


def importance_figure(importance: HeadImportance, roles: HeadRoles, title: str = "") -> Figure:
    """Left: delta loss per head (layers x heads); middle: the same heads' attention roles (multiple of
    uniform attention); right: delta surprisal per character class."""
    L, H = importance.delta_loss.shape
    fig = Figure(figsize=(14, 1.2 + 0.9 * L + 0.3 * L * H * 0.5), layout="constrained")
    left, middle, right = fig.subplots(1, 3, width_ratios=[H + 1, len(roles.kinds), len(CHAR_CLASSES)])
    grid = np.column_stack([importance.delta_loss, importance.layer_delta_loss])
    image = left.imshow(grid, cmap="RdBu_r", aspect="auto", **centred(grid))
    for layer in range(L):
        for col in range(H + 1):
            left.text(col, layer, f"{grid[layer, col]:+.3f}", ha="center", va="center", fontsize=8)
    left.set_xticks(range(H + 1), [f"H{h}" for h in range(H)] + ["layer"], fontsize=8)
    left.set_yticks(range(L), [f"L{layer}" for layer in range(L)], fontsize=8)
    left.set_title(f"Δ val loss (nats), {importance.mode}-ablated\nbase {importance.base_loss:.3f}, all heads "
                   f"{importance.all_heads_loss:.3f}\nunigram {importance.unigram_loss:.3f}, "
                   f"bigram {importance.bigram_loss:.3f}", fontsize=9)
    fig.colorbar(image, ax=left, fraction=0.05, pad=0.01)
    ratio = (roles.mass / np.maximum(roles.chance, 1e-12)).reshape(L * H, -1)
    middle.imshow(ratio, cmap="viridis", aspect="auto", vmin=0)
    middle.set_xticks(range(len(roles.kinds)), roles.labels, fontsize=7, rotation=30)
    middle.set_yticks(range(L * H), [f"L{i // H} H{i % H}" for i in range(L * H)], fontsize=7)
    middle.set_title("attention role: mass / uniform", fontsize=9)
    classes = importance.class_delta_bits.reshape(L * H, -1)
    right.imshow(classes, cmap="RdBu_r", aspect="auto", **centred(classes))
    for row in range(L * H):
        for k in range(len(CHAR_CLASSES)):
            right.text(k, row, f"{classes[row, k]:+.2f}", ha="center", va="center", fontsize=7)
    right.set_xticks(range(len(CHAR_CLASSES)), CHAR_CLASSES, fontsize=7, rotation=30)
    right.set_yticks(range(L * H), [f"L{i // H} H{i % H}" for i in range(L * H)], fontsize=7)
    right.set_title("Δ surprisal (bits) by character class", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def lens_figure(lens: LogitLens, context: str, losses: LayerLosses | None = None, title: str = "") -> Figure:
    """Each depth's top guesses at one position (bars), and the lens loss per depth over val windows."""
    depths = len(lens.depths)
    fig = Figure(figsize=(2.2 * depths + (3 if losses else 0), 3.4), layout="constrained")
    axes = fig.subplots(1, depths + (1 if losses else 0))
    for d, view in enumerate(lens.depths):
        ax = axes[d]
        names = [label(c.text) for c in view.candidates]
        colours = ["tab:green" if c.token_id == view.actual else "tab:blue" for c in view.candidates]
        ax.bar(range(len(names)), [c.probability for c in view.candidates], color=colours)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"after {depth_name(d)}\nentropy {view.entropy_bits_raw:.2f} bits", fontsize=8)
    axes[0].set_ylabel(f"p(next | ...{label(context[-12:])})", fontsize=8)
    if losses:
        ax = axes[-1]
        ax.plot(range(depths), losses.loss, marker="o")
        ax.set_xticks(range(depths), [depth_name(d).replace("block ", "B") for d in range(depths)], fontsize=8)
        ax.set_title(f"lens loss, {losses.windows} val windows", fontsize=8)
        ax.set_ylabel("nats/token", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def embedding_figure(emap: EmbeddingMap, title: str = "") -> Figure:
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    for group in GROUPS:
        rows = [i for i, g in enumerate(emap.groups) if g == group]
        if not rows:
            continue
        ax.scatter(emap.points[rows, 0], emap.points[rows, 1], s=12, color=GROUP_COLOURS[group], label=group)
        for i in rows:
            ax.annotate(label(emap.labels[i]), emap.points[i], fontsize=8, color=GROUP_COLOURS[group],
                        xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"PC 1 ({100 * emap.variance_explained[0]:.1f}% of the variance)")
    ax.set_ylabel(f"PC 2 ({100 * emap.variance_explained[1]:.1f}% of the variance)")
    ax.legend(fontsize=8)
    ax.set_title(title or "token embeddings, first two principal components", fontsize=10)
    return fig


def timelapse_figure(lapse: Timelapse, title: str = "") -> Figure:
    """One row per snapshot: the sample, the surprisal by class, the top heads' attention on the text."""
    n, heads = len(lapse.frames), len(lapse.heads)
    fig = Figure(figsize=(6 + 2.2 * heads + 3, 1.9 * n + 1), layout="constrained")
    grid = fig.add_gridspec(n, 2 + heads, width_ratios=[6, 3] + [2.2] * heads)
    top = max(max(v for v in frame.class_bits.values() if np.isfinite(v)) for frame in lapse.frames)
    for row, frame in enumerate(lapse.frames):
        ax = fig.add_subplot(grid[row, 0])
        ax.axis("off")
        lines = frame.sample.replace("\t", " ").splitlines()[:6]
        ax.text(0, 1, "\n".join(line[:70] for line in lines), va="top", family="monospace", fontsize=7,
                transform=ax.transAxes)
        ax.set_title(f"step {frame.step}: val loss {frame.val_loss:.3f}", fontsize=8, loc="left")
        ax = fig.add_subplot(grid[row, 1])
        values = [frame.class_bits[name] for name in CHAR_CLASSES]
        ax.barh(range(len(values)), values, color="tab:red")
        ax.set_yticks(range(len(values)), CHAR_CLASSES, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.05)
        for i, value in enumerate(values):
            ax.text(value, i, f" {value:.2f}", va="center", fontsize=7)
        if row == 0:
            ax.set_title("surprisal (bits)", fontsize=8)
        for j, (layer, head) in enumerate(lapse.heads):
            ax = fig.add_subplot(grid[row, 2 + j])
            ax.imshow(frame.attention[j], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"L{layer} H{head} (Δ {lapse.head_delta_loss[j]:+.3f})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig

"""An inspection as coloured terminal text (rich ``Text``), one drawing for the CLI and the TUI:
characters coloured by surprisal, or with the attention a position pays them as the background."""

from __future__ import annotations

import math

import numpy as np
from rich.style import Style
from rich.table import Table
from rich.text import Text

from minigpt_tui.inspection.head_ablation import HeadImportance, attention_role
from minigpt_tui.inspection.head_roles import HeadRoles
from minigpt_tui.inspection.inspector import Inspection, NextTokens
from minigpt_tui.inspection.lens import LogitLens, depth_name

SURPRISAL_FULL_BITS = 8.0  # red from here up: a 65-character vocabulary at random is 6.0 bits
# green (expected) -> yellow -> red (surprising)
SURPRISAL_STOPS = ((0.0, (80, 200, 120)), (0.5, (230, 210, 80)), (1.0, (235, 70, 60)))
ATTENTION_COLOR = (230, 120, 30)  # background at full attention; none at zero
CURSOR = Style(reverse=True, bold=True)


def shown(piece: str) -> str:
    """A token as drawn: newlines as ↵ (then the line break), tabs as →."""
    return piece.replace("\n", "↵\n").replace("\t", "→")


def shown_inline(piece: str) -> str:
    """A token as drawn within one row: ``shown`` without the line break."""
    return shown(piece).replace("\n", "")


def label(piece: str) -> str:
    """A token on one line, for tables and axes: a space as ␣, a newline as \\n."""
    return repr(piece)[1:-1].replace(" ", "␣") if not piece.isprintable() or piece.isspace() else piece


def surprisal_color(bits: float) -> str:
    if math.isnan(bits):
        return "rgb(150,150,150)"
    x = min(max(bits / SURPRISAL_FULL_BITS, 0.0), 1.0)
    for (x0, c0), (x1, c1) in zip(SURPRISAL_STOPS, SURPRISAL_STOPS[1:], strict=False):
        if x <= x1:
            t = (x - x0) / (x1 - x0)
            r, g, b = (round(a + (b - a) * t) for a, b in zip(c0, c1, strict=True))
            return f"rgb({r},{g},{b})"
    return "rgb({},{},{})".format(*SURPRISAL_STOPS[-1][1])


def attention_background(weight: float, peak: float) -> str | None:
    """Background for a key's share of a query's attention, scaled to the row's peak (sqrt: small
    weights stay visible); None for a key that gets (almost) none."""
    if peak <= 0 or weight / peak < 0.02:
        return None
    level = math.sqrt(weight / peak)
    r, g, b = (round(20 + (c - 20) * level) for c in ATTENTION_COLOR)
    return f"rgb({r},{g},{b})"


def surprisal_text(inspection: Inspection, cursor: int | None = None) -> Text:
    """Each token coloured by its surprisal; the cursor's token drawn reversed."""
    text = Text()
    for i, (piece, bits) in enumerate(zip(inspection.pieces, inspection.surprisal_bits, strict=True)):
        style = Style(color=surprisal_color(float(bits)))
        text.append(shown(piece), style + CURSOR if i == cursor else style)
    return text


def attention_text(inspection: Inspection, weights: np.ndarray, cursor: int) -> Text:
    """Each token with the attention the cursor's query pays it as background; the cursor reversed."""
    text = Text()
    peak = float(weights.max())
    for i, piece in enumerate(inspection.pieces):
        background = attention_background(float(weights[i]), peak)
        style = Style(bgcolor=background, color="white" if background else None)
        text.append(shown(piece), CURSOR if i == cursor else style)
    return text


def next_tokens_table(view: NextTokens, title: str | None = None) -> Table:
    """The candidates: probability at T=1, under the settings, and whether the settings keep them."""
    p = view.params
    settings = f"T={p.temperature:g}" + (f" k={p.top_k}" if p.top_k else "") + (f" p={p.top_p:g}" if p.top_p else "")
    table = Table(title=title, caption=(f"kept {view.kept} tokens holding {view.kept_mass:.1%} of the mass; "
                                        f"entropy {view.entropy_bits:.2f} bits ({view.entropy_bits_raw:.2f} at T=1)"))
    for column in ("next", "p (T=1)", f"p ({settings})", "kept"):
        table.add_column(column, justify="right")
    for c in view.candidates:
        mark = " ← actual" if c.token_id == view.actual else ""
        table.add_row(label(c.text) + mark, f"{c.probability:.3f}", f"{c.sampled:.3f}", "✓" if c.kept else "")
    return table


def importance_table(importance: HeadImportance, roles: HeadRoles, title: str | None = None) -> Table:
    """Layers x heads: each head's delta val loss when ablated, above its attention role (the target it
    attends to most, as a multiple of uniform attention), and each layer's heads ablated together."""
    L, H = importance.delta_loss.shape
    table = Table(title=title)
    table.add_column("layer")
    for head in range(H):
        table.add_column(f"H{head}", justify="right")
    table.add_column("whole layer", justify="right")
    for layer in range(L):
        cells = []
        for head in range(H):
            kind, _, ratio = attention_role(roles, layer, head)
            cells.append(f"{importance.delta_loss[layer, head]:+.3f}\n[dim]{kind} x{ratio:.1f}[/dim]")
        table.add_row(f"L{layer}", *cells, f"{importance.layer_delta_loss[layer]:+.3f}")
    return table


def lens_table(lens: LogitLens, title: str | None = None) -> Table:
    """One row per depth: the top guesses after the embedding and after each block, their entropy, and
    the probability of the token that actually follows."""
    table = Table(title=title)
    for column in ("after", "top guesses", "entropy", "p(actual)"):
        table.add_column(column, justify="left" if column == "top guesses" else "right")
    for depth, view in enumerate(lens.depths):
        guesses = "  ".join(f"{label(c.text)} {c.probability:.2f}" for c in view.candidates)
        actual = "" if view.actual_probability is None else f"{view.actual_probability:.3f}"
        table.add_row(depth_name(depth), guesses, f"{view.entropy_bits_raw:.2f}", actual)
    return table


def surprisal_legend() -> Text:
    text = Text("surprisal: ")
    for bits in (0, 2, 4, 6, 8):
        text.append(f"{bits} bits ", Style(color=surprisal_color(bits)))
    return text

"""Pictures of the app: train a small real run, open each view with Textual's own screenshot, save PNGs.

    python -m minigpt_tui.tui.screenshots --out visualizations      (or: make screenshots)

Textual draws a screenshot as SVG; cairosvg (the ``dev`` extra) turns it into PNG. The run is the
``tiny`` preset on the bundled tiny Shakespeare, in a temporary folder unless ``--run`` names one.
"""

from __future__ import annotations

import asyncio
import html
import re
import sys
import tempfile
from pathlib import Path

import click
from rich.cells import cell_len

from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.config import preset
from minigpt_tui.training.datasets import load_dataset
from minigpt_tui.training.runs import holds_checkpoints
from minigpt_tui.training.trainer import new_training
from minigpt_tui.tui.app import create_app

SIZE = (120, 34)  # columns, rows: wide enough for every view's controls, small enough to read in a README
MONOSPACE, BRAILLE_FONT = "DejaVu Sans Mono", "DejaVu Sans"  # fonts installed here, not fetched
SETTLE_S = 60.0  # the longest a view may take to fill in (a sample, an ablation, an inspection)


TEXT_RUN = re.compile(r'<text (?P<attrs>[^>]*?)x="(?P<x>[\d.]+)"(?P<mid>[^>]*?)textLength="(?P<length>[\d.]+)"'
                      r'(?P<rest>[^>]*)>(?P<text>[^<]*)</text>')


def one_cell_per_character(svg: str) -> str:
    """Place each character of the screen in its own cell.

    Rich's SVG fits each run of text to its cells with ``textLength``, which cairosvg ignores; with
    whatever font it finds (the SVG asks for Fira Code) and the braille of the plots from a wider
    fallback font, the runs would come out too long or too short, and a plotted line run past its frame."""
    def split(match: re.Match) -> str:
        text = html.unescape(match["text"])
        if not text.strip():
            return match[0]
        x, cell = float(match["x"]), float(match["length"]) / max(1, cell_len(text))
        pieces = []
        for char in text:
            if not char.isspace():
                attributes = f'{match["attrs"]}x="{x:.1f}"{match["mid"]}{match["rest"]}'
                if "\u2800" <= char <= "\u28ff":  # the monospace font has no braille: the plots' points
                    attributes += f' style="font-family: {BRAILLE_FONT}"'
                pieces.append(f"<text {attributes}>{html.escape(char)}</text>")
            x += cell * cell_len(char)
        return "".join(pieces)
    return TEXT_RUN.sub(split, svg)


def svg_to_png(svg: str, path: Path) -> Path:
    try:
        import cairosvg
    except ImportError:
        raise MiniGPTError("the screenshots need cairosvg: pip install -e '.[dev]'") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    svg = one_cell_per_character(svg).replace("Fira Code", MONOSPACE)
    cairosvg.svg2png(bytestring=svg.encode("utf-8"), write_to=str(tmp))
    tmp.replace(path)
    return path


def train_demo_run(folder: Path, steps: int) -> Path:
    """The tiny preset on tiny Shakespeare for ``steps`` steps: a real run, trained in seconds."""
    config = preset("tiny").replace(max_iters=steps, eval_interval=max(1, steps // 6), device="cpu", seed=1337)
    new_training(config, load_dataset("shakespeare"), folder).run()
    return folder


async def settle(pilot, done, timeout: float = SETTLE_S) -> None:
    for _ in range(int(timeout / 0.1)):
        if done():
            return
        await pilot.pause(0.1)
    raise MiniGPTError("a view did not finish drawing in time")


async def shoot(run: Path, out: Path) -> list[Path]:
    from textual.widgets import Input

    app = create_app(run, redraw_interval=0.1, poll_interval=0.5)
    paths = []

    async def save(name: str) -> None:
        await pilot.pause(0.3)
        paths.append(svg_to_png(app.export_screenshot(title=f"minigpt-tui: {name}"), out / f"app-{name}.png"))

    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        await save("training")
        await pilot.press("g")
        for field, value in (("#prompt", "ROMEO:"), ("#length", "400"), ("#seed", "7")):
            app.query_one(field, Input).value = value
        await pilot.press("enter")
        await settle(pilot, lambda: not app.query_one("#generate").disabled and "done" in app.query_one(
            "#generation-source").content)
        await pilot.press("escape")
        await save("generate")
        await pilot.press("a")
        app.query_one("#samples", Input).value = "2"
        app.query_one("#ablation-length", Input).value = "150"
        await pilot.press("enter")
        await settle(pilot, lambda: app.query_one("#ablation").recipe is not None)
        await save("ablation")
        await pilot.press("i")
        await settle(pilot, lambda: app.query_one("#inspect").view is not None)
        await pilot.press("left", "left", "left")
        await save("inspect")
    return paths


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("visualizations"),
              show_default=True, help="Folder the PNGs go into (app-training.png, app-generate.png, ...).")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Use this run folder (trained first if it holds no run yet); default: a temporary one.")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True,
              help="Training steps of the demo run.")
def main(out: Path, run_dir: Path | None, steps: int) -> None:
    """Train a small run and save a PNG of each view of the app showing it."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = run_dir or Path(tmp) / "shakespeare-tiny"
            if not holds_checkpoints(run):
                click.echo(f"training the demo run ({steps} steps of the tiny preset) in {run}…", err=True)
                train_demo_run(run, steps)
            for path in asyncio.run(shoot(run, out)):
                click.echo(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    except MiniGPTError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""The one place the app's plotext drawing is guarded: a plot that cannot be built shows why, never crashes.

plotext raises on some inputs (a legend whose series fall wholly outside the axis range, a log axis
over nothing); the pane code avoids the cases it knows, and this catches the rest.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from minigpt_tui.tui.output import log


class GuardedPlot(PlotextPlot):
    """A PlotextPlot whose build failures become a line in the plot and one log entry (with traceback)."""

    failure: str | None = None  # the last failure shown, so a redraw loop logs it once

    def render(self) -> RenderResult:
        try:
            rendered = super().render()
        except Exception as exc:  # noqa: BLE001 - any plotext failure: the app must keep running
            message = f"{type(exc).__name__}: {exc}"
            if message != self.failure:
                self.failure = message
                log.error("plot %s could not be drawn", self.id, exc_info=exc)
            return Text(f"(this plot could not be drawn: {message})", style="dim")
        self.failure = None
        return rendered

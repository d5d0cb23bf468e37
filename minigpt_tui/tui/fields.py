"""Reading the panes' number fields."""

from __future__ import annotations

from textual.widget import Widget
from textual.widgets import Input

from minigpt_tui.errors import MiniGPTError


def read_number(pane: Widget, widget_id: str, kind: type, default, name: str | None = None):
    """The number in the Input ``#widget_id`` of ``pane`` as ``kind``; ``default`` when it is empty.

    A field that does not parse raises MiniGPTError naming it ``name`` (the widget id if not given).
    """
    text = pane.query_one(f"#{widget_id}", Input).value.strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise MiniGPTError(f"{name or widget_id} must be a{'n integer' if kind is int else ' number'}, "
                           f"got {text!r}") from None

"""Whether the TUI can run: it draws on a terminal and reads keys from one."""

from __future__ import annotations

import sys

from minigpt_tui.errors import MiniGPTError


def check_terminal() -> None:
    """MiniGPTError when stdin or stdout is not a terminal (a pipe, a file, a cron job)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise MiniGPTError("the TUI needs a terminal (stdin/stdout are not one); add --headless to train without it")

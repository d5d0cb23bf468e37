"""Where minigpt-tui draws and where its log goes, whatever the shell did with stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("minigpt_tui")


def screen_stream(stdout, stderr):
    """The stream Textual should draw on: stderr if it is the terminal, else stdout if that is.

    Textual draws on ``sys.__stderr__``; with ``2>file`` the screen would go into the file and the
    terminal stay blank.
    """
    if stderr is not None and stderr.isatty():
        return stderr
    if stdout is not None and stdout.isatty():
        return stdout
    return stderr


def set_up_output(log_file: Path | None) -> None:
    """Draw on the terminal; log (notifications, worker errors with tracebacks, warnings) to ``log_file``,
    else to a redirected stderr, else nowhere."""
    stderr = sys.__stderr__
    sys.__stderr__ = screen_stream(sys.__stdout__, stderr)
    if log_file is not None:
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    elif stderr is not None and not stderr.isatty():
        handler = logging.StreamHandler(stderr)
    else:
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(handler)

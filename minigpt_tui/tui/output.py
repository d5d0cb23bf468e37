"""Where minigpt-tui draws and where its log goes, whatever the shell did with stderr."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("minigpt_tui")
DEFAULT_LOG_NAME = "minigpt-tui.log"  # in the system's temporary folder, when neither --log-file nor a redirect


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


def default_log_path() -> Path:
    return Path(tempfile.gettempdir()) / DEFAULT_LOG_NAME


def set_up_output(log_file: Path | None) -> Path | None:
    """Draw on the terminal; log (notifications, worker errors with tracebacks, warnings) to ``log_file``,
    else to a redirected stderr, else to ``default_log_path()``. The log file's path, or None for stderr."""
    stderr = sys.__stderr__
    sys.__stderr__ = screen_stream(sys.__stdout__, stderr)
    path: Path | None = None
    if log_file is None and stderr is not None and not stderr.isatty():
        handler: logging.Handler = logging.StreamHandler(stderr)
    else:
        path = log_file or default_log_path()
        try:
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError:  # an unwritable default: no log, the app still runs
            if log_file is not None:
                raise
            return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").addHandler(handler)
    return path

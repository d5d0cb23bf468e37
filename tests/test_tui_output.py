"""Where minigpt-tui draws and logs: the screen stays on the terminal when stderr is redirected."""

from __future__ import annotations

import io
import logging
import os
import sys

import pytest

from minigpt_tui.tui import output


@pytest.fixture
def terminal():
    """One end of a pseudo-terminal: a stream for which isatty() is true."""
    leader, follower = os.openpty()
    stream = open(follower, "w")  # noqa: SIM115 - closed below
    yield stream
    stream.close()
    os.close(leader)


def test_the_screen_goes_to_the_terminal_when_stderr_is_redirected(terminal):
    redirected = io.StringIO()
    assert output.screen_stream(terminal, redirected) is terminal  # minigpt-tui 2>errors.txt
    assert output.screen_stream(io.StringIO(), terminal) is terminal  # the usual case: Textual's own choice


def test_log_file_gets_notifications_and_warnings(tmp_path, monkeypatch, terminal):
    monkeypatch.setattr(sys, "__stderr__", terminal)
    log_file = tmp_path / "tui.log"
    before = list(output.log.handlers)
    try:
        output.set_up_output(log_file)
        output.log.error("training failed: boom")
        logging.getLogger("py.warnings").warning("a warning")
    finally:
        for handler in set(output.log.handlers) - set(before):
            output.log.removeHandler(handler)
            logging.getLogger("py.warnings").removeHandler(handler)
            handler.close()
        logging.captureWarnings(False)
    text = log_file.read_text()
    assert "ERROR training failed: boom" in text and "a warning" in text

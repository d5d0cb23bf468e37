"""The error type the shells turn into a one-line message (CLI exit code 2, TUI notification)."""


class MiniGPTError(Exception):
    """Bad input or an unusable file: the message is complete and meant for the user."""

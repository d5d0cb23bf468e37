"""The error type the shells turn into a one-line message (CLI exit code 2, TUI notification)."""


class MiniGPTError(Exception):
    """Bad input or an unusable file: the message is complete and meant for the user."""


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: what failed, and on which path."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, FileExistsError):  # mkdir of a folder where a file is
        reason = "a file is in the way of a folder"
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    return f"{reason}: {' -> '.join(map(str, paths))}" if paths else reason

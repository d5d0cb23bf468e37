"""Files in and out, as contracts.

Writes are atomic: a reader sees the old file or the new one, never half of either. The temporary file
has an unpredictable name (mkstemp, ``O_EXCL``: it never follows a symlink) in the target's folder and is
removed on any failure. A destination that is not a regular file (a FIFO, a device, a socket, a symlink,
a folder) is refused, never replaced.

A destination the user names (``--json``, ``--png``, ``--out``, ``--name``) is checked up front with
``check_output_file`` / ``check_output_folder`` / ``check_file_name``, before any work is done: on top of
the above it may not be a file of a run folder, and its folder must be writable.

Reads of the small files a command loads (configs, tokenizers, weights) go through ``read_input_bytes``:
the file's kind is checked before it is opened (a FIFO would block for ever, ``/dev/zero`` never ends),
and the read is bounded.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from minigpt_tui.errors import MiniGPTError

STDOUT = "-"  # the name that means "write to standard output" where an option allows it
# the files and folders that make a folder a run (see training.runs); a user-named output never replaces one
RUN_MARKERS = (".lock", "checkpoints")
RUN_FILES = frozenset({"config.json", "tokenizer.json", "metrics.jsonl", "checkpoints", ".lock", ".lock.owner",
                       "result.json"})
NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
MAX_INPUT_BYTES = 64 * 2**20  # a config or tokenizer file beyond this is no config (e.g. /dev/zero behind a link)


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def check_destination(path: Path) -> None:
    """OSError unless ``path`` is absent or a regular file (checked without following a symlink)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EEXIST, f"is {kind_of(mode)}, not a regular file: refused", str(path))


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` into a temporary file beside ``path``, then renamed onto it; removed on any failure.

    An OSError names ``path``, never the temporary file."""
    path = Path(path)
    check_destination(path)  # errors about the path given, not about the temporary file renamed onto it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:NAME_MAX - 32]}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a run folder is meant to be shared and read
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        check_destination(path)  # made a FIFO or a link while we wrote: still refused
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename == tmp or exc.filename is None:  # ENOSPC from write(), EACCES from replace...
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---- destinations the user names


def run_folder_above(path: Path) -> Path | None:
    """The run folder ``path`` lies in (itself or an ancestor holding a run's lock or checkpoints), if any."""
    for folder in [path, *path.parents]:
        if any((folder / marker).exists() for marker in RUN_MARKERS):
            return folder
    return None


def check_not_run_file(path: Path, option: str) -> None:
    absolute = Path(os.path.abspath(path))
    run = run_folder_above(absolute.parent)
    if run is not None:
        first = absolute.relative_to(run).parts[0]
        if first in RUN_FILES:
            raise MiniGPTError(f"{option} {path} is a file of the run folder {run}: refused (choose another path)")


def writable(path: Path) -> bool:
    """Writable by us, and not marked read-only (its owner's write bit: root may write anywhere, but a file or
    folder its owner made read-only is not one to replace)."""
    return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & stat.S_IWUSR)


def writable_folder(path: Path, option: str, shown: Path) -> None:
    """MiniGPTError unless the nearest existing folder on the way to ``path`` is a folder we may write in."""
    folder = Path(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise MiniGPTError(f"{option} {shown}: {folder} is a file, not a folder")
    if not writable(folder):
        raise MiniGPTError(f"{option} {shown}: the folder {folder} is not writable")


def check_file_name(name: str, option: str = "--name") -> str:
    """A bare file name (no folder part, not '.' or '..', not too long): what ``--name`` may be."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise MiniGPTError(f"{option} {name!r} must be a plain file name (no folder part); put the folder in --out")
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX - 32:
        raise MiniGPTError(f"{option} is {len(name)} characters long; file names hold at most {NAME_MAX - 32}")
    return name


def check_output_file(path: Path | str, option: str, *, allow_stdout: bool = False) -> Path | None:
    """``path`` checked as a file the command may (re)write; None for ``-`` (stdout) where allowed."""
    text = str(path)
    if text == STDOUT and allow_stdout:
        return None
    if not text or text.endswith(os.sep):
        raise MiniGPTError(f"{option} needs a file path, got {text!r}")
    path = Path(text)
    check_file_name(path.name, option)
    try:
        check_destination(path)
    except OSError as exc:
        raise MiniGPTError(f"{option} {path} {exc.strerror}") from None
    check_not_run_file(path, option)
    if path.exists() and not writable(path):
        raise MiniGPTError(f"{option} {path} is read-only")
    writable_folder(path.parent, option, path)
    return path


def check_output_folder(path: Path | str, option: str = "--out") -> Path:
    """``path`` checked as a folder the command may create or write files in."""
    text = str(path)
    if not text:
        raise MiniGPTError(f"{option} needs a folder path, got ''")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise MiniGPTError(f"{option} {path} is {kind_of(os.stat(path).st_mode)}, not a folder")
    absolute = Path(os.path.abspath(path))
    run = run_folder_above(absolute)
    if run is not None and run != absolute and absolute.relative_to(run).parts[0] in RUN_FILES:
        raise MiniGPTError(f"{option} {path} is inside the run folder's {absolute.relative_to(run).parts[0]}: "
                           "refused (choose another folder)")
    writable_folder(path, option, path)
    return path


# ---- inputs


def check_input_file(path: Path, what: str) -> None:
    """MiniGPTError unless ``path`` is a regular file (a FIFO would block a reader for ever, a device never ends).

    FileNotFoundError propagates, for the caller to word; a folder is an IsADirectoryError."""
    mode = os.stat(path).st_mode  # follows a symlink: what matters is what would be read
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    if not stat.S_ISREG(mode):
        raise MiniGPTError(f"{what} {path} is {kind_of(mode)}, not a regular file")


def read_input_bytes(path: Path, what: str, limit: int | None = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (None: any size, e.g. weights); MiniGPTError
    naming ``what`` otherwise."""
    check_input_file(path, what)
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise MiniGPTError(f"{what} {path} is larger than {limit // 2**20} MiB")
    return data

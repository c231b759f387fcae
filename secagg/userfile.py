"""Reading a file a user (or someone we do not trust) named: a regular file only, bounded in size.

``Path.read_bytes()`` on a path from the command line or a folder we were handed trusts it too much:
a FIFO blocks the open forever, ``/dev/zero`` (or a symlink to it) grows memory without bound, and a
directory gives "Is a directory" or, worse, "no such file". Every such read goes through here, so a
directory, pipe or device is refused in one line that names what it is, and nothing larger than the
caller's limit is ever held in memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from secagg.errors import ConfigError
from secagg.reasons import Reason

#: opened this way, a FIFO returns at once instead of waiting for a writer (then refused by kind)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class UserFileError(ConfigError):
    """A named file that is missing, of the wrong kind, unreadable or too large; ``code`` says which."""

    def __init__(self, message: str, code: str = Reason.CONFIG) -> None:
        super().__init__(message)
        self.code = code


def file_kind(mode: int) -> str | None:
    """What a ``st_mode`` is when it is not a regular file ("a directory", "a named pipe (FIFO)", ...),
    None for a regular file: the words a refusal uses instead of "no such file"."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket or special file"


def _a(what: str) -> str:
    """``what`` with its article: "an audit head", "a policy file"."""
    return f"an {what}" if what[:1].lower() in "aeiou" else f"a {what}"


def open_file(path: Path | str, what: str = "file") -> BinaryIO:
    """A regular file opened for reading (binary, unbuffered reads are the caller's choice).

    Opened without blocking, then checked by ``fstat`` on what was opened (no race with a rename):
    a FIFO, directory, device or socket is refused naming its kind. The caller closes it."""
    path = Path(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise UserFileError(f"{path}: no such {what}", Reason.FILE_MISSING) from None
    except IsADirectoryError:
        raise UserFileError(f"{path}: is a directory, not {_a(what)}", Reason.NOT_A_FILE) from None
    except OSError as exc:
        if os.path.exists(path) and not os.path.isfile(path):  # a socket: open() fails with ENXIO
            raise UserFileError(
                f"{path}: is a socket or special file, not {_a(what)}", Reason.NOT_A_FILE
            ) from None
        raise UserFileError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        kind = file_kind(os.fstat(fd).st_mode)
    except OSError as exc:
        os.close(fd)
        raise UserFileError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if kind is not None:
        os.close(fd)
        raise UserFileError(f"{path}: is {kind}, not {_a(what)}", Reason.NOT_A_FILE)
    return os.fdopen(fd, "rb")


def read_file(path: Path | str, max_bytes: int, what: str = "file") -> bytes:
    """A regular file's bytes, at most ``max_bytes``: its size is checked before it is read, and at
    most ``max_bytes + 1`` bytes are ever read (a file that grows after the check is still refused)."""
    path = Path(path)
    with open_file(path, what) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise UserFileError(
                    f"{path}: {what} is {size} bytes, over the limit of {max_bytes}", Reason.FILE_TOO_LARGE
                )
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise UserFileError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if len(data) > max_bytes:  # it grew after the stat
        raise UserFileError(f"{path}: {what} is over the limit of {max_bytes} bytes", Reason.FILE_TOO_LARGE)
    return data


__all__ = ["UserFileError", "file_kind", "open_file", "read_file"]

"""Durable file writes shared by every layer (aggregator state, site state, key stores).

A crash must leave either the old file or the new one, never a torn one: write a uniquely named
temporary file in the same folder (created exclusively, never following a link), fsync it, rename it
over the target, fsync the folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path, data: bytes | None = None, *, source: Path | None = None, mode: int = 0o644
) -> None:
    """Write ``data`` (or move the file ``source``) to ``path`` atomically; ``mode`` for new data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        if source is not None:
            os.replace(source, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data or b"")
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


#: the name :func:`atomic_write` gives its temporary file: ``.NAME.<16 hex>.tmp``
_TEMP = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes a killed process left in ``folder`` (not below it).

    Called by a process that owns ``folder`` as it starts, before it writes there: a temporary file
    is only ever a write cut short (``kill -9`` between its creation and its rename), never read.
    Returns what was removed."""
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if _TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed

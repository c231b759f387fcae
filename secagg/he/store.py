"""Persist a site's HE secret context: owner-only (0600), written atomically.

Atomic (temp file in the same folder, fsync, rename, fsync the folder) so a crash mid-write never
leaves a truncated key that would silently make the site's later rounds undecryptable; 0600 from the
moment the file exists (created with that mode, not chmod-ed afterwards), so no window exposes it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from secagg.errors import ConfigError
from secagg.he.context import SecretContext, load_secret_context


def save_secret_context(path: Path | str, ctx: SecretContext) -> Path:
    path = Path(path)
    data = ctx.serialize_secret()
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(folder)
    return path


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_secret_context_file(path: Path | str) -> SecretContext:
    """Load the stored key; refuse a file that group or others could read (it may have leaked)."""
    path = Path(path)
    if path.is_symlink():
        raise ConfigError(f"{path}: HE secret key file must not be a symlink")
    if not path.is_file():
        raise ConfigError(f"{path}: no HE secret key stored here")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: HE secret key file is readable by group or others; chmod 600 it")
    return load_secret_context(path.read_bytes())

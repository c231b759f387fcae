"""Persist a site's HE secret context: owner-only (0600), written atomically.

Atomic (temp file in the same folder, fsync, rename, fsync the folder) so a crash mid-write never
leaves a truncated key that would silently make the site's later rounds undecryptable; 0600 from the
moment the file exists (created with that mode, not chmod-ed afterwards), so no window exposes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from secagg.errors import ConfigError
from secagg.fsio import atomic_write
from secagg.he.context import SecretContext, load_secret_context


def save_secret_context(path: Path | str, ctx: SecretContext) -> Path:
    path = Path(path)
    atomic_write(path, ctx.serialize_secret(), mode=0o600)
    return path


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

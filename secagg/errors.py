"""Error types shared by every layer.

A user mistake or a refused check must reach the CLI as one clear line and exit code 1, never as a
traceback; so every expected failure is a subclass of :class:`SecaggError`, and the CLI catches only
those. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from secagg.reasons import Reason


class SecaggError(Exception):
    """A refused or failed check, reported to the user as one line (exit 1)."""

    exit_code = 1
    #: short machine-readable reason code (audit log, declined tasks, metrics labels); the CLI's exit
    #: code for it comes from :mod:`secagg.reasons`, so a code received from the aggregator exits alike
    code: str = Reason.ERROR


class UsageError(SecaggError):
    """The command line itself is wrong (exit 2)."""

    exit_code = 2
    code: str = Reason.USAGE


class ConfigError(SecaggError):
    """A project file, kit or policy that cannot be used as given."""

    code: str = Reason.CONFIG


class IdentityError(SecaggError):
    """A certificate or peer identity that is not a participant of this project."""

    code: str = Reason.IDENTITY


class IntegrityError(SecaggError):
    """Data that failed an authenticity or integrity check (signature, digest, MAC)."""

    code: str = Reason.INTEGRITY


class UpdateRejected(SecaggError):
    """A site's update that the aggregator refuses (shape, NaN, duplicate, truncated stream)."""

    code: str = Reason.UPDATE_REJECTED

    def __init__(self, message: str, code: str = Reason.UPDATE_REJECTED) -> None:
        super().__init__(message)
        self.code = code


class PolicyRefusal(SecaggError):
    """A site policy said no; ``code`` is the reason code reported to the aggregator."""

    code: str = Reason.POLICY

    def __init__(self, message: str, code: str = Reason.POLICY) -> None:
        super().__init__(message)
        self.code = code


class StorageFull(SecaggError):
    """The state disk is full: the write was undone (nothing half-written), the caller may retry once
    space returns. A pause, never a reason to fail a job (issue #18, disk full)."""

    code: str = Reason.STORAGE_FULL


def is_storage_full(exc: BaseException) -> bool:
    """A write refused for want of space: ENOSPC/EDQUOT, SQLite's "disk is full", or ``StorageFull``."""
    import errno
    import sqlite3

    if isinstance(exc, StorageFull):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)

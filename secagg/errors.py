"""Error types shared by every layer.

A user mistake or a refused check must reach the CLI as one clear line and exit code 1, never as a
traceback; so every expected failure is a subclass of :class:`SecaggError`, and the CLI catches only
those. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SecaggError(Exception):
    """A refused or failed check, reported to the user as one line (exit 1)."""

    exit_code = 1
    #: short machine-readable reason code (audit log, declined tasks, metrics labels)
    code = "error"


class UsageError(SecaggError):
    """The command line itself is wrong (exit 2)."""

    exit_code = 2
    code = "usage"


class ConfigError(SecaggError):
    """A project file, kit or policy that cannot be used as given."""

    code = "config"


class IdentityError(SecaggError):
    """A certificate or peer identity that is not a participant of this project."""

    code = "identity"


class IntegrityError(SecaggError):
    """Data that failed an authenticity or integrity check (signature, digest, MAC)."""

    code = "integrity"


class UpdateRejected(SecaggError):
    """A site's update that the aggregator refuses (shape, NaN, duplicate, truncated stream)."""

    code = "update_rejected"

    def __init__(self, message: str, code: str = "update_rejected") -> None:
        super().__init__(message)
        self.code = code


class PolicyRefusal(SecaggError):
    """A site policy said no; ``code`` is the reason code reported to the aggregator."""

    code = "policy"

    def __init__(self, message: str, code: str = "policy") -> None:
        super().__init__(message)
        self.code = code

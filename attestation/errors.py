"""The attestation package's own exception hierarchy.

The package is standalone (no ``secagg`` imports), so callers map these to their own error types.
*Parse* failures (bytes that are not the format), *verification* failures (not authentic) and
*validation* failures (authentic, but not what the policy accepts) are distinct types because a
caller reacts differently to each: a forged report is an alarm, an old TCB is an upgrade ticket.
"""

from __future__ import annotations

from typing import NamedTuple


class Check(NamedTuple):
    """One checked property: what, whether it held, and why (for audit logs and CLI output)."""

    field: str
    ok: bool
    detail: str


class AttestationError(Exception):
    """Base class of every expected failure in this package."""


class ParseError(AttestationError):
    """Input is not well-formed evidence of the claimed format (truncated, oversized, trailing bytes)."""


class CertificateDataError(ParseError):
    """Certificate data supplied *beside* the evidence (``--certs``, an evidence message's certs) that
    is not PEM, DER or a SEV-SNP certificate table: the evidence itself may be fine."""


class VerificationError(AttestationError):
    """Evidence is not authentic: a signature, certificate chain or key binding does not check out.

    ``checks`` holds every check performed up to and including the failed one.
    """

    def __init__(self, message: str, checks: list[Check] | None = None) -> None:
        super().__init__(message)
        self.checks: list[Check] = list(checks or [])


class ValidationError(AttestationError):
    """Authentic evidence whose fields the validation options do not accept.

    Carries *every* failed field (not just the first), so an operator fixes them all in one go.
    """

    def __init__(self, failures: list[Check], checks: list[Check] | None = None) -> None:
        self.failures = [c for c in failures if not c.ok]
        self.checks: list[Check] = list(checks or failures)
        names = ", ".join(f"{c.field} ({c.detail})" for c in self.failures)
        super().__init__(f"validation failed: {names}")


class InsecureDevTeeRefused(AttestationError):
    """Dev-only software-TEE evidence offered where ``allow_insecure_dev_tee`` was not given."""


class OptionsError(AttestationError):
    """Validation options (a policy file) that cannot be used as given."""

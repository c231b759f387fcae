"""Attestation evidence formats and verifiers (AMD SEV-SNP, Intel TDX, dev-only software TEE).

This package knows nothing of gRPC, the CLI or the agent: it takes bytes and options, and returns
parsed, verified and validated results or raises specific errors.

Front door: :func:`attestation.evidence.verify_and_validate` (collects every check into an
:class:`~attestation.evidence.AttestationResult`); options: :class:`~attestation.options.VerifyOptions`
(authenticity) and :class:`~attestation.options.ValidationOptions` (what is accepted).
Per type: ``snp`` / ``snp_verify``, ``tdx`` / ``tdx_verify`` / ``tdx_collateral``, ``devtee``; policy
checks in ``validate``.
"""

from attestation.errors import (
    AttestationError,
    Check,
    InsecureDevTeeRefused,
    OptionsError,
    ParseError,
    ValidationError,
    VerificationError,
)
from attestation.evidence import AttestationResult, detect, verify_and_validate
from attestation.options import ValidationOptions, VerifyOptions, options_from_mapping

__all__ = [
    "AttestationError",
    "AttestationResult",
    "Check",
    "InsecureDevTeeRefused",
    "OptionsError",
    "ParseError",
    "ValidationError",
    "ValidationOptions",
    "VerificationError",
    "VerifyOptions",
    "detect",
    "options_from_mapping",
    "verify_and_validate",
]

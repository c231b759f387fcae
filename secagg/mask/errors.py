"""Failures specific to the masking protocol, each a :class:`SecaggError` so the CLI reports one line.

Authenticity failures (a bad signature, a tampered share, a certificate from another CA) are reported
with the shared :class:`~secagg.errors.IntegrityError` / :class:`~secagg.errors.IdentityError`; the types
here name what only this protocol can go wrong with.
"""

from __future__ import annotations

from secagg.errors import SecaggError
from secagg.reasons import Reason


class RoundAborted(SecaggError):
    """Too few sites remain to finish the round safely; no site's update is revealed."""

    code: str = Reason.MASK_ROUND_ABORTED


class UnmaskRefused(SecaggError):
    """A site refused an unmask request that would let the aggregator strip one site's masks."""

    code: str = Reason.MASK_UNMASK_REFUSED


class ProtocolViolation(SecaggError):
    """A message out of order, for the wrong job or round, duplicated, malformed or misaddressed."""

    code: str = Reason.MASK_PROTOCOL

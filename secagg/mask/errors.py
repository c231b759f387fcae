"""Failures specific to the masking protocol, each a :class:`SecaggError` so the CLI reports one line.

Authenticity failures (a bad signature, a tampered share, a certificate from another CA) are reported
with the shared :class:`~secagg.errors.IntegrityError` / :class:`~secagg.errors.IdentityError`; the types
here name what only this protocol can go wrong with.
"""

from __future__ import annotations

from secagg.errors import SecaggError


class RoundAborted(SecaggError):
    """Too few sites remain to finish the round safely; no site's update is revealed."""

    code = "mask_round_aborted"


class UnmaskRefused(SecaggError):
    """A site refused an unmask request that would let the aggregator strip one site's masks."""

    code = "mask_unmask_refused"


class ProtocolViolation(SecaggError):
    """A message out of order, for the wrong job or round, duplicated, malformed or misaddressed."""

    code = "mask_protocol"

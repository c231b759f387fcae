"""Errors of the TEE protocol, each a :class:`~secagg.errors.SecaggError` with a reason code.

A site reacts to *why* it refused an aggregator (an audit line, a metric label, an upgrade ticket), so
attestation refusals carry every reason code, not just the first.
"""

from __future__ import annotations

from collections.abc import Sequence

from secagg.errors import ConfigError, IntegrityError, PolicyRefusal
from secagg.reasons import Reason

#: every reason code :class:`AttestationRefused` may carry, in the order they are reported
REASON_CODES = (
    Reason.TEE_MALFORMED,
    Reason.TEE_DEV_NOT_ALLOWED,
    Reason.TEE_TYPE,
    Reason.TEE_CHAIN,
    Reason.TEE_REPLAY,
    Reason.TEE_CHANNEL_BINDING,
    Reason.TEE_KEY_BINDING,
    Reason.TEE_DEBUG,
    Reason.TEE_MEASUREMENT,
    Reason.TEE_TCB,
    Reason.TEE_STALE,
    Reason.TEE_POLICY,
    Reason.TEE_SUITE,
    Reason.TEE_KEY_CHANGED,
)


class AttestationRefused(PolicyRefusal):
    """The site does not accept this aggregator's evidence or keys.

    ``code`` is the first reason (in :data:`REASON_CODES` order), ``codes`` all of them, and the message
    lists every failed field so an operator can fix them all at once.
    """

    def __init__(self, codes: Sequence[str], details: Sequence[str]) -> None:
        ordered = sorted(set(codes), key=REASON_CODES.index)
        super().__init__(
            "aggregator attestation refused: " + "; ".join(details), code=ordered[0] if ordered else "tee"
        )
        self.codes: tuple[str, ...] = tuple(ordered)
        self.details: tuple[str, ...] = tuple(details)


class ModelSignatureInvalid(IntegrityError):
    """A global model whose signature does not come from the attested aggregator for this job/round."""

    code: str = Reason.TEE_MODEL_SIGNATURE


class RelaySignatureInvalid(IntegrityError):
    """A ``tee-mask`` protocol message that the attested enclave did not sign for this job, round,
    attempt, topic and recipient: the host forged, altered or replayed it."""

    code: str = Reason.TEE_RELAY_SIGNATURE


class TeeUnavailable(ConfigError):
    """No TEE evidence source on this machine (no configfs-tsm, or not a confidential VM)."""

    code: str = Reason.TEE_UNAVAILABLE

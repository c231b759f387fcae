"""TEE mode: sites seal updates to keys bound into an attested aggregator's evidence.

Flow: the site sends a fresh nonce; :meth:`enclave.Enclave.answer_challenge` returns evidence binding
the nonce, the announced keys and the TLS certificate (:mod:`binding`); the site runs
:func:`site.verify_aggregator` against its policy, seals with :meth:`site.TrustedAggregator.seal_update`
(chunked HPKE, :mod:`sealing`); the enclave opens in memory (:meth:`enclave.Enclave.open_update`),
aggregates and signs the global model (:meth:`enclave.Enclave.sign_model`), which sites check with
:meth:`site.TrustedAggregator.verify_model` before using it. Pure library: no gRPC, no CLI.
"""

from secagg.tee.attester import Attester, ConfigfsTsmAttester, DevTeeAttester, RawEvidence
from secagg.tee.binding import report_data
from secagg.tee.enclave import Enclave, EnclaveKeys
from secagg.tee.errors import AttestationRefused, ModelSignatureInvalid, TeeUnavailable
from secagg.tee.messages import EvidenceMessage, KeyAnnouncement
from secagg.tee.site import KeyPin, TrustedAggregator, verify_aggregator

__all__ = [
    "AttestationRefused",
    "Attester",
    "ConfigfsTsmAttester",
    "DevTeeAttester",
    "Enclave",
    "EnclaveKeys",
    "EvidenceMessage",
    "KeyAnnouncement",
    "KeyPin",
    "ModelSignatureInvalid",
    "RawEvidence",
    "TeeUnavailable",
    "TrustedAggregator",
    "report_data",
    "verify_aggregator",
]

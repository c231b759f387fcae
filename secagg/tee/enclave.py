"""The aggregator side of the TEE protocol, meant to run inside the attested confidential VM.

Keys are generated here, in memory, and never leave it: the HPKE private keys (one per offered suite)
open sites' updates, the ECDSA P-384 key signs each round's global model. Both public halves are
announced and bound into the evidence (:mod:`secagg.tee.binding`), so a site trusts them exactly as
far as it trusts the measured image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.tee import modelsig, relaysig, sealing, suites
from secagg.tee.attester import Attester, ConfigfsTsmAttester, DevTeeAttester, RawEvidence
from secagg.tee.binding import check_nonce, report_data
from secagg.tee.messages import EvidenceMessage, KeyAnnouncement

__all__ = [
    "Attester",
    "ConfigfsTsmAttester",
    "DevTeeAttester",
    "Enclave",
    "EnclaveKeys",
    "EvidenceMessage",
    "KeyAnnouncement",
    "RawEvidence",
]


@dataclass(frozen=True, repr=False)
class EnclaveKeys:
    """The enclave's HPKE key pairs (one per suite, strongest first) and its model-signing key."""

    hpke_private: tuple[tuple[str, suites.PrivateKey], ...]
    hpke_public: tuple[tuple[str, bytes], ...]
    model_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, suites_: Sequence[str] = suites.DEFAULT_SUITES) -> EnclaveKeys:
        names = suites.check_names(suites_)
        pairs = [(n, *suites.generate(n)) for n in names]
        return cls(
            hpke_private=tuple((n, k) for n, k, _ in pairs),
            hpke_public=tuple((n, p) for n, _, p in pairs),
            model_key=ec.generate_private_key(ec.SECP384R1()),
        )

    def __repr__(self) -> str:  # never print key material
        return f"EnclaveKeys(suites={[n for n, _ in self.hpke_public]}, <private keys redacted>)"

    def announcement(self) -> KeyAnnouncement:
        spki = self.model_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return KeyAnnouncement(hpke_keys=self.hpke_public, model_key=spki)


class Enclave:
    """Answers attestation challenges, opens sealed updates in memory, signs global models."""

    def __init__(self, attester: Attester, keys: EnclaveKeys | None = None) -> None:
        self.attester = attester
        self.keys = keys or EnclaveKeys.generate()
        self.announcement = self.keys.announcement()
        self._private = dict(self.keys.hpke_private)

    def answer_challenge(self, nonce: bytes, tls_cert_der: bytes) -> EvidenceMessage:
        """Evidence binding the site's ``nonce``, our announced keys and our TLS certificate."""
        rd = report_data(check_nonce(nonce), self.announcement, tls_cert_der)
        raw = self.attester.attest(rd)
        return EvidenceMessage(
            evidence=raw.evidence,
            announcement=self.announcement,
            nonce=bytes(nonce),
            tls_cert_sha256=hashlib.sha256(tls_cert_der).digest(),
            certs=raw.certs,
        )

    def open_update(
        self, chunks: Iterable[bytes], job: str, round: int, site: str, *, max_bytes: int | None = None
    ) -> bytes:
        """The plaintext update of ``site`` (its mTLS identity, never a message field) for this
        job and round; raises :class:`~secagg.errors.UpdateRejected` (see :func:`sealing.open_chunks`)."""
        ctx = sealing.Context(job, int(round), site, self.announcement.digest())
        return sealing.open_chunks(chunks, self._private, ctx, max_bytes=max_bytes)

    def open_update_chunk(
        self, raw: bytes, expect: sealing.ChunkHeader, job: str, round: int, site: str
    ) -> bytes:
        """One chunk of ``site``'s sealed update, opened at its place (:func:`sealing.open_chunk`), so
        that an update is opened a window at a time and never whole."""
        ctx = sealing.Context(job, int(round), site, self.announcement.digest())
        return sealing.open_chunk(raw, self._private, ctx, expect)

    def open_message(
        self, chunks: Iterable[bytes], job: str, round: int, site: str, purpose: str, *, max_bytes: int
    ) -> bytes:
        """A ``tee-mask`` protocol message of ``site`` sealed for ``purpose`` (topic and attempt), opened
        here so that the host relaying it never sees it; refused as :meth:`open_update` refuses."""
        ctx = sealing.Context(job, int(round), site, self.announcement.digest(), purpose)
        return sealing.open_chunks(chunks, self._private, ctx, max_bytes=max_bytes)

    def sign_message(self, payload: bytes, job: str, round: int, attempt: int, topic: str, to: str) -> bytes:
        """``payload`` signed for its recipient (``to``, or ``relaysig.EVERYONE``): see
        :mod:`secagg.tee.relaysig`."""
        return relaysig.sign(self.keys.model_key, payload, job, round, attempt, topic, to)

    def sign_model(self, fingerprint: str, job: str, round: int) -> bytes:
        """Signature over the global model's :func:`secagg.bundle.fingerprint` for this job and round."""
        return modelsig.sign(self.keys.model_key, fingerprint, job, round)

"""The aggregator side of the TEE protocol, meant to run inside the attested confidential VM.

Keys are made here and never leave it in the clear: the HPKE private keys (one per offered suite)
open sites' updates, the ECDSA P-384 key signs each round's global model. Both public halves are
announced and bound into the evidence (:mod:`secagg.tee.binding`), so a site trusts them exactly as
far as it trusts the measured image. Every key of a set is derived from one 32-byte seed; with a
vault (:mod:`secagg.tee.vault`) each job has its own set, whose seed is kept sealed to the TEE's
sealing key (:mod:`secagg.tee.keyseal`) so that a restarted enclave announces the keys its sites
pinned for the job (RELIABILITY.md F7).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import UpdateRejected
from secagg.reasons import Reason
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
    #: what every key above is derived from (:meth:`from_seed`): all a restart needs to get them back,
    #: so it is what :mod:`secagg.tee.keyseal` seals; never printed, never written in the clear
    seed: bytes = field(default=b"", compare=False)

    @classmethod
    def generate(cls, suites_: Sequence[str] = suites.DEFAULT_SUITES) -> EnclaveKeys:
        """Fresh keys: derived from a fresh random seed."""
        return cls.from_seed(os.urandom(suites.SEED_SIZE), suites_)

    @classmethod
    def from_seed(cls, seed: bytes, suites_: Sequence[str] = suites.DEFAULT_SUITES) -> EnclaveKeys:
        """The key set ``seed`` determines (the same seed and suites give the same keys)."""
        names = suites.check_names(suites_)
        pairs = [(n, *suites.derive(n, seed)) for n in names]
        return cls(
            hpke_private=tuple((n, k) for n, k, _ in pairs),
            hpke_public=tuple((n, p) for n, _, p in pairs),
            model_key=suites.derive_p384(seed, "model-signing"),
            seed=bytes(seed),
        )

    @property
    def suites(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.hpke_public)

    def __repr__(self) -> str:  # never print key material
        return f"EnclaveKeys(suites={[n for n, _ in self.hpke_public]}, <private keys redacted>)"

    def announcement(self) -> KeyAnnouncement:
        spki = self.model_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return KeyAnnouncement(hpke_keys=self.hpke_public, model_key=spki)


class Enclave:
    """Answers attestation challenges, opens sealed updates in memory, signs global models.

    Without a ``vault`` one key set (``keys``) serves every job and lives in this process only. With
    one (:class:`secagg.tee.vault.JobKeyVault`), each job has its own key set, made at
    :meth:`open_job` and sealed to the TEE's sealing key in the job's state folder before it is first
    announced, so that an enclave restarted mid-job comes back with the keys its sites pinned."""

    def __init__(self, attester: Attester, keys: EnclaveKeys | None = None, *, vault: Any = None) -> None:
        self.attester = attester
        self.keys = keys or EnclaveKeys.generate()
        self.announcement = self.keys.announcement()
        self._private = dict(self.keys.hpke_private)
        self.vault = vault
        self._jobs: dict[str, tuple[EnclaveKeys, KeyAnnouncement, dict[str, suites.PrivateKey]]] = {}
        self._lock = threading.Lock()

    def open_job(self, job: str) -> None:
        """Make ``job``'s keys ready: unsealed if the job has sealed keys (a restart), else made and
        sealed. Raises :class:`~secagg.tee.keyseal.SealedKeysInvalid` for sealed keys that do not open
        here (another image): the job cannot go on under this enclave. Without a vault, nothing to do."""
        if self.vault is not None:
            self._job(job, create=True)

    def close_job(self, job: str) -> None:
        """``job`` has ended: its sealed keys are removed from disk. This process keeps them in memory
        (a site still owed the final model gets it signed); a restart never needs them again."""
        if self.vault is not None:
            self.vault.destroy(job)

    def _job(
        self, job: str | None, *, create: bool = False
    ) -> tuple[EnclaveKeys, KeyAnnouncement, dict[str, suites.PrivateKey]]:
        if self.vault is None:
            return self.keys, self.announcement, self._private
        if job is None:
            raise ValueError("an enclave with per-job keys needs the job")
        with self._lock:
            got = self._jobs.get(job)
            if got is None:
                keys = self.vault.open_or_create(job, self.keys.suites) if create else self.vault.load(job)
                if keys is None:
                    raise UpdateRejected(f"the enclave holds no keys for job {job!r}", Reason.NO_SUCH_JOB)
                got = self._jobs[job] = (keys, keys.announcement(), dict(keys.hpke_private))
            return got

    def announcement_for(self, job: str | None) -> KeyAnnouncement:
        """The keys announced (and bound into evidence) for ``job``."""
        return self._job(job)[1]

    def answer_challenge(self, nonce: bytes, tls_cert_der: bytes, job: str | None = None) -> EvidenceMessage:
        """Evidence binding the site's ``nonce``, our announced keys (``job``'s) and our TLS certificate."""
        announcement = self._job(job)[1]
        rd = report_data(check_nonce(nonce), announcement, tls_cert_der)
        raw = self.attester.attest(rd)
        return EvidenceMessage(
            evidence=raw.evidence,
            announcement=announcement,
            nonce=bytes(nonce),
            tls_cert_sha256=hashlib.sha256(tls_cert_der).digest(),
            certs=raw.certs,
        )

    def open_update(
        self, chunks: Iterable[bytes], job: str, round: int, site: str, *, max_bytes: int | None = None
    ) -> bytes:
        """The plaintext update of ``site`` (its mTLS identity, never a message field) for this
        job and round; raises :class:`~secagg.errors.UpdateRejected` (see :func:`sealing.open_chunks`)."""
        _, ann, private = self._job(job)
        ctx = sealing.Context(job, int(round), site, ann.digest())
        return sealing.open_chunks(chunks, private, ctx, max_bytes=max_bytes)

    def open_update_chunk(
        self, raw: bytes, expect: sealing.ChunkHeader, job: str, round: int, site: str
    ) -> bytes:
        """One chunk of ``site``'s sealed update, opened at its place (:func:`sealing.open_chunk`), so
        that an update is opened a window at a time and never whole."""
        _, ann, private = self._job(job)
        ctx = sealing.Context(job, int(round), site, ann.digest())
        return sealing.open_chunk(raw, private, ctx, expect)

    def open_message(
        self, chunks: Iterable[bytes], job: str, round: int, site: str, purpose: str, *, max_bytes: int
    ) -> bytes:
        """A ``tee-mask`` protocol message of ``site`` sealed for ``purpose`` (topic and attempt), opened
        here so that the host relaying it never sees it; refused as :meth:`open_update` refuses."""
        _, ann, private = self._job(job)
        ctx = sealing.Context(job, int(round), site, ann.digest(), purpose)
        return sealing.open_chunks(chunks, private, ctx, max_bytes=max_bytes)

    def sign_message(self, payload: bytes, job: str, round: int, attempt: int, topic: str, to: str) -> bytes:
        """``payload`` signed for its recipient (``to``, or ``relaysig.EVERYONE``): see
        :mod:`secagg.tee.relaysig`."""
        return relaysig.sign(self._job(job)[0].model_key, payload, job, round, attempt, topic, to)

    def sign_model(self, fingerprint: str, job: str, round: int) -> bytes:
        """Signature over the global model's :func:`secagg.bundle.fingerprint` for this job and round."""
        return modelsig.sign(self._job(job)[0].model_key, fingerprint, job, round)

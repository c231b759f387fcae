"""The site side of the TEE protocol: verify and validate the aggregator, then seal updates to it.

Order matters (security invariant 4): a site seals an update only to keys announced with evidence that
(1) is authentic (:func:`attestation.evidence.verify_and_validate` checks signatures and chains),
(2) satisfies the site policy (types, measurements, debug, TCB, age), and (3) binds the site's own
fresh nonce, the announced keys and the TLS certificate the site sees (:mod:`secagg.tee.binding`).
Every failure is collected and refused at once with reason codes (:class:`AttestationRefused`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from attestation.errors import ParseError
from attestation.evidence import AttestationResult, detect, verify_and_validate
from attestation.options import ValidationOptions, VerifyOptions
from secagg.errors import IntegrityError
from secagg.reasons import Reason
from secagg.tee import modelsig, relaysig, sealing, suites
from secagg.tee.binding import NONCE_SIZE, report_data, report_data_from_digests
from secagg.tee.errors import AttestationRefused
from secagg.tee.messages import EvidenceMessage, KeyAnnouncement

#: validation field (as reported by the attestation package) -> reason code
_FIELD_CODES = {
    "measurement": Reason.TEE_MEASUREMENT,
    "debug": Reason.TEE_DEBUG,
    "min_tcb": Reason.TEE_TCB,
    "tee_tcb_svn": Reason.TEE_TCB,
    "guest_svn": Reason.TEE_TCB,
    "collateral": Reason.TEE_TCB,
    "timestamp": Reason.TEE_STALE,
}


@dataclass(frozen=True)
class TrustedAggregator:
    """An aggregator whose evidence this site accepted: what it may seal to and whose models it takes."""

    announcement: KeyAnnouncement
    suite: str
    evidence_type: str
    measurement: str
    result: AttestationResult

    def seal_update(
        self,
        payload: bytes | Iterable[bytes],
        job: str,
        round: int,
        site: str,
        *,
        size: int | None = None,
        chunk_size: int = sealing.MAX_CHUNK,
    ) -> Iterator[bytes]:
        """Sealed chunks (each at most 4 MiB) of ``payload`` for this job, round and site (the name in
        this site's certificate, which the aggregator takes from mTLS). See :func:`sealing.seal_chunks`
        for ``size``."""
        public = suites.load_public(self.suite, self.announcement.public_key(self.suite))
        ctx = sealing.Context(job, int(round), site, self.announcement.digest())
        return sealing.seal_chunks(payload, public, self.suite, ctx, size=size, chunk_size=chunk_size)

    def seal_message(self, payload: bytes, job: str, round: int, site: str, purpose: str) -> Iterator[bytes]:
        """A ``tee-mask`` protocol message sealed for ``purpose`` (its topic and attempt), so that only
        the enclave opens it and only as that phase's message."""
        public = suites.load_public(self.suite, self.announcement.public_key(self.suite))
        ctx = sealing.Context(job, int(round), site, self.announcement.digest(), purpose)
        return sealing.seal_chunks(payload, public, self.suite, ctx)

    def open_message(self, message: bytes, job: str, round: int, attempt: int, topic: str, to: str) -> bytes:
        """The payload of a message the enclave published, if its bound key signed it for us."""
        return relaysig.open_signed(self.announcement.model_key, message, job, round, attempt, topic, to)

    def verify_model(self, signature: bytes, fingerprint: str, job: str, round: int) -> None:
        """Raise :class:`~secagg.tee.errors.ModelSignatureInvalid` unless the attested aggregator signed
        this global model fingerprint for this job and round."""
        modelsig.verify(self.announcement.model_key, signature, fingerprint, job, round)


class KeyPin:
    """Pins the aggregator's announced keys per job: fresh evidence with *other* keys mid-job is refused.

    Re-attestation each round is fine, key rotation within a job is not: it would let a second
    (possibly differently measured or debug) instance receive later rounds. ``to_json``/``from_json``
    let the agent keep pins across restarts.
    """

    def __init__(self, pins: dict[str, str] | None = None) -> None:
        self._pins: dict[str, str] = dict(pins or {})

    def check(self, job: str, announcement: KeyAnnouncement) -> None:
        digest = announcement.digest().hex()
        pinned = self._pins.setdefault(job, digest)
        if not hmac.compare_digest(pinned, digest):
            raise AttestationRefused(
                [Reason.TEE_KEY_CHANGED],
                [
                    f"key_pin: aggregator keys changed within job {job!r} (pinned {pinned[:16]}..., "
                    f"now {digest[:16]}...)"
                ],
            )

    def pinned(self, job: str) -> str | None:
        return self._pins.get(job)

    def to_json(self) -> str:
        return json.dumps(self._pins, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KeyPin:
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise IntegrityError("key pins must be a JSON object of job -> hex digest")
        return cls({str(k): v for k, v in data.items()})


def _binding_failures(
    msg: EvidenceMessage, nonce: bytes, tls_sha: bytes, actual_hex: str
) -> list[tuple[str, str]]:
    """Name which binding failed. The echoed nonce/certificate digest are untrusted and used only to
    diagnose: acceptance already required the evidence to equal the site's own expected value."""
    try:
        actual = bytes.fromhex(actual_hex)
        claimed = report_data_from_digests(msg.nonce, msg.announcement.digest(), msg.tls_cert_sha256)
    except ValueError:
        claimed, actual = b"", b"?"
    out: list[tuple[str, str]] = []
    other_nonce = not hmac.compare_digest(msg.nonce, nonce)
    if hmac.compare_digest(claimed, actual):
        if other_nonce:
            out.append(
                (
                    Reason.TEE_REPLAY,
                    f"report_data: evidence was made for another nonce ({msg.nonce.hex()[:16]}...)",
                )
            )
        if not hmac.compare_digest(msg.tls_cert_sha256, tls_sha):
            out.append(
                (
                    Reason.TEE_CHANNEL_BINDING,
                    "report_data: evidence binds another TLS certificate than this channel's",
                )
            )
    else:
        if other_nonce:
            out.append((Reason.TEE_REPLAY, "report_data: the answer names another nonce than ours"))
        out.append((Reason.TEE_KEY_BINDING, "report_data: evidence does not bind the announced keys"))
    default: list[tuple[str, str]] = [
        (Reason.TEE_KEY_BINDING, "report_data: does not equal the expected binding")
    ]
    return out or default


def verify_aggregator(
    evidence_msg: EvidenceMessage | bytes,
    nonce: bytes,
    tls_cert_der: bytes,
    policy_options: ValidationOptions,
    *,
    allow_insecure_dev_tee: bool,
    now: dt.datetime | None = None,
    trusted_dev_keys: Sequence[bytes] = (),
    certs: Sequence[bytes] = (),
    collateral_dir: str | Path | None = None,
    allowed_suites: Sequence[str] = suites.DEFAULT_SUITES,
    key_pin: KeyPin | None = None,
    job: str | None = None,
) -> TrustedAggregator:
    """Verify and validate the aggregator's answer to our ``nonce``; raise :class:`AttestationRefused`
    naming every failure, else return what we may seal to.

    ``tls_cert_der`` is the certificate *this site* saw in the TLS handshake. ``trusted_dev_keys``
    (PEM) pin the dev-TEE key; certificates sent by the aggregator are used only for hardware
    evidence, whose chains end at the vendors' pinned roots, never to trust a dev-TEE key.
    ``collateral_dir``: Intel collateral (TCB info, QE identity, CRLs) to check a TDX quote's TCB status.
    Freshness: the nonce binding makes hardware evidence fresh; ``max_age_s`` applies to dev-TEE
    evidence, which carries a timestamp.
    ``allowed_suites``: HPKE suites the site policy accepts; the strongest one the aggregator also
    offers is used. With ``key_pin`` and ``job``, keys are pinned for the job (``tee_key_changed``).
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    try:
        msg = (
            evidence_msg
            if isinstance(evidence_msg, EvidenceMessage)
            else EvidenceMessage.from_bytes(evidence_msg)
        )
    except IntegrityError as exc:
        raise AttestationRefused([Reason.TEE_MALFORMED], [f"message: {exc}"]) from None
    try:
        kind = detect(msg.evidence)
    except ParseError as exc:
        raise AttestationRefused([Reason.TEE_MALFORMED], [f"evidence: {exc}"]) from None
    expected = report_data(nonce, msg.announcement, tls_cert_der)
    verifier_certs = list(trusted_dev_keys) if kind == "dev-tee" else [*certs, *msg.certs]
    res = verify_and_validate(
        msg.evidence,
        VerifyOptions(
            certs=verifier_certs,
            allow_insecure_dev_tee=allow_insecure_dev_tee,
            collateral_dir=collateral_dir,
            now=now,
        ),
        options=policy_options,
        expected_report_data=expected,
    )
    failures: list[tuple[str, str]] = []
    for err in res.errors:
        field = err.split(":", 1)[0]
        if field == "parse":
            failures.append((Reason.TEE_MALFORMED, err))
        elif field == "insecure_dev_tee":
            failures.append(
                (
                    Reason.TEE_DEV_NOT_ALLOWED,
                    "insecure dev TEE refused: the site policy does not set "
                    "allow_insecure_dev_tee (dev TEE evidence is not hardware-backed)",
                )
            )
        elif field == "options":
            failures.append((Reason.TEE_POLICY, err))
        elif field == "type":
            failures.append((Reason.TEE_TYPE, err))
        elif not res.verified:
            failures.append((Reason.TEE_CHAIN, f"not authentic: {err}"))
        elif field == "report_data":
            failures += _binding_failures(msg, nonce, hashlib.sha256(tls_cert_der).digest(), res.report_data)
        else:
            failures.append((_FIELD_CODES.get(field.split(".")[0], Reason.TEE_POLICY), err))
    if not failures and res.decision != "accept":
        failures.append((Reason.TEE_CHAIN, "evidence was not verified"))
    if failures:
        raise AttestationRefused([c for c, _ in failures], [d for _, d in failures])
    suite = suites.strongest(msg.announcement.suites, allowed_suites)
    if suite is None:
        raise AttestationRefused(
            [Reason.TEE_SUITE],
            [
                f"suite: aggregator offers {list(msg.announcement.suites)}, "
                f"policy allows {list(allowed_suites)}"
            ],
        )
    if key_pin is not None:
        if job is None:
            raise ValueError("key_pin needs the job")
        key_pin.check(job, msg.announcement)
    return TrustedAggregator(msg.announcement, suite, res.type, res.measurement, res)

"""A site's local model, sealed to one other site and signed; and a site's signed consent.

Why site to site, in every mode: a single site's local model is exactly what every mode exists to keep
from the aggregator, and no mode's own protection fits it. ``mask`` hides one input only inside a sum;
``he`` could encrypt under the shared CKKS key, but the model would then be approximate and about
twenty times larger, for no more secrecy (every site holds that key); ``tee`` would put it in the
enclave's clear, and ``plain`` in the aggregator's. HPKE (RFC 9180, base mode, DHKEM(P-384),
HKDF-SHA384, AES-256-GCM: the suite the HE key custody uses) to the recipient's provisioned
certificate key gives the same guarantee in all of them: only the named recipient opens it, the
aggregator relays and stores ciphertext only (in ``plain`` mode, too: it sees updates there, but it is
never given a local model), and no key exchange round is needed, since every site kit carries its
peers' certificates, verified against the project CA.

HPKE base mode does not say who sealed: so the sender signs (ECDSA P-384 / SHA-384, its certificate
key) the sealed bytes together with project, job, sender and recipient, and the recipient checks that
signature against the sender's certificate first. The aggregator can therefore drop an envelope (a
missing cell of the matrix, visible), never forge, swap, replay from another job or misroute one.

A consent is the same kind of signed statement: site, job and whether it shares. Each site checks
every other site's consent itself, so the rule "only where every site allows it" does not rest on the
aggregator's word.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import IntegrityError
from secagg.he.custody import SUITE
from secagg.reasons import Reason

_SEAL_DOMAIN = b"secagg/xsite-local-model/v1"
_SIG_DOMAIN = b"secagg/xsite-local-model-sig/v1"
_CONSENT_DOMAIN = b"secagg/xsite-consent/v1"
ENVELOPE_FORMAT = "secagg-xsite-envelope/v1"
CONSENT_FORMAT = "secagg-xsite-consent/v1"


class EnvelopeError(IntegrityError):
    """A sealed model or consent that does not verify: wrong sender, recipient, job, or tampered."""

    code: str = Reason.XSITE_ENVELOPE


def _lp(*parts: bytes) -> bytes:
    """Length-prefix each part, so no two different tuples encode to the same bytes."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise EnvelopeError(f"{what} is not valid base64") from None


def _p384(cert: x509.Certificate, who: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise EnvelopeError(f"{who}: certificate key is not an ECDSA P-384 key")
    return key


def _verify(cert: x509.Certificate, who: str, sig: bytes, message: bytes, what: str) -> None:
    try:
        _p384(cert, who).verify(sig, message, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EnvelopeError(f"{what} is not signed by {who}") from None


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeError):
        raise EnvelopeError(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise EnvelopeError(f"{what} is not a JSON object")
    return doc


# ------------------------------------------------------------------------------- the model ----
@dataclass(frozen=True)
class Envelope:
    """One local model, sealed from ``sender`` to ``recipient`` for ``job`` (parse only: opening it
    is :func:`open_model`)."""

    job: str
    sender: str
    recipient: str
    sealed: bytes
    sig: bytes

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": ENVELOPE_FORMAT,
                "job": self.job,
                "from": self.sender,
                "to": self.recipient,
                "sealed": base64.b64encode(self.sealed).decode(),
                "sig": base64.b64encode(self.sig).decode(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        doc = _json(data, "sealed local model")
        if doc.get("format") != ENVELOPE_FORMAT or set(doc) != {
            "format",
            "job",
            "from",
            "to",
            "sealed",
            "sig",
        }:
            raise EnvelopeError("not a sealed local model (format or fields)")
        if not all(isinstance(doc[k], str) for k in ("job", "from", "to")):
            raise EnvelopeError("sealed local model: job, from and to must be strings")
        return cls(doc["job"], doc["from"], doc["to"], _b64(doc["sealed"], "sealed"), _b64(doc["sig"], "sig"))

    def signed_message(self, project: str) -> bytes:
        return _lp(
            _SIG_DOMAIN,
            project.encode(),
            self.job.encode(),
            self.sender.encode(),
            self.recipient.encode(),
            self.sealed,
        )

    def verify_sender(self, sender_cert: x509.Certificate, project: str) -> None:
        """The sender's signature over the sealed bytes and every name they are bound to."""
        _verify(sender_cert, self.sender, self.sig, self.signed_message(project), "sealed local model")


def _info(project: str, job: str, sender: str, recipient: str) -> bytes:
    return _lp(_SEAL_DOMAIN, project.encode(), job.encode(), sender.encode(), recipient.encode())


def seal_model(
    model: bytes,
    *,
    project: str,
    job: str,
    sender: str,
    sender_key: ec.EllipticCurvePrivateKey,
    recipient: str,
    recipient_cert: x509.Certificate,
) -> Envelope:
    """Seal ``model`` (safetensors bytes) to ``recipient``'s certificate key and sign it as ``sender``."""
    sealed = SUITE.encrypt(
        model, _p384(recipient_cert, recipient), info=_info(project, job, sender, recipient)
    )
    env = Envelope(job, sender, recipient, sealed, b"")
    sig = sender_key.sign(env.signed_message(project), ec.ECDSA(hashes.SHA384()))
    return Envelope(job, sender, recipient, sealed, sig)


def open_model(
    env: Envelope,
    *,
    project: str,
    job: str,
    me: str,
    my_key: ec.EllipticCurvePrivateKey,
    sender_cert: x509.Certificate,
) -> bytes:
    """The model bytes, only if ``env`` is for this job and this site and signed by its sender."""
    if env.job != job or env.recipient != me:
        raise EnvelopeError(f"sealed local model is for {env.recipient} in {env.job}, not {me} in {job}")
    env.verify_sender(sender_cert, project)
    try:
        return SUITE.decrypt(env.sealed, my_key, info=_info(project, job, env.sender, me))
    except (InvalidTag, ValueError, TypeError) as exc:
        raise EnvelopeError(
            f"sealed local model from {env.sender} does not open: {type(exc).__name__}"
        ) from None


# ----------------------------------------------------------------------------- the consent ----
@dataclass(frozen=True)
class Consent:
    """A site's signed answer: does it share its local model in ``job`` (``code``: why not)."""

    job: str
    site: str
    share: bool
    code: str
    sig: bytes = b""

    def signed_message(self, project: str) -> bytes:
        return _lp(
            _CONSENT_DOMAIN,
            project.encode(),
            self.job.encode(),
            self.site.encode(),
            b"share" if self.share else b"keep",
            self.code.encode(),
        )

    def signed(self, key: ec.EllipticCurvePrivateKey, project: str) -> Consent:
        sig = key.sign(self.signed_message(project), ec.ECDSA(hashes.SHA384()))
        return Consent(self.job, self.site, self.share, self.code, sig)

    def verify(self, cert: x509.Certificate, project: str) -> None:
        _verify(cert, self.site, self.sig, self.signed_message(project), f"consent of {self.site}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CONSENT_FORMAT,
            "job": self.job,
            "site": self.site,
            "share": self.share,
            "code": self.code,
            "sig": base64.b64encode(self.sig).decode(),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Consent:
        if not isinstance(doc, dict) or doc.get("format") != CONSENT_FORMAT:
            raise EnvelopeError("not a cross-site evaluation consent")
        if set(doc) != {"format", "job", "site", "share", "code", "sig"}:
            raise EnvelopeError("consent: unexpected or missing fields")
        if not (
            isinstance(doc["job"], str) and isinstance(doc["site"], str) and isinstance(doc["code"], str)
        ):
            raise EnvelopeError("consent: job, site and code must be strings")
        if not isinstance(doc["share"], bool) or len(doc["code"]) > 64:
            raise EnvelopeError("consent: share must be a boolean and code a short string")
        return cls(doc["job"], doc["site"], doc["share"], doc["code"], _b64(doc["sig"], "consent sig"))

    @classmethod
    def from_bytes(cls, data: bytes) -> Consent:
        return cls.from_dict(_json(data, "consent"))


__all__ = [
    "CONSENT_FORMAT",
    "ENVELOPE_FORMAT",
    "Consent",
    "Envelope",
    "EnvelopeError",
    "open_model",
    "seal_model",
]

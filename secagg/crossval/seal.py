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

A model of any size travels in chunks (through the rounds' streamed upload and a streamed fetch), so
HPKE seals only a fresh 256-bit content key to the recipient; the model is then AES-256-GCM in chunks
of :data:`SEAL_CHUNK` under that key, each with its index and a last-chunk flag in the nonce (the
STREAM construction: no chunk can be dropped, reordered or the stream cut short), and project, job,
sender, recipient and length in its associated data. Neither side ever needs the whole ciphertext in
memory.

HPKE base mode does not say who sealed: so the sender signs (ECDSA P-384 / SHA-384, its certificate
key) the wrapped key, the length and the SHA-256 of the whole ciphertext together with project, job,
sender and recipient, and the recipient checks that signature against the sender's certificate first.
The aggregator can therefore drop an envelope (a missing cell of the matrix, visible), never forge,
swap, replay from another job or misroute one.

A consent is the same kind of signed statement: site, job and whether it shares. Each site checks
every other site's consent itself, so the rule "only where every site allows it" does not rest on the
aggregator's word.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import io
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import IntegrityError
from secagg.framing import rechunk
from secagg.he.custody import SUITE
from secagg.reasons import Reason

_SEAL_DOMAIN = b"secagg/xsite-local-model/v2"
_CHUNK_DOMAIN = b"secagg/xsite-local-model-chunk/v2"
_SIG_DOMAIN = b"secagg/xsite-local-model-sig/v2"
_CONSENT_DOMAIN = b"secagg/xsite-consent/v1"
ENVELOPE_FORMAT = "secagg-xsite-envelope/v2"
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
#: plaintext bytes per sealed chunk (each chunk is its own AES-256-GCM message, :data:`TAG` longer)
SEAL_CHUNK = 1 << 20
TAG = 16
_KEY_BYTES = 32


def sealed_size(plain_bytes: int) -> int:
    """The ciphertext length of a model of ``plain_bytes`` (one chunk at least: an empty one too)."""
    chunks = max(1, -(-plain_bytes // SEAL_CHUNK))
    return plain_bytes + chunks * TAG


def _nonce(index: int, last: bool) -> bytes:
    """Chunk ``index``'s nonce (a fresh key per model, so a counter is unique) with the STREAM
    construction's last-chunk flag: a relay can neither reorder chunks nor cut the stream short."""
    return struct.pack(">QxxxB", index, 1 if last else 0)


@dataclass(frozen=True)
class Envelope:
    """The header of one local model sealed from ``sender`` to ``recipient`` for ``job``: the content
    key wrapped to the recipient (HPKE), the model's length, the SHA-256 of the ciphertext that
    travels after it, and the sender's signature over all of it. The ciphertext itself is streamed
    (:func:`seal_stream`, :func:`open_stream`), so a model of any size travels in chunks."""

    job: str
    sender: str
    recipient: str
    wrapped: bytes
    plain_bytes: int
    digest: str
    sig: bytes = b""

    @property
    def sealed_bytes(self) -> int:
        return sealed_size(self.plain_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ENVELOPE_FORMAT,
            "job": self.job,
            "from": self.sender,
            "to": self.recipient,
            "wrapped": base64.b64encode(self.wrapped).decode(),
            "plain_bytes": self.plain_bytes,
            "sha256": self.digest,
            "sig": base64.b64encode(self.sig).decode(),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Envelope:
        fields = {"format", "job", "from", "to", "wrapped", "plain_bytes", "sha256", "sig"}
        if not isinstance(doc, dict) or doc.get("format") != ENVELOPE_FORMAT or set(doc) != fields:
            raise EnvelopeError("not a sealed local model (format or fields)")
        if not all(isinstance(doc[k], str) for k in ("job", "from", "to", "sha256")):
            raise EnvelopeError("sealed local model: job, from, to and sha256 must be strings")
        n = doc["plain_bytes"]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 1 << 50:
            raise EnvelopeError("sealed local model: plain_bytes must be a size")
        if len(doc["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in doc["sha256"]):
            raise EnvelopeError("sealed local model: sha256 must be 64 lower-case hex digits")
        return cls(
            doc["job"],
            doc["from"],
            doc["to"],
            _b64(doc["wrapped"], "wrapped"),
            n,
            doc["sha256"],
            _b64(doc["sig"], "sig"),
        )

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        return cls.from_dict(_json(data, "sealed local model"))

    def signed_message(self, project: str) -> bytes:
        return _lp(
            _SIG_DOMAIN,
            project.encode(),
            self.job.encode(),
            self.sender.encode(),
            self.recipient.encode(),
            self.wrapped,
            str(self.plain_bytes).encode(),
            self.digest.encode(),
        )

    def verify_sender(self, sender_cert: x509.Certificate, project: str) -> None:
        """The sender's signature over the wrapped key, the ciphertext's digest and every name they
        are bound to."""
        _verify(sender_cert, self.sender, self.sig, self.signed_message(project), "sealed local model")


def _info(project: str, job: str, sender: str, recipient: str) -> bytes:
    return _lp(_SEAL_DOMAIN, project.encode(), job.encode(), sender.encode(), recipient.encode())


def _aad(project: str, job: str, sender: str, recipient: str, plain_bytes: int) -> bytes:
    return _lp(
        _CHUNK_DOMAIN,
        project.encode(),
        job.encode(),
        sender.encode(),
        recipient.encode(),
        str(plain_bytes).encode(),
    )


def seal_stream(
    src: BinaryIO,
    dst: BinaryIO,
    plain_bytes: int,
    *,
    project: str,
    job: str,
    sender: str,
    sender_key: ec.EllipticCurvePrivateKey,
    recipient: str,
    recipient_cert: x509.Certificate,
) -> Envelope:
    """Seal ``plain_bytes`` read from ``src`` (safetensors of the model) to ``recipient``'s certificate
    key, writing the ciphertext to ``dst`` a chunk at a time; the signed header is returned."""
    key = AESGCM.generate_key(bit_length=_KEY_BYTES * 8)
    wrapped = SUITE.encrypt(
        key, _p384(recipient_cert, recipient), info=_info(project, job, sender, recipient)
    )
    aead, aad, digest = AESGCM(key), _aad(project, job, sender, recipient, plain_bytes), hashlib.sha256()
    left, index = plain_bytes, 0
    while True:
        piece = src.read(min(SEAL_CHUNK, left))
        if len(piece) != min(SEAL_CHUNK, left):
            raise EnvelopeError(f"the model ended {left - len(piece)} bytes short of {plain_bytes}")
        left -= len(piece)
        ct = aead.encrypt(_nonce(index, left == 0), piece, aad)
        digest.update(ct)
        dst.write(ct)
        index += 1
        if left == 0:
            break
    env = Envelope(job, sender, recipient, wrapped, plain_bytes, digest.hexdigest())
    sig = sender_key.sign(env.signed_message(project), ec.ECDSA(hashes.SHA384()))
    return dataclasses.replace(env, sig=sig)


def open_stream(
    env: Envelope,
    pieces: Iterable[bytes],
    dst: BinaryIO,
    *,
    project: str,
    job: str,
    me: str,
    my_key: ec.EllipticCurvePrivateKey,
    sender_cert: x509.Certificate,
) -> int:
    """Decrypt the ciphertext ``pieces`` of ``env`` into ``dst``, only if it is for this job and this
    site and signed by its sender; every chunk is authenticated before it is written, and a stream
    that is cut short, too long, reordered or not the signed one raises :class:`EnvelopeError`.
    (``dst`` may then hold a prefix of the model: the caller discards it.) Returns the bytes written."""
    if env.job != job or env.recipient != me:
        raise EnvelopeError(f"sealed local model is for {env.recipient} in {env.job}, not {me} in {job}")
    env.verify_sender(sender_cert, project)
    try:
        key = SUITE.decrypt(env.wrapped, my_key, info=_info(project, job, env.sender, me))
        if len(key) != _KEY_BYTES:
            raise ValueError("wrapped key of the wrong length")
    except (InvalidTag, ValueError, TypeError) as exc:
        raise EnvelopeError(
            f"sealed local model from {env.sender} does not open: {type(exc).__name__}"
        ) from None
    aead, aad, digest = AESGCM(key), _aad(project, job, env.sender, me, env.plain_bytes), hashlib.sha256()
    chunks = max(1, -(-env.plain_bytes // SEAL_CHUNK))
    written = 0
    for index, ct in enumerate(rechunk(pieces, SEAL_CHUNK + TAG)):
        if index >= chunks:
            raise EnvelopeError(f"sealed local model from {env.sender} runs past its {chunks} chunks")
        digest.update(ct)
        try:
            plain = aead.decrypt(_nonce(index, index == chunks - 1), ct, aad)
        except InvalidTag:
            raise EnvelopeError(
                f"chunk {index} of the sealed model from {env.sender} does not open"
            ) from None
        dst.write(plain)
        written += len(plain)
    if written != env.plain_bytes or not hmac.compare_digest(digest.hexdigest(), env.digest):
        raise EnvelopeError(f"sealed local model from {env.sender} is cut short or not the one signed")
    return written


def seal_model(model: bytes, **kw: Any) -> tuple[Envelope, bytes]:
    """:func:`seal_stream` of bytes in memory: ``(header, ciphertext)``."""
    out = io.BytesIO()
    env = seal_stream(io.BytesIO(model), out, len(model), **kw)
    return env, out.getvalue()


def open_model(env: Envelope, sealed: bytes, **kw: Any) -> bytes:
    """:func:`open_stream` into memory."""
    out = io.BytesIO()
    open_stream(env, [sealed], out, **kw)
    return out.getvalue()


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
    "SEAL_CHUNK",
    "open_model",
    "open_stream",
    "seal_model",
    "seal_stream",
    "sealed_size",
]

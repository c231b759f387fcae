"""HE key custody: the key-holder site makes the CKKS key and releases it to the other sites only.

Neither the provisioner nor the aggregator ever holds the secret key. The key holder:

1. makes a :class:`~secagg.he.context.SecretContext` (and persists it, :mod:`secagg.he.store`);
2. signs the public context with its certificate key (ECDSA P-384 / SHA-384) over a domain-separated
   message naming the project and itself; the public context carries the key commitment, so the
   signature also pins *which* secret key the sites must receive;
3. seals the secret context to each other site's certificate key with HPKE (RFC 9180, base mode,
   DHKEM(P-384) / HKDF-SHA384 / AES-256-GCM), binding project and recipient name into ``info``.

The aggregator relays the resulting :class:`KeyRelease` as opaque bytes. It verifies the signature
(:func:`verify_public_context`) to get its :class:`PublicContext`; a site opens its envelope
(:func:`open_envelope`) and accepts the key only if it matches the signed commitment, so a relay that
swaps in envelopes of its own (HPKE base mode does not authenticate the sender) is caught.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secagg.errors import IdentityError, IntegrityError
from secagg.he.context import PublicContext, SecretContext, load_public_context, load_secret_context
from secagg.provision.identity import load_cert, verify_cert

SUITE = hpke.Suite(hpke.KEM.P384, hpke.KDF.HKDF_SHA384, hpke.AEAD.AES_256_GCM)
_SIG_DOMAIN = b"secagg/he-public-context/v1"
_ENVELOPE_DOMAIN = b"secagg/he-key-envelope/v1"
_RELEASE_FORMAT = "secagg-he-key-release/v1"
_SITE_ROLE = "site"


def _lp(*parts: bytes) -> bytes:
    """Length-prefix each part, so no two different tuples encode to the same bytes."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _signed_message(public_context: bytes, project: str, holder: str) -> bytes:
    return _lp(_SIG_DOMAIN, project.encode(), holder.encode(), public_context)


def _envelope_info(project: str, recipient: str) -> bytes:
    return _lp(_ENVELOPE_DOMAIN, project.encode(), recipient.encode())


def _subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        return ""
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def _p384_public_key(cert: x509.Certificate, who: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise IdentityError(f"{who}: certificate key is not an ECDSA P-384 key")
    return key


@dataclass(frozen=True)
class KeyRelease:
    """What the key holder hands the aggregator to relay: public context, signature, one envelope per site."""

    project: str
    holder: str
    holder_cert_pem: bytes
    public_context: bytes
    public_context_sig: bytes
    envelopes: dict[str, bytes]

    def to_bytes(self) -> bytes:
        b64 = base64.b64encode
        doc = {
            "format": _RELEASE_FORMAT,
            "project": self.project,
            "holder": self.holder,
            "holder_cert": self.holder_cert_pem.decode("ascii"),
            "public_context": b64(self.public_context).decode(),
            "public_context_sig": b64(self.public_context_sig).decode(),
            "envelopes": {k: b64(v).decode() for k, v in sorted(self.envelopes.items())},
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyRelease:
        """Parse only; authenticity is :func:`verify_public_context` / :func:`open_envelope`'s job."""
        try:
            doc: Any = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != _RELEASE_FORMAT:
                raise ValueError("not a secagg HE key release")
            keys = {"format", "project", "holder", "holder_cert", "public_context", "public_context_sig"}
            if set(doc) != keys | {"envelopes"}:
                raise ValueError("unexpected or missing fields")
            if not all(isinstance(doc[k], str) for k in keys) or not isinstance(doc["envelopes"], dict):
                raise ValueError("fields of the wrong type")
            envelopes = {str(k): _b64(v) for k, v in doc["envelopes"].items()}
            return cls(
                project=doc["project"],
                holder=doc["holder"],
                holder_cert_pem=doc["holder_cert"].encode("ascii"),
                public_context=_b64(doc["public_context"]),
                public_context_sig=_b64(doc["public_context_sig"]),
                envelopes=envelopes,
            )
        except (ValueError, TypeError, UnicodeError) as exc:
            raise IntegrityError(f"HE key release does not parse: {exc}") from None

    @property
    def holder_cert(self) -> x509.Certificate:
        return load_cert(self.holder_cert_pem)

    def verify(self, ca_cert: x509.Certificate, expected_holder_name: str, project: str) -> PublicContext:
        """The aggregator's (and every site's) check: see :func:`verify_public_context`."""
        return verify_public_context(
            self.public_context,
            self.public_context_sig,
            self.holder_cert,
            ca_cert,
            expected_holder_name,
            project,
        )

    def open(
        self,
        my_private_key: ec.EllipticCurvePrivateKey,
        my_name: str,
        ca_cert: x509.Certificate,
        expected_holder_name: str,
        project: str,
    ) -> SecretContext:
        """A site's whole check: verify the signed public context, then open and match its envelope."""
        public = self.verify(ca_cert, expected_holder_name, project)
        if my_name not in self.envelopes:
            raise IntegrityError(f"HE key release has no envelope for {my_name}")
        return open_envelope(self.envelopes[my_name], my_private_key, my_name, project, public=public)


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


def make_key_envelopes(
    secret_ctx: SecretContext,
    holder_key: ec.EllipticCurvePrivateKey,
    holder_cert: x509.Certificate,
    recipients: dict[str, x509.Certificate],
    project: str,
) -> KeyRelease:
    """Sign the public context and seal the secret one to each recipient site (run at the key holder).

    Recipient certificates should already be verified against the project CA by the caller (the
    holder reads them from its kit or the aggregator's roster); here each must name that site, have
    role ``site`` and a P-384 key.
    """
    holder = _subject(holder_cert, NameOID.COMMON_NAME)
    if not holder:
        raise IdentityError("key holder certificate has no single CN")
    holder_pub = _p384_public_key(holder_cert, holder)
    if holder_key.public_key().public_numbers() != holder_pub.public_numbers():
        raise IdentityError(f"{holder}: private key does not belong to the key holder certificate")
    public = secret_ctx.serialize_public()
    sig = holder_key.sign(_signed_message(public, project, holder), ec.ECDSA(hashes.SHA384()))
    plaintext = secret_ctx.serialize_secret()
    envelopes: dict[str, bytes] = {}
    for name, cert in sorted(recipients.items()):
        cn = _subject(cert, NameOID.COMMON_NAME)
        role = _subject(cert, NameOID.ORGANIZATIONAL_UNIT_NAME)
        if cn != name or role != _SITE_ROLE:
            raise IdentityError(
                f"recipient {name!r}: certificate is for {cn!r} with role {role!r}, not a site"
            )
        key = _p384_public_key(cert, name)
        envelopes[name] = SUITE.encrypt(plaintext, key, info=_envelope_info(project, name))
    return KeyRelease(
        project=project,
        holder=holder,
        holder_cert_pem=holder_cert.public_bytes(serialization.Encoding.PEM),
        public_context=public,
        public_context_sig=sig,
        envelopes=envelopes,
    )


def verify_public_context(
    release_public: bytes,
    sig: bytes,
    holder_cert: x509.Certificate,
    ca_cert: x509.Certificate,
    expected_holder_name: str,
    project: str,
) -> PublicContext:
    """Verify the holder's certificate (project CA, expected name, role site), then its signature."""
    identity = verify_cert(holder_cert, ca_cert)
    if identity.name != expected_holder_name:
        raise IdentityError(
            f"HE public context is signed by {identity.name!r}, not the key holder {expected_holder_name!r}"
        )
    if identity.role != _SITE_ROLE:
        raise IdentityError(f"HE key holder {identity.name!r} has role {identity.role!r}, not {_SITE_ROLE!r}")
    key = _p384_public_key(holder_cert, identity.name)
    try:
        key.verify(sig, _signed_message(release_public, project, identity.name), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise IntegrityError(
            f"HE public context signature by {identity.name!r} does not verify for project {project!r}"
        ) from None
    return load_public_context(release_public)


def open_envelope(
    envelope: bytes,
    my_private_key: ec.EllipticCurvePrivateKey,
    my_name: str,
    project: str,
    *,
    public: PublicContext,
) -> SecretContext:
    """Open this site's envelope; accept the key only if it is the one the holder signed for.

    ``public`` is the result of :func:`verify_public_context`; it is required because HPKE base mode
    does not say who sealed the envelope, and only the signed key commitment does.
    """
    try:
        plaintext = SUITE.decrypt(envelope, my_private_key, info=_envelope_info(project, my_name))
    except (InvalidTag, ValueError, TypeError) as exc:
        raise IntegrityError(
            f"HE key envelope for {my_name} does not open (wrong recipient, project or tampered): "
            f"{type(exc).__name__}"
        ) from None
    secret = load_secret_context(plaintext)
    if not hmac.compare_digest(secret.key_commitment, public.key_commitment):
        raise IntegrityError("HE key in the envelope is not the one the key holder signed for")
    if secret.params != public.params:
        raise IntegrityError("HE key in the envelope has other parameters than the signed public context")
    return secret

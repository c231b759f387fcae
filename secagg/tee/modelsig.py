"""Signatures over each round's global model by the key bound into the aggregator's evidence.

Signed message (ECDSA P-384, SHA-384)::

    b"secagg-tee-model/1\\0" || JCS({"job": job, "round": round, "fingerprint": fingerprint})

``fingerprint`` is :func:`secagg.bundle.fingerprint` (hex SHA-256 of the canonical tensor bundle). The
job and round are signed so a model signed for one round cannot be presented as another's.
"""

from __future__ import annotations

import re

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.tee.errors import ModelSignatureInvalid

_DOMAIN = b"secagg-tee-model/1\0"
_FPR = re.compile(r"^[0-9a-f]{64}$")


def signed_bytes(fingerprint: str, job: str, round: int) -> bytes:
    if not _FPR.match(fingerprint):
        raise ValueError("fingerprint must be 64 lowercase hex characters (SHA-256)")
    return _DOMAIN + rfc8785.dumps({"job": job, "round": int(round), "fingerprint": fingerprint})


def sign(key: ec.EllipticCurvePrivateKey, fingerprint: str, job: str, round: int) -> bytes:
    return key.sign(signed_bytes(fingerprint, job, round), ec.ECDSA(hashes.SHA384()))


def load_key(spki_der: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(spki_der)
    except ValueError:
        raise ModelSignatureInvalid("model-signing key in the announcement is not a DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ModelSignatureInvalid("model-signing key must be ECDSA P-384")
    return key


def verify(spki_der: bytes, signature: bytes, fingerprint: str, job: str, round: int) -> None:
    """Raise :class:`ModelSignatureInvalid` unless ``signature`` is the bound key's over this model,
    job and round."""
    key = load_key(spki_der)
    try:
        key.verify(signature, signed_bytes(fingerprint, job, round), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise ModelSignatureInvalid(
            f"global model signature does not verify for job {job!r} round {round} "
            "(forged, or signed for another model, job or round)"
        ) from None

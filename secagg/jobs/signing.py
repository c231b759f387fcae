"""Sign and verify ``manifest.json`` with a provisioned admin key (ECDSA P-384, SHA-384).

The signature covers a fixed context string followed by the manifest bytes, so that an admin's
signature over a job can never be replayed as a signature over anything else that key signs. The
signer's certificate travels in ``manifest.sig``; the CA never does: each site checks the chain
against the CA in its own startup kit.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from pathlib import Path

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import IdentityError
from secagg.jobs.manifest import SIGNATURE
from secagg.jobs.signer import SUBMIT_ROLES, SignerInfo
from secagg.provision.identity import cert_pem, load_cert, verify_cert

CONTEXT = b"secagg job manifest v1\n"
ALGORITHM = "ecdsa-p384-sha384"


def signature_document(
    manifest_bytes: bytes, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> bytes:
    sig = key.sign(CONTEXT + manifest_bytes, ec.ECDSA(hashes.SHA384()))
    doc: dict[str, str | int] = {
        "version": 1,
        "algorithm": ALGORITHM,
        "signature": base64.b64encode(sig).decode(),
        "certificate": cert_pem(cert).decode(),
    }
    return rfc8785.dumps(doc)


def write_signature(
    root: Path, manifest_bytes: bytes, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> Path:
    out = root / SIGNATURE
    out.write_bytes(signature_document(manifest_bytes, key, cert))
    return out


def verify_signature(
    manifest_bytes: bytes, sig_doc: bytes, ca_cert: x509.Certificate, now: dt.datetime | None = None
) -> tuple[SignerInfo | None, list[str]]:
    """Check ``manifest.sig``; return the signer if *everything* holds, and every failure found.

    The signature itself is checked even when the certificate chain is bad, so a report names both a
    foreign signer and a modified manifest rather than stopping at the first.
    """
    failures: list[str] = []
    try:
        doc = json.loads(sig_doc)
        if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("algorithm") != ALGORITHM:
            raise ValueError(f"expected version 1 and algorithm {ALGORITHM}")
        signature = base64.b64decode(doc["signature"], validate=True)
        cert = load_cert(str(doc["certificate"]).encode())
    except (ValueError, KeyError, TypeError, binascii.Error, IdentityError) as exc:
        return None, [f"{SIGNATURE}: unreadable ({exc})"]

    identity = None
    try:
        identity = verify_cert(cert, ca_cert, now)
    except IdentityError as exc:
        failures.append(f"signer certificate: {exc}")
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            failures.append("signer certificate: is a CA certificate, not a participant's")
    except x509.ExtensionNotFound:
        failures.append("signer certificate: has no basic constraints extension")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        failures.append("signer certificate: key is not ECDSA P-384")
    else:
        try:
            key.verify(signature, CONTEXT + manifest_bytes, ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            failures.append(f"{SIGNATURE}: signature does not match manifest.json")
    if identity is not None and identity.role not in SUBMIT_ROLES:
        failures.append(
            f"signer {identity.name} has role {identity.role!r}, which may not submit jobs "
            f"(allowed: {', '.join(sorted(SUBMIT_ROLES))})"
        )
    if failures or identity is None:
        return None, failures
    return (
        SignerInfo(
            kind="provisioned",
            name=identity.name,
            org=identity.org,
            role=identity.role,
            fingerprint=identity.fingerprint,
        ),
        [],
    )

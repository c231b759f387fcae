"""Who a peer is, read from its certificate alone, after the certificate is verified against the CA.

*Verify* (is the certificate issued by this project's CA and valid now?) is kept apart from
*authorise* (is this name a site of the project, may this role do that?), which callers do with the
returned :class:`Identity`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secagg.errors import IdentityError


@dataclass(frozen=True)
class Identity:
    name: str
    org: str
    role: str
    cert: x509.Certificate

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise IdentityError(f"{self.name}: certificate key is not an EC key")
        return key

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        return ""
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def load_cert(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"not a certificate: {exc}") from None


def verify_cert(
    cert: x509.Certificate, ca_cert: x509.Certificate, now: dt.datetime | None = None
) -> Identity:
    """Check that ``cert`` was signed by the project CA and is valid at ``now``; return its identity."""
    ident = verify_issued(cert, ca_cert)
    check_valid_at(cert, now or dt.datetime.now(dt.UTC))
    return ident


def verify_issued(cert: x509.Certificate, ca_cert: x509.Certificate) -> Identity:
    """What of :func:`verify_cert` does not depend on the time: issuer, signature, name and role.

    Split out so that a caller may keep its result for the same certificate bytes (the aggregator
    does, :func:`secagg.transport.tls.peer_identity`) and still check the validity period each time."""
    if cert.issuer != ca_cert.subject:
        raise IdentityError(
            f"certificate of {cert.subject.rfc4514_string()} is not issued by this project's CA"
        )
    ca_key = ca_cert.public_key()
    if not isinstance(ca_key, ec.EllipticCurvePublicKey):
        raise IdentityError("project CA key is not an EC key")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise IdentityError(f"certificate signature does not verify against the project CA: {exc}") from None
    name = _attr(cert.subject, NameOID.COMMON_NAME)
    role = _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    org = _attr(cert.subject, NameOID.ORGANIZATION_NAME)
    if not name or not role:
        raise IdentityError("certificate has no single CN and OU (name and role)")
    return Identity(name=name, org=org, role=role, cert=cert)


def check_valid_at(cert: x509.Certificate, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise IdentityError(f"certificate of {cert.subject.rfc4514_string()} is not valid yet")
    if now > cert.not_valid_after_utc:
        raise IdentityError(
            f"certificate of {cert.subject.rfc4514_string()} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)

"""Dev-only software TEE: evidence of the same shape as real TEE evidence, signed by a local key.

For demos and tests on machines without TEE hardware. It proves nothing about isolation: whoever
holds the key can sign any measurement. So every verifier entry point takes an explicit
``allow_insecure_dev_tee`` and refuses without it, and the key can be pinned (``trusted_keys``).

Wire format: the RFC 8785 canonical JSON of
``{"format": "secagg-dev-tee/1", "evidence": {...}, "signature": hex}``, exactly (no trailing bytes).
The signature (ECDSA P-384 SHA-384, or Ed25519) covers ``b"secagg-dev-tee/1\\0" + JCS(evidence)``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from attestation.errors import (
    CertificateDataError,
    Check,
    InsecureDevTeeRefused,
    ParseError,
    VerificationError,
)

FORMAT = "secagg-dev-tee/1"
MAX_SIZE = 16 * 1024
_DOMAIN = FORMAT.encode() + b"\0"
_EVIDENCE_KEYS = {"measurement", "report_data", "debug", "tcb", "timestamp", "public_key"}

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class DevEvidence:
    raw: bytes
    measurement: bytes
    report_data: bytes
    debug: bool
    tcb: dict[str, int]
    timestamp: int
    public_key_der: bytes
    signature: bytes

    @property
    def signed_bytes(self) -> bytes:
        return _DOMAIN + rfc8785.dumps(self._evidence_obj())

    def _evidence_obj(self) -> dict[str, Any]:
        return {
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "tcb": self.tcb,
            "timestamp": self.timestamp,
            "public_key": base64.b64encode(self.public_key_der).decode(),
        }


@dataclass
class DevVerification:
    checks: list[Check] = field(default_factory=list)


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _sign(key: SigningKey, msg: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(msg)
    return key.sign(msg, ec.ECDSA(hashes.SHA384()))


def make_dev_evidence(
    signing_key: SigningKey,
    measurement: bytes,
    report_data: bytes,
    debug: bool = False,
    *,
    tcb: dict[str, int] | None = None,
    timestamp: int | None = None,
) -> bytes:
    """Dev-TEE evidence bytes. ``measurement`` is 32 or 48 bytes, ``report_data`` at most 64."""
    if len(measurement) not in (32, 48):
        raise ValueError("measurement must be 32 or 48 bytes")
    if len(report_data) > 64:
        raise ValueError("report_data must be at most 64 bytes")
    ev = DevEvidence(
        raw=b"",
        measurement=bytes(measurement),
        report_data=bytes(report_data).ljust(64, b"\0"),
        debug=bool(debug),
        tcb=dict(tcb or {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0}),
        timestamp=int(dt.datetime.now(dt.UTC).timestamp()) if timestamp is None else int(timestamp),
        public_key_der=_spki(signing_key.public_key()),
        signature=b"",
    )
    sig = _sign(signing_key, ev.signed_bytes)
    return bytes(rfc8785.dumps({"format": FORMAT, "evidence": ev._evidence_obj(), "signature": sig.hex()}))


def looks_like_dev_evidence(data: bytes) -> bool:
    """A JSON object naming the dev-TEE format, at any size (canonical JSON puts ``format`` after
    ``evidence``): an oversized one is then refused by :func:`parse_dev_evidence` as too large, not
    reported as unrecognised evidence."""
    return data[:1] == b"{" and b'"format":"' + FORMAT.encode() + b'"' in data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_dev_evidence(data: bytes) -> DevEvidence:
    d = bytes(data)
    if len(d) > MAX_SIZE:
        raise ParseError(f"dev-TEE evidence too large: {len(d)} bytes (max {MAX_SIZE})")
    try:
        obj = json.loads(d, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(f"dev-TEE evidence is not JSON (truncated?): {exc}") from None
    except RecursionError:  # the size cap still allows ~8000 levels, past the interpreter's stack
        raise ParseError("dev-TEE evidence is nested too deeply to be evidence") from None
    except ValueError as exc:  # NaN/Infinity, or an integer of more digits than Python converts
        raise ParseError(f"dev-TEE evidence holds a value JSON evidence cannot: {exc}") from None
    if (
        not isinstance(obj, dict)
        or set(obj) != {"format", "evidence", "signature"}
        or obj["format"] != FORMAT
    ):
        raise ParseError(f"dev-TEE evidence must hold exactly format={FORMAT!r}, evidence and signature")
    ev = obj["evidence"]
    if not isinstance(ev, dict) or set(ev) != _EVIDENCE_KEYS:
        raise ParseError(f"dev-TEE evidence fields must be exactly {sorted(_EVIDENCE_KEYS)}")
    try:
        canonical = rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, RecursionError) as exc:  # e.g. an integer past 2^53
        raise ParseError(f"dev-TEE evidence cannot be put in canonical form (RFC 8785): {exc}") from None
    if canonical != d:
        raise ParseError("dev-TEE evidence is not in canonical form (RFC 8785), or has trailing bytes")
    try:
        tcb = ev["tcb"]
        if not isinstance(tcb, dict) or not all(isinstance(v, int) and 0 <= v < 256 for v in tcb.values()):
            raise ValueError("tcb must map component names to 0..255")
        if not isinstance(ev["debug"], bool) or not isinstance(ev["timestamp"], int):
            raise ValueError("debug must be a boolean and timestamp an integer")
        out = DevEvidence(
            raw=d,
            measurement=bytes.fromhex(ev["measurement"]),
            report_data=bytes.fromhex(ev["report_data"]),
            debug=ev["debug"],
            tcb={str(k): int(v) for k, v in tcb.items()},
            timestamp=ev["timestamp"],
            public_key_der=base64.b64decode(ev["public_key"], validate=True),
            signature=bytes.fromhex(obj["signature"]),
        )
    except (ValueError, TypeError) as exc:
        raise ParseError(f"dev-TEE evidence field malformed: {exc}") from None
    if len(out.measurement) not in (32, 48) or len(out.report_data) != 64:
        raise ParseError("dev-TEE measurement must be 32 or 48 bytes and report_data 64 bytes")
    return out


def trusted_keys_from_pem(blobs: Sequence[bytes], *, what: str = "certificate file") -> list[bytes]:
    """SPKI DER of public keys given as PEM public keys or certificates (to pin the dev key).

    A blob that is neither raises :class:`CertificateDataError` naming ``what`` and its position (as
    ``snp_verify.load_certificates`` does), so bad ``--certs`` are not taken for bad evidence."""
    out: list[bytes] = []
    for i, blob in enumerate(blobs, 1):
        data = bytes(blob)
        where = f"{what} {i} of {len(blobs)}" if len(blobs) > 1 else what
        where += f" ({len(data)} bytes)"
        try:
            if b"BEGIN CERTIFICATE" in data:
                certs = x509.load_pem_x509_certificates(data)
                out.extend(_spki(c.public_key()) for c in certs)  # type: ignore[arg-type]
            else:
                out.append(_spki(serialization.load_pem_public_key(data)))  # type: ignore[arg-type]
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            reason = str(exc).split(". See https://")[0][:120]  # cryptography appends a FAQ link
            raise CertificateDataError(
                f"{where} is not a PEM public key or PEM certificate ({reason})"
            ) from None
    return out


def verify_dev_evidence(
    ev: DevEvidence, *, allow_insecure_dev_tee: bool, trusted_keys: Sequence[bytes] = ()
) -> DevVerification:
    """Check the signature (and the key against ``trusted_keys`` where given). Refuses unless allowed."""
    if not allow_insecure_dev_tee:
        raise InsecureDevTeeRefused(
            "dev-TEE evidence is a software simulation with no hardware isolation; refused unless "
            "allow_insecure_dev_tee is set (demos and tests only)"
        )
    checks = [Check("insecure_dev_tee", True, "explicitly allowed: NOT hardware-backed")]
    if trusted_keys:
        if ev.public_key_der not in trusted_keys:
            checks.append(Check("signing_key", False, "dev-TEE key is not among the trusted keys"))
            raise VerificationError("signing_key: dev-TEE key is not among the trusted keys", checks)
        checks.append(Check("signing_key", True, "dev-TEE key is pinned"))
    else:
        checks.append(Check("signing_key", True, "self-asserted key (no trusted keys given)"))
    try:
        key = serialization.load_der_public_key(ev.public_key_der)
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(ev.signature, ev.signed_bytes)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(ev.signature, ev.signed_bytes, ec.ECDSA(hashes.SHA384()))
        else:
            raise ValueError("unsupported key type")
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        checks.append(Check("signature", False, "dev-TEE signature does not verify"))
        raise VerificationError("signature: dev-TEE signature does not verify", checks) from None
    checks.append(Check("signature", True, "signed by the dev-TEE key"))
    return DevVerification(checks=checks)

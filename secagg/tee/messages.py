"""Wire messages of the TEE protocol; each parses its input once and refuses anything non-canonical.

JSON messages are RFC 8785 canonical JSON, so that a digest over ``to_bytes()`` is the same on every
machine: :meth:`KeyAnnouncement.digest` is what the evidence binds (see :mod:`secagg.tee.binding`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import rfc8785

from secagg.errors import IntegrityError
from secagg.tee import suites

ANNOUNCEMENT_FORMAT = "secagg-tee-keys/1"
EVIDENCE_FORMAT = "secagg-tee-evidence/1"
MAX_MESSAGE = 256 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise IntegrityError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{what} is not valid base64") from None


def _load(data: bytes, fmt: str, keys: set[str]) -> dict[str, Any]:
    d = bytes(data)
    if len(d) > MAX_MESSAGE:
        raise IntegrityError(f"{fmt} message too large: {len(d)} bytes (max {MAX_MESSAGE})")
    try:
        obj = json.loads(d)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{fmt} message is not JSON: {exc}") from None
    except (RecursionError, ValueError):  # nested past the stack; an integer of too many digits
        raise IntegrityError(f"{fmt} message is not JSON a message can hold") from None
    if not isinstance(obj, dict) or set(obj) != keys | {"format"} or obj["format"] != fmt:
        raise IntegrityError(f"{fmt} message must hold exactly format={fmt!r} and {sorted(keys)}")
    try:
        canonical = rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, RecursionError):  # NaN, an integer past 2^53
        raise IntegrityError(f"{fmt} message holds a value canonical JSON cannot (RFC 8785)") from None
    if canonical != d:
        raise IntegrityError(f"{fmt} message is not canonical JSON (RFC 8785)")
    return obj


@dataclass(frozen=True)
class KeyAnnouncement:
    """The aggregator's public key material: one HPKE public key per suite it offers, strongest first,
    and the SPKI (DER) of the ECDSA P-384 key that signs each round's global model."""

    hpke_keys: tuple[tuple[str, bytes], ...]
    model_key: bytes

    def __post_init__(self) -> None:
        names = [n for n, _ in self.hpke_keys]
        try:
            suites.check_names(names)
            for name, pub in self.hpke_keys:
                suites.load_public(name, pub)
        except ValueError as exc:
            raise IntegrityError(f"key announcement: {exc}") from None

    @property
    def suites(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.hpke_keys)

    def public_key(self, suite: str) -> bytes:
        return dict(self.hpke_keys)[suite]

    def to_bytes(self) -> bytes:
        return bytes(
            rfc8785.dumps(
                {
                    "format": ANNOUNCEMENT_FORMAT,
                    "hpke": [{"suite": n, "public_key": _b64(k)} for n, k in self.hpke_keys],
                    "model_key": _b64(self.model_key),
                }
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyAnnouncement:
        obj = _load(data, ANNOUNCEMENT_FORMAT, {"hpke", "model_key"})
        entries = obj["hpke"]
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and set(e) == {"suite", "public_key"} and isinstance(e["suite"], str)
            for e in entries
        ):
            raise IntegrityError("key announcement: hpke must be a list of {suite, public_key}")
        return cls(
            hpke_keys=tuple((e["suite"], _unb64(e["public_key"], "hpke public_key")) for e in entries),
            model_key=_unb64(obj["model_key"], "model_key"),
        )

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: what the evidence's report data binds."""
        return hashlib.sha256(self.to_bytes()).digest()


@dataclass(frozen=True)
class EvidenceMessage:
    """The aggregator's answer to a site's challenge.

    ``evidence`` is the raw TEE evidence; ``certs`` the certificates the verifier needs that the
    evidence does not carry (SEV-SNP VCEK; the chain is checked up to AMD's pinned roots, so they need
    not be trusted). ``nonce`` and ``tls_cert_sha256`` echo what the aggregator bound: they are never
    trusted, only used to name *which* binding failed (replay, channel or key) when one does.
    """

    evidence: bytes
    announcement: KeyAnnouncement
    nonce: bytes
    tls_cert_sha256: bytes
    certs: tuple[bytes, ...] = ()

    def to_bytes(self) -> bytes:
        return bytes(
            rfc8785.dumps(
                {
                    "format": EVIDENCE_FORMAT,
                    "evidence": _b64(self.evidence),
                    "announcement": _b64(self.announcement.to_bytes()),
                    "nonce": self.nonce.hex(),
                    "tls_cert_sha256": self.tls_cert_sha256.hex(),
                    "certs": [_b64(c) for c in self.certs],
                }
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> EvidenceMessage:
        obj = _load(data, EVIDENCE_FORMAT, {"evidence", "announcement", "nonce", "tls_cert_sha256", "certs"})
        if not isinstance(obj["certs"], list):
            raise IntegrityError("evidence message: certs must be a list")
        try:
            nonce, tls = bytes.fromhex(obj["nonce"]), bytes.fromhex(obj["tls_cert_sha256"])
        except (TypeError, ValueError):
            raise IntegrityError("evidence message: nonce and tls_cert_sha256 must be hex") from None
        return cls(
            evidence=_unb64(obj["evidence"], "evidence"),
            announcement=KeyAnnouncement.from_bytes(_unb64(obj["announcement"], "announcement")),
            nonce=nonce,
            tls_cert_sha256=tls,
            certs=tuple(_unb64(c, "cert") for c in obj["certs"]),
        )

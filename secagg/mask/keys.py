"""The protocol's cryptographic glue, as pure functions over library primitives.

Signatures: ECDSA P-384 / SHA-384 with the site's certificate key (``cryptography``).
Key agreement: X25519, then HKDF-SHA256 with an ``info`` that binds purpose, job, round and the pair,
so no derived key is ever reused across purposes, rounds or pairs.
Share encryption: AES-256-GCM; the AAD binds sender, recipient, job and round.
Secret sharing: pycryptodome's Shamir over GF(2^128), applied to each 16-byte half of a 32-byte secret.
"""

from __future__ import annotations

import os

from Crypto.Protocol.SecretSharing import Shamir
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import IdentityError, IntegrityError
from secagg.mask.messages import NONCE_BYTES, SHARE_BYTES, Share
from secagg.mask.wire import Reader, pack
from secagg.provision.identity import Identity, verify_cert

_DOMAIN = "secagg/mask/v1"


def advert_payload(job: str, round: int, site: str, mask_pk: bytes, share_pk: bytes) -> bytes:
    """What a site signs when it advertises its round keys."""
    return pack(f"{_DOMAIN}/advertise", job, round, site, mask_pk, share_pk)


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    return key.sign(payload, ec.ECDSA(hashes.SHA384()))


def verify_advert(
    cert_der: bytes, signature: bytes, payload: bytes, site: str, ca_cert: x509.Certificate
) -> Identity:
    """Check that ``cert_der`` is a project site certificate for ``site`` and that it signed ``payload``."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise IdentityError(f"{site}: advertised certificate does not parse: {exc}") from None
    ident = verify_cert(cert, ca_cert)
    if ident.name != site:
        raise IdentityError(f"keys advertised for {site!r} carry the certificate of {ident.name!r}")
    if ident.role != "site":
        raise IdentityError(f"keys advertised for {site!r} carry a certificate with role {ident.role!r}")
    try:
        ident.public_key.verify(signature, payload, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise IntegrityError(f"signature on the round keys of {site!r} does not verify") from None
    return ident


def _hkdf(shared: bytes, purpose: str, job: str, round: int, a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    info = pack(f"{_DOMAIN}/{purpose}", job, round, lo, hi)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise IntegrityError(f"unusable X25519 public key: {exc}") from None
    return shared


def pair_seed(shared: bytes, job: str, round: int, a: str, b: str) -> bytes:
    """The PRG seed of the pairwise mask between sites ``a`` and ``b``."""
    return _hkdf(shared, "pair-mask", job, round, a, b)


def share_key(shared: bytes, job: str, round: int, a: str, b: str) -> bytes:
    return _hkdf(shared, "share-key", job, round, a, b)


def share_aad(sender: str, recipient: str, job: str, round: int) -> bytes:
    return pack(f"{_DOMAIN}/share", sender, recipient, job, round)


def seal_share(
    key: bytes, sender: str, recipient: str, job: str, round: int, self_share: Share, key_share: Share
) -> tuple[bytes, bytes]:
    """Encrypt one recipient's shares; the plaintext repeats the routing so a relabelled share fails."""
    if self_share[0] != key_share[0]:
        raise ValueError("both shares of one holder must have the same index")
    plain = pack(sender, recipient, job, round, self_share[0], self_share[1], key_share[1])
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plain, share_aad(sender, recipient, job, round))


def open_share(
    key: bytes, sender: str, recipient: str, job: str, round: int, nonce: bytes, ciphertext: bytes
) -> tuple[Share, Share]:
    """Decrypt and check one share; raises :class:`IntegrityError` if anything was altered."""
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, share_aad(sender, recipient, job, round))
    except InvalidTag:
        raise IntegrityError(
            f"share from {sender!r} to {recipient!r} failed AES-GCM authentication"
        ) from None
    r = Reader(plain, "share plaintext")
    fields = (r.text(), r.text(), r.text(), r.u64())
    idx, self_value, key_value = r.u64(), r.blob(SHARE_BYTES), r.blob(SHARE_BYTES)
    r.end()
    if fields != (sender, recipient, job, round):
        raise IntegrityError(f"share from {sender!r} to {recipient!r} is bound to another sender/round")
    return (idx, self_value), (idx, key_value)


def split_secret(secret: bytes, threshold: int, holders: int) -> list[Share]:
    """Shamir-share a 32-byte secret; share i (1-based) is the pair of shares of the two halves."""
    if len(secret) != 32:
        raise ValueError("secret must be 32 bytes")
    lo = Shamir.split(threshold, holders, secret[:16])
    hi = Shamir.split(threshold, holders, secret[16:])
    return [(i, a + b) for (i, a), (_, b) in zip(lo, hi, strict=True)]


def combine_secret(shares: list[Share], threshold: int) -> bytes:
    """Reconstruct from exactly ``threshold`` shares (pycryptodome's combine wants exactly t)."""
    use = sorted(shares)[:threshold]
    if len(use) < threshold:
        raise ValueError(f"need {threshold} shares, have {len(use)}")
    lo = Shamir.combine([(i, v[:16]) for i, v in use])
    hi = Shamir.combine([(i, v[16:]) for i, v in use])
    return lo + hi

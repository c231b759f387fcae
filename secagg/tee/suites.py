"""HPKE suites (RFC 9180) the aggregator may announce, strongest first, and their key encodings.

The default is the post-quantum hybrid ML-KEM-768 + X25519: a site's update must stay confidential
for as long as the data matters, so "harvest now, decrypt later" is the threat; the X25519 half keeps
classical security should ML-KEM fall. DHKEM(P-384) is the fallback for policies that require
NIST-curve-only KEMs, or an aggregator that cannot do ML-KEM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MLKEM768_X25519 = "mlkem768-x25519"
P384 = "p384"

#: strongest first; sites pick the first one that is both announced and allowed by their policy
STRENGTH_ORDER: tuple[str, ...] = (MLKEM768_X25519, P384)
DEFAULT_SUITES: tuple[str, ...] = STRENGTH_ORDER

_MLKEM_PK = 1184
_X25519_PK = 32
_P384_PK = 97

PrivateKey = hpke.MLKEM768X25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = hpke.MLKEM768X25519PublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class SuiteInfo:
    name: str
    suite: hpke.Suite
    enc_length: int
    tag_length: int = 16


_SUITES = {
    MLKEM768_X25519: SuiteInfo(
        MLKEM768_X25519,
        hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
        hpke.KEM.MLKEM768_X25519.enc_length(),
    ),
    P384: SuiteInfo(
        P384,
        hpke.Suite(hpke.KEM.P384, hpke.KDF.HKDF_SHA384, hpke.AEAD.AES_256_GCM),
        hpke.KEM.P384.enc_length(),
    ),
}


def info(name: str) -> SuiteInfo:
    try:
        return _SUITES[name]
    except KeyError:
        raise ValueError(f"unknown HPKE suite {name!r} (known: {', '.join(STRENGTH_ORDER)})") from None


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """Known, distinct suite names, in the caller's order."""
    out = tuple(names)
    for n in out:
        info(n)
    if len(set(out)) != len(out) or not out:
        raise ValueError("suites must be a non-empty list of distinct names")
    return out


def strongest(announced: Sequence[str], allowed: Sequence[str]) -> str | None:
    """The strongest suite in both lists, or None."""
    for name in STRENGTH_ORDER:
        if name in announced and name in allowed:
            return name
    return None


def generate(name: str) -> tuple[PrivateKey, bytes]:
    """A fresh private key for ``name`` and its public key encoding (as announced)."""
    info(name)
    if name == MLKEM768_X25519:
        m, x = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        pub = m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
        return hpke.MLKEM768X25519PrivateKey(m, x), pub
    key = ec.generate_private_key(ec.SECP384R1())
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return key, pub


#: the seed every key of one enclave key set is derived from (:func:`derive`)
SEED_SIZE = 32
_DERIVE_DOMAIN = b"secagg-tee-job-keys/1\0"
#: the order of the P-384 group (FIPS 186-5, D.1.2.4)
_P384_N = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16
)


def _okm(seed: bytes, label: str, length: int) -> bytes:
    return HKDF(hashes.SHA384(), length, salt=None, info=_DERIVE_DOMAIN + label.encode()).derive(seed)


def derive_p384(seed: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A P-384 private key derived from ``seed`` for ``label``: 64 bytes of HKDF output reduced into
    [1, n-1] (FIPS 186-5 A.2.1, extra random bits: the bias is below 2^-128)."""
    d = int.from_bytes(_okm(seed, label, 64), "big") % (_P384_N - 1) + 1
    return ec.derive_private_key(d, ec.SECP384R1())


def derive(name: str, seed: bytes) -> tuple[PrivateKey, bytes]:
    """The private key for ``name`` derived from ``seed`` and its public key encoding (as announced).

    Why derive rather than draw: an enclave then has to keep (seal) only its 32-byte seed to get every
    key of a job back after a restart (:mod:`secagg.tee.keyseal`); ``cryptography`` can rebuild an
    ML-KEM key from its seed but cannot export the hybrid key it builds."""
    info(name)
    if len(seed) != SEED_SIZE:
        raise ValueError(f"the key seed must be {SEED_SIZE} bytes")
    if name == MLKEM768_X25519:
        m = mlkem.MLKEM768PrivateKey.from_seed_bytes(_okm(seed, f"hpke/{name}/mlkem768", 64))
        x = x25519.X25519PrivateKey.from_private_bytes(_okm(seed, f"hpke/{name}/x25519", 32))
        pub = m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
        return hpke.MLKEM768X25519PrivateKey(m, x), pub
    key = derive_p384(seed, f"hpke/{name}")
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return key, pub


def load_public(name: str, data: bytes) -> PublicKey:
    """Decode an announced public key: ML-KEM-768 (1184 bytes) || X25519 (32), or an uncompressed P-384
    point (97 bytes); raises ValueError for anything else."""
    info(name)
    if name == MLKEM768_X25519:
        if len(data) != _MLKEM_PK + _X25519_PK:
            raise ValueError(f"{name} public key must be {_MLKEM_PK + _X25519_PK} bytes, got {len(data)}")
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(data[:_MLKEM_PK]),
            x25519.X25519PublicKey.from_public_bytes(data[_MLKEM_PK:]),
        )
    if len(data) != _P384_PK:
        raise ValueError(f"{name} public key must be {_P384_PK} bytes, got {len(data)}")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), data)

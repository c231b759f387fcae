"""CKKS contexts: the sites' secret one and the aggregator's public one, and their byte formats.

The aggregator may only ever hold a :class:`PublicContext`: parameters, no secret key, no public key,
no relinearisation or Galois keys (it only adds; and with no public key it cannot even encrypt).
:func:`load_public_context` refuses bytes that carry a secret key, whatever their header claims, so no
code path can hand one to the aggregator by mistake.

Byte format (both kinds)::

    b"SAHE" | version (1 byte) | kind (b"P" public / b"S" secret) | header length (u32 BE)
    | header (JSON: params, key_commitment hex) | TenSEAL context bytes

``key_commitment`` is SHA-384 over the secret TenSEAL bytes (domain-separated). It is public (a hash
of a high-entropy key), travels in both kinds, and is covered by the key holder's signature over the
public context: a site that opens a key envelope checks the secret context against it, so whoever
relays the envelopes (the aggregator) cannot substitute a key of its own. Its first 16 bytes are the
context id stamped on every ciphertext.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import tenseal as ts

from secagg.errors import IntegrityError
from secagg.he.params import CkksParams

MAGIC = b"SAHE"
VERSION = 1
KIND_PUBLIC = b"P"
KIND_SECRET = b"S"
_PREFIX = struct.Struct(">4sBcI")
_MAX_HEADER = 4096
_COMMITMENT_DOMAIN = b"secagg/he-key-commitment/v1\x00"
CONTEXT_ID_BYTES = 16


def key_commitment(secret_blob: bytes) -> bytes:
    return hashlib.sha384(_COMMITMENT_DOMAIN + secret_blob).digest()


def _check_matches(ctx: ts.Context, params: CkksParams) -> None:
    """A header could lie about the parameters; check them against what TenSEAL actually loaded."""
    seal = ctx.seal_context().data
    key_data = seal.key_context_data()
    first = seal.first_context_data()
    n = key_data.parms().poly_modulus_degree()
    total = key_data.total_coeff_modulus_bit_count()
    data = first.total_coeff_modulus_bit_count()
    n_primes = len(params.coeff_mod_bit_sizes)
    ok = (
        seal.parameters_set()
        and n == params.poly_modulus_degree
        and params.total_bits - n_primes < total <= params.total_bits
        and params.data_bits - n_primes < data <= params.data_bits
        and ctx.global_scale == 2.0**params.scale_bits
    )
    if not ok:
        raise IntegrityError(
            f"HE context does not match its declared parameters ({params.describe()}): "
            f"N={n}, {total} modulus bits, {data} data bits, scale {ctx.global_scale}"
        )


def _pack(kind: bytes, params: CkksParams, commitment: bytes, blob: bytes) -> bytes:
    header = json.dumps(
        {"params": params.to_dict(), "key_commitment": commitment.hex()}, sort_keys=True
    ).encode()
    return _PREFIX.pack(MAGIC, VERSION, kind, len(header)) + header + blob


def _unpack(data: bytes) -> tuple[bytes, CkksParams, bytes, bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise IntegrityError("HE context must be bytes")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise IntegrityError("not a secagg HE context (too short)")
    magic, version, kind, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION or kind not in (KIND_PUBLIC, KIND_SECRET):
        raise IntegrityError("not a secagg HE context (bad magic, version or kind)")
    if hlen > _MAX_HEADER or _PREFIX.size + hlen > len(data):
        raise IntegrityError("secagg HE context header is truncated or oversized")
    try:
        header: Any = json.loads(data[_PREFIX.size : _PREFIX.size + hlen])
        if not isinstance(header, dict) or set(header) != {"params", "key_commitment"}:
            raise ValueError("unexpected header fields")
        commitment = bytes.fromhex(header["key_commitment"])
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"secagg HE context header is malformed: {exc}") from None
    if len(commitment) != hashlib.sha384().digest_size:
        raise IntegrityError("secagg HE context header has a malformed key commitment")
    params = CkksParams.from_dict(header["params"])
    return kind, params, commitment, data[_PREFIX.size + hlen :]


def _load_ts(blob: bytes) -> ts.Context:
    try:
        return ts.context_from(blob, n_threads=1)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on any bad input
        raise IntegrityError(f"HE context bytes do not parse: {type(exc).__name__}") from None


@dataclass(frozen=True, eq=False)
class PublicContext:
    """What the aggregator holds: enough to load and add ciphertexts, nothing to decrypt or encrypt."""

    params: CkksParams
    key_commitment: bytes
    ts_context: ts.Context = field(repr=False)

    @property
    def context_id(self) -> bytes:
        return self.key_commitment[:CONTEXT_ID_BYTES]


@dataclass(frozen=True, eq=False)
class SecretContext:
    """What sites hold: encrypts and decrypts. Never give one to the aggregator."""

    params: CkksParams
    key_commitment: bytes
    ts_context: ts.Context = field(repr=False)
    _secret_blob: bytes = field(repr=False)

    @property
    def context_id(self) -> bytes:
        return self.key_commitment[:CONTEXT_ID_BYTES]

    def serialize_public(self) -> bytes:
        blob = self.ts_context.serialize(
            save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        return _pack(KIND_PUBLIC, self.params, self.key_commitment, blob)

    def serialize_secret(self) -> bytes:
        return _pack(KIND_SECRET, self.params, self.key_commitment, self._secret_blob)

    def public(self) -> PublicContext:
        return load_public_context(self.serialize_public())


def make_secret_context(params: CkksParams) -> SecretContext:
    """Make a fresh key. Only the key-holder site calls this (see :mod:`secagg.he.custody`)."""
    params.check_secure()
    enc = ts.ENCRYPTION_TYPE.SYMMETRIC if params.symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=enc,
        n_threads=1,
    )
    ctx.global_scale = 2.0**params.scale_bits
    # relinearisation/Galois keys are never used (additions only): leave them out of every copy
    blob = ctx.serialize(
        save_public_key=not params.symmetric,
        save_secret_key=True,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    _check_matches(ctx, params)
    return SecretContext(params, key_commitment(blob), ctx, blob)


def load_secret_context(data: bytes) -> SecretContext:
    kind, params, commitment, blob = _unpack(data)
    if kind != KIND_SECRET:
        raise IntegrityError("HE context is a public context, not a secret one")
    if not hmac.compare_digest(key_commitment(blob), commitment):
        raise IntegrityError("HE secret context does not match its key commitment")
    ctx = _load_ts(blob)
    if not ctx.is_private():
        raise IntegrityError("HE secret context holds no secret key")
    _check_matches(ctx, params)
    return SecretContext(params, commitment, ctx, blob)


def load_public_context(data: bytes) -> PublicContext:
    """Load the aggregator's context; refuse anything that carries a secret key."""
    kind, params, commitment, blob = _unpack(data)
    if kind != KIND_PUBLIC:
        raise IntegrityError("refusing an HE secret context where a public one is required")
    ctx = _load_ts(blob)
    if ctx.is_private():
        raise IntegrityError("refusing an HE public context that contains a secret key")
    _check_matches(ctx, params)
    return PublicContext(params, commitment, ctx)

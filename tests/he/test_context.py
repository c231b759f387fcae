from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from secagg.errors import IntegrityError
from secagg.he.codec import decrypt_vector, encrypt_vector
from secagg.he.context import (
    KIND_PUBLIC,
    KIND_SECRET,
    PublicContext,
    SecretContext,
    _pack,
    _unpack,
    load_public_context,
    load_secret_context,
)
from secagg.he.params import SECAGG_DEFAULT, CkksParams


def test_public_context_holds_no_secret_key(secret_ctx: SecretContext) -> None:
    kind, params, commitment, blob = _unpack(secret_ctx.serialize_public())
    assert kind == KIND_PUBLIC and params == SECAGG_DEFAULT and commitment == secret_ctx.key_commitment
    raw = ts.context_from(blob)
    assert not raw.is_private() and not raw.has_secret_key()
    assert not raw.has_relin_keys() and not raw.has_galois_keys()
    # parameters only: orders of magnitude smaller than the secret context
    assert len(secret_ctx.serialize_public()) < 1024 < len(secret_ctx.serialize_secret())


def test_public_context_cannot_decrypt_or_encrypt(
    secret_ctx: SecretContext, public_ctx: PublicContext
) -> None:
    blob = ts.ckks_vector(secret_ctx.ts_context, [0.01, 0.02]).serialize()
    vec = ts.ckks_vector_from(public_ctx.ts_context, blob)
    with pytest.raises(ValueError, match="secret_key"):
        vec.decrypt()
    with pytest.raises(ValueError):
        ts.ckks_vector(public_ctx.ts_context, [0.01])


def test_load_public_context_refuses_secret_context(secret_ctx: SecretContext) -> None:
    with pytest.raises(IntegrityError, match="secret context where a public one"):
        load_public_context(secret_ctx.serialize_secret())
    # a header that lies about the kind does not help: the TenSEAL bytes are inspected too
    _, params, commitment, secret_blob = _unpack(secret_ctx.serialize_secret())
    disguised = _pack(KIND_PUBLIC, params, commitment, secret_blob)
    with pytest.raises(IntegrityError, match="contains a secret key"):
        load_public_context(disguised)


def test_secret_context_round_trip(secret_ctx: SecretContext) -> None:
    loaded = load_secret_context(secret_ctx.serialize_secret())
    assert loaded.key_commitment == secret_ctx.key_commitment and loaded.params == secret_ctx.params
    x = np.linspace(-0.05, 0.05, 100)
    frames = list(encrypt_vector(secret_ctx, x, 1.0))
    assert np.max(np.abs(decrypt_vector(loaded, frames, x.size) - x)) <= 1e-7
    assert "secret_blob" not in repr(loaded) and "ts_context" not in repr(loaded)


def test_secret_context_integrity(secret_ctx: SecretContext, other_secret_ctx: SecretContext) -> None:
    kind, params, commitment, blob = _unpack(secret_ctx.serialize_secret())
    assert kind == KIND_SECRET
    # another key under this key's commitment (a swapped key) is refused
    _, _, _, other_blob = _unpack(other_secret_ctx.serialize_secret())
    with pytest.raises(IntegrityError, match="commitment"):
        load_secret_context(_pack(KIND_SECRET, params, commitment, other_blob))
    with pytest.raises(IntegrityError, match="public context, not a secret"):
        load_secret_context(secret_ctx.serialize_public())


def test_header_cannot_lie_about_params(secret_ctx: SecretContext) -> None:
    _, _, commitment, blob = _unpack(secret_ctx.serialize_public())
    lying = CkksParams(4096, (40, 20), 35, True)  # secure, but not what the context holds (2**36)
    with pytest.raises(IntegrityError, match="does not match its declared parameters"):
        load_public_context(_pack(KIND_PUBLIC, lying, commitment, blob))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"SAHE\x01P\x00\x00\x00\x05{}xyz",
        b"SAHE\x01P\xff\xff\xff\xffxx",
        b"SAHE\x02P" + bytes(100),
    ],
)
def test_garbage_contexts_refused(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        load_public_context(data)
    with pytest.raises(IntegrityError):
        load_secret_context(data)


def test_garbage_tenseal_bytes_refused(secret_ctx: SecretContext) -> None:
    _, params, commitment, blob = _unpack(secret_ctx.serialize_public())
    with pytest.raises(IntegrityError, match="do not parse"):
        load_public_context(_pack(KIND_PUBLIC, params, commitment, blob[: len(blob) // 2]))

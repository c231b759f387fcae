"""Sealed chunks cannot be reordered, dropped, duplicated, truncated, spliced or replayed elsewhere."""

from __future__ import annotations

import os
import struct

import pytest

from secagg.errors import UpdateRejected
from secagg.tee import Enclave, EnclaveKeys, TrustedAggregator
from secagg.tee.sealing import HEADER_SIZE

UPDATE = os.urandom(18_000)
CHUNK = 6000


@pytest.fixture
def chunks(trusted: TrustedAggregator) -> list[bytes]:
    out = list(trusted.seal_update(UPDATE, "job-1", 2, "site-1", chunk_size=CHUNK))
    assert len(out) == 4
    return out


def rejected(
    enclave: Enclave,
    chunks: list[bytes],
    job: str = "job-1",
    rnd: int = 2,
    site: str = "site-1",
    **kw: object,
) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as info:
        enclave.open_update(chunks, job, rnd, site, **kw)  # type: ignore[arg-type]
    return info.value


def test_intact_stream_opens(enclave: Enclave, chunks: list[bytes]) -> None:
    assert enclave.open_update(chunks, "job-1", 2, "site-1") == UPDATE


def test_reordered(enclave: Enclave, chunks: list[bytes]) -> None:
    err = rejected(enclave, [chunks[1], chunks[0], *chunks[2:]])
    assert err.code == "tee_chunk_order" and "expected chunk 0" in str(err)


def test_dropped(enclave: Enclave, chunks: list[bytes]) -> None:
    err = rejected(enclave, [chunks[0], *chunks[2:]])
    assert err.code == "tee_chunk_order" and "got chunk 2" in str(err)


def test_duplicated(enclave: Enclave, chunks: list[bytes]) -> None:
    assert rejected(enclave, [chunks[0], chunks[0], *chunks[1:]]).code == "tee_chunk_order"


def test_truncated_stream(enclave: Enclave, chunks: list[bytes]) -> None:
    err = rejected(enclave, chunks[:-1])
    assert err.code == "tee_chunk_truncated" and "3 of 4" in str(err)
    assert rejected(enclave, []).code == "tee_chunk_truncated"


def test_truncated_or_tampered_chunk(enclave: Enclave, chunks: list[bytes]) -> None:
    assert rejected(enclave, [*chunks[:-1], chunks[-1][:-1]]).code == "tee_chunk_auth"
    flipped = bytearray(chunks[1])
    flipped[len(flipped) // 2] ^= 1
    assert rejected(enclave, [chunks[0], bytes(flipped), *chunks[2:]]).code == "tee_chunk_auth"
    assert rejected(enclave, [*chunks[:-1], chunks[-1][:10]]).code == "tee_chunk_malformed"


def test_header_rewritten_to_hide_truncation(enclave: Enclave, chunks: list[bytes]) -> None:
    """Claiming total=3 on the first three chunks does not make a shorter update acceptable."""

    def retotal(c: bytes) -> bytes:
        return c[: HEADER_SIZE - 4] + struct.pack(">I", 3) + c[HEADER_SIZE:]

    err = rejected(enclave, [retotal(c) for c in chunks[:3]])
    assert err.code == "tee_chunk_auth"


def test_replay_into_another_site_round_or_job(enclave: Enclave, chunks: list[bytes]) -> None:
    for kw in ({"site": "site-2"}, {"rnd": 3}, {"job": "job-2"}):
        err = rejected(enclave, chunks, **kw)  # type: ignore[arg-type]
        assert err.code == "tee_chunk_auth" and "does not open" in str(err)


def test_splicing_two_uploads(trusted: TrustedAggregator, enclave: Enclave, chunks: list[bytes]) -> None:
    again = list(trusted.seal_update(UPDATE, "job-1", 2, "site-1", chunk_size=CHUNK))
    err = rejected(enclave, [*chunks[:2], *again[2:]])
    assert err.code == "tee_chunk_mixed"


def test_sealed_to_other_keys(make_enclave, chunks: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    other = make_enclave(enclave_keys=EnclaveKeys.generate())
    assert rejected(other, chunks).code == "tee_chunk_auth"


def test_size_limit(enclave: Enclave, chunks: list[bytes]) -> None:
    assert rejected(enclave, chunks, max_bytes=len(UPDATE) - 1).code == "tee_chunk_size"
    assert enclave.open_update(chunks, "job-1", 2, "site-1", max_bytes=len(UPDATE)) == UPDATE


def test_suite_not_offered(make_enclave, trusted: TrustedAggregator, chunks: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    p384_only = make_enclave(enclave_keys=EnclaveKeys.generate(["p384"]))
    assert rejected(p384_only, chunks).code == "tee_chunk_mixed"


def test_bytes_like_payloads_seal_the_same_bytes(trusted: TrustedAggregator, enclave: Enclave) -> None:
    """bytearray and memoryview payloads (of any item size) are sealed as their raw bytes; a mutable
    payload changed after sealing starts does not change what was sealed."""
    import numpy as np

    words = np.frombuffer(UPDATE, dtype="<u4")
    for payload in (bytearray(UPDATE), memoryview(UPDATE), memoryview(words)):
        sealed = list(trusted.seal_update(payload, "job-1", 2, "site-1", chunk_size=CHUNK))
        assert len(sealed) == 4
        assert enclave.open_update(sealed, "job-1", 2, "site-1") == UPDATE
    mutable = bytearray(UPDATE)
    stream = trusted.seal_update(mutable, "job-1", 2, "site-1", chunk_size=CHUNK)
    first = next(stream)
    mutable[:] = bytes(len(mutable))
    assert enclave.open_update([first, *stream], "job-1", 2, "site-1") == UPDATE

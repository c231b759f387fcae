"""Chunked HPKE sealing of a site's update: pure functions, no I/O.

Updates can exceed 2 GiB, and the transport carries pieces of at most 4 MiB, so an update is sealed
as independent HPKE single-shot messages (RFC 9180 base mode), one per chunk, each at most
``chunk_size`` bytes on the wire. (cryptography 50 exposes only single-shot ``Suite.encrypt`` /
``decrypt``, no context export; one KEM encapsulation per 4 MiB costs ~1 KiB and well under a
millisecond.)

Wire format of one sealed chunk (big-endian)::

    b"SGTC" | version u8 | suite u8 | upload_id 16 bytes | index u32 | total u32 | HPKE enc || ciphertext

The header travels in the clear for routing, but every field of it is bound into the HPKE ``info``
together with the job, the round, the site and the digest of the key announcement the site verified::

    info = b"secagg-tee-chunk/1\\0" || SHA-256(JCS({job, round, site, suite, upload, index, total, keys}))

(hashed to stay far below OpenSSL's limit on ``info`` length whatever the job and site names). So a
chunk opens only at its own position of its own upload, for the site, job and round it was sealed for:
reordered, dropped, duplicated, truncated, spliced or replayed chunks are refused.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import rfc8785
from cryptography.exceptions import InvalidTag

from secagg.errors import UpdateRejected
from secagg.framing import rechunk
from secagg.reasons import Reason
from secagg.tee import suites

MAX_CHUNK = 4 * 1024 * 1024
UPDATE = "update"
MAGIC = b"SGTC"
VERSION = 1
_HEADER = struct.Struct(">4sBB16sII")
HEADER_SIZE = _HEADER.size
_INFO_DOMAIN = b"secagg-tee-chunk/1\0"
_SUITE_CODES = {suites.MLKEM768_X25519: 1, suites.P384: 2}
_SUITE_NAMES = {v: k for k, v in _SUITE_CODES.items()}


@dataclass(frozen=True)
class ChunkHeader:
    suite: str
    upload_id: bytes
    index: int
    total: int

    def to_bytes(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, _SUITE_CODES[self.suite], self.upload_id, self.index, self.total)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkHeader:
        if len(data) < HEADER_SIZE:
            raise UpdateRejected(
                f"sealed chunk too short: {len(data)} bytes", code=Reason.TEE_CHUNK_MALFORMED
            )
        magic, version, code, upload, index, total = _HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION or code not in _SUITE_NAMES:
            raise UpdateRejected(
                "not a sealed chunk of a known version and suite", code=Reason.TEE_CHUNK_MALFORMED
            )
        if total < 1 or index >= total:
            raise UpdateRejected(f"chunk index {index} outside 0..{total - 1}", code=Reason.TEE_CHUNK_ORDER)
        return cls(_SUITE_NAMES[code], bytes(upload), index, total)


@dataclass(frozen=True)
class Context:
    """Who and what a sealed update is for: everything a chunk binds besides its own header."""

    job: str
    round: int
    site: str
    keys_sha256: bytes
    #: what the sealed bytes are: a site's update (the default, bound as before so that ``tee`` uploads
    #: keep their wire format), or a protocol message of ``tee-mask`` such as ``"mask-keys/attempt-0"``,
    #: so that a message sealed for one phase cannot be replayed into another
    purpose: str = UPDATE


def chunk_info(ctx: Context, header: ChunkHeader) -> bytes:
    ctx_obj: dict[str, str | int] = {
        "job": ctx.job,
        "round": ctx.round,
        "site": ctx.site,
        "suite": header.suite,
        "upload": header.upload_id.hex(),
        "index": header.index,
        "total": header.total,
        "keys": ctx.keys_sha256.hex(),
    }
    if ctx.purpose != UPDATE:
        ctx_obj["purpose"] = ctx.purpose
    return _INFO_DOMAIN + hashlib.sha256(rfc8785.dumps(ctx_obj)).digest()


def plaintext_per_chunk(suite: str, chunk_size: int = MAX_CHUNK) -> int:
    info = suites.info(suite)
    room = chunk_size - HEADER_SIZE - info.enc_length - info.tag_length
    if room < 1:
        raise ValueError(f"chunk_size {chunk_size} leaves no room for data with suite {suite}")
    return room


def seal_chunks(
    payload: bytes | Iterable[bytes],
    public_key: suites.PublicKey,
    suite: str,
    ctx: Context,
    *,
    size: int | None = None,
    chunk_size: int = MAX_CHUNK,
) -> Iterator[bytes]:
    """Sealed chunks of ``payload``, each at most ``chunk_size`` bytes.

    Every chunk binds the total chunk count, so it must be known before the first chunk: ``size`` (the
    payload's byte length) is taken from ``bytes``; for an iterable, pass it to stream without
    buffering, otherwise the pieces are held in memory first. An empty payload is one empty chunk.
    """
    per = plaintext_per_chunk(suite, chunk_size)
    pieces: Iterator[bytes | memoryview]
    if isinstance(payload, bytes | bytearray | memoryview):
        # pieces are views into the payload (sealing copies each into its ciphertext anyway); a
        # mutable payload is copied first so that the pieces cannot change while they are sealed
        data = memoryview(payload if isinstance(payload, bytes) else bytes(payload)).cast("B")
        if size is not None and size != data.nbytes:
            raise ValueError(f"size {size} differs from the payload's {data.nbytes} bytes")
        size, pieces = data.nbytes, (data[i : i + per] for i in range(0, data.nbytes, per))
    elif size is None:
        held = list(rechunk(payload, per))
        size, pieces = sum(len(p) for p in held), iter(held)
    else:
        pieces = rechunk(payload, per)
    if size < 0:
        raise ValueError("size must be >= 0")
    total = max(1, -(-size // per))
    if total >= 2**32:
        raise ValueError("payload too large for the chunk counter")
    hpke_suite = suites.info(suite).suite
    upload_id = os.urandom(16)
    sent = 0
    for index, piece in enumerate(pieces if size else iter([b""])):
        sent += len(piece)
        if index >= total or sent > size:
            raise ValueError(f"payload is longer than the declared size {size}")
        header = ChunkHeader(suite, upload_id, index, total)
        yield header.to_bytes() + hpke_suite.encrypt(piece, public_key, info=chunk_info(ctx, header))
    if sent != size:
        raise ValueError(f"payload is shorter ({sent} bytes) than the declared size {size}")


def open_chunks(
    chunks: Iterable[bytes],
    private_keys: Mapping[str, suites.PrivateKey],
    ctx: Context,
    *,
    max_bytes: int | None = None,
) -> bytes:
    """The plaintext of one sealed update, or :class:`UpdateRejected` naming what is wrong.

    Refuses (codes): ``tee_chunk_malformed``, ``tee_chunk_mixed`` (chunks of different uploads or
    suites), ``tee_chunk_order`` (reordered, dropped, duplicated or extra), ``tee_chunk_truncated``
    (stream ends early), ``tee_chunk_auth`` (does not open for this job/round/site/key: tampered or
    replayed from elsewhere), ``tee_chunk_size`` (over ``max_bytes``). Nothing is returned on failure.
    """
    out: list[bytes] = []
    opened = 0
    first: ChunkHeader | None = None
    expected = 0
    for raw in chunks:
        header = ChunkHeader.from_bytes(raw)
        if first is None:
            first = header
            if header.suite not in private_keys:
                raise UpdateRejected(
                    f"sealed to suite {header.suite}, which this aggregator did not offer",
                    code=Reason.TEE_CHUNK_MIXED,
                )
        elif (header.upload_id, header.suite, header.total) != (first.upload_id, first.suite, first.total):
            raise UpdateRejected(f"chunk {expected} belongs to another upload", code=Reason.TEE_CHUNK_MIXED)
        if header.index != expected:
            raise UpdateRejected(
                f"expected chunk {expected} of {first.total}, got chunk {header.index} "
                "(dropped, duplicated or reordered)",
                code=Reason.TEE_CHUNK_ORDER,
            )
        info = suites.info(header.suite)
        body = memoryview(raw)[HEADER_SIZE:]
        if max_bytes is not None and opened + len(body) - info.enc_length - info.tag_length > max_bytes:
            raise UpdateRejected(f"sealed update exceeds {max_bytes} bytes", code=Reason.TEE_CHUNK_SIZE)
        out.append(_decrypt(raw, header, private_keys, ctx))
        opened += len(out[-1])
        expected += 1
    if first is None:
        raise UpdateRejected("sealed update has no chunks", code=Reason.TEE_CHUNK_TRUNCATED)
    if expected != first.total:
        raise UpdateRejected(
            f"sealed update truncated: {expected} of {first.total} chunks", code=Reason.TEE_CHUNK_TRUNCATED
        )
    return b"".join(out)


def _decrypt(
    raw: bytes, header: ChunkHeader, private_keys: Mapping[str, suites.PrivateKey], ctx: Context
) -> bytes:
    info = suites.info(header.suite)
    try:
        return info.suite.decrypt(
            memoryview(raw)[HEADER_SIZE:], private_keys[header.suite], info=chunk_info(ctx, header)
        )
    except (InvalidTag, ValueError):
        raise UpdateRejected(
            f"chunk {header.index} does not open for job {ctx.job!r} round {ctx.round} site "
            f"{ctx.site!r} (tampered, or replayed from another site, round or key)",
            code=Reason.TEE_CHUNK_AUTH,
        ) from None


def open_chunk(
    raw: bytes, private_keys: Mapping[str, suites.PrivateKey], ctx: Context, expect: ChunkHeader
) -> bytes:
    """The plaintext of one sealed chunk, opened only as chunk ``expect.index`` of the upload
    ``expect`` names (its id, suite and chunk count, read from the stream's first chunk): so an upload
    can be opened a chunk at a time, in any order, with the checks of :func:`open_chunks` (the caller
    checks once that the stream holds chunks ``0 .. total - 1``, :class:`secagg.tee.stream.SealedSource`)."""
    header = ChunkHeader.from_bytes(raw)
    if header.suite not in private_keys:
        raise UpdateRejected(
            f"sealed to suite {header.suite}, which this aggregator did not offer",
            code=Reason.TEE_CHUNK_MIXED,
        )
    if (header.upload_id, header.suite, header.total) != (expect.upload_id, expect.suite, expect.total):
        raise UpdateRejected(f"chunk {expect.index} belongs to another upload", code=Reason.TEE_CHUNK_MIXED)
    if header.index != expect.index:
        raise UpdateRejected(
            f"expected chunk {expect.index} of {expect.total}, got chunk {header.index}",
            code=Reason.TEE_CHUNK_ORDER,
        )
    return _decrypt(raw, header, private_keys, ctx)

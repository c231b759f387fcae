"""Chunked streaming of payloads: header, data pieces of at most 4 MiB, SHA-256 trailer.

The trailer lets the receiver tell a complete payload from one cut off mid-way: a stream that ends
without it, or whose digest or length differs from the header's, is refused and nothing of it is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from secagg.errors import UpdateRejected
from secagg.reasons import Reason
from secagg.transport.generated import secagg_pb2 as pb

MAX_CHUNK = 4 * 1024 * 1024
#: a stream header is a JSON object of task fields, never larger than a data piece
MAX_HEADER = MAX_CHUNK


def _pieces(payload: Iterable[bytes]) -> Iterator[bytes]:
    """Cut pieces longer than MAX_CHUNK; each piece goes out as soon as it is produced (log follow)."""
    for piece in payload:
        if isinstance(piece, bytes) and len(piece) <= MAX_CHUNK:
            yield piece  # already a chunk (e.g. from coalesce): no copy
            continue
        view = memoryview(piece)
        for start in range(0, len(view), MAX_CHUNK):
            yield bytes(view[start : start + MAX_CHUNK])


def coalesce(payload: Iterable[bytes]) -> Iterator[bytes]:
    """Join many small pieces (one HE frame each) into MAX_CHUNK pieces (the last may be shorter), so an
    upload is a few large messages rather than thousands of tiny ones. Holds pieces back until a chunk
    is full: only for payloads that are complete, never for a live stream."""
    buf = bytearray()
    for piece in payload:
        view = memoryview(piece)
        while len(view):
            if not buf and len(view) >= MAX_CHUNK:
                yield bytes(view[:MAX_CHUNK])
                view = view[MAX_CHUNK:]
                continue
            take = MAX_CHUNK - len(buf)
            buf += view[:take]
            view = view[take:]
            if len(buf) == MAX_CHUNK:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


def encode_stream(header: dict[str, Any], payload: Iterable[bytes]) -> Iterator[pb.Chunk]:
    yield pb.Chunk(header_json=json.dumps(header, separators=(",", ":")))
    digest = hashlib.sha256()
    for piece in _pieces(payload):
        digest.update(piece)
        yield pb.Chunk(data=piece)
    yield pb.Chunk(trailer_sha256=digest.hexdigest())


def read_header(chunks: Iterator[pb.Chunk]) -> dict[str, Any]:
    try:
        first = next(chunks)
    except StopIteration:
        raise UpdateRejected("empty stream", code=Reason.TRUNCATED) from None
    if first.WhichOneof("part") != "header_json":
        raise UpdateRejected("stream does not start with a header", code=Reason.MALFORMED)
    if len(first.header_json) > MAX_HEADER:
        raise UpdateRejected(f"stream header over {MAX_HEADER} bytes", code=Reason.MALFORMED)
    try:
        header = json.loads(first.header_json)
    except (ValueError, RecursionError):  # RecursionError: nested past the interpreter's stack
        raise UpdateRejected("stream header is not JSON", code=Reason.MALFORMED) from None
    if not isinstance(header, dict):
        raise UpdateRejected("stream header is not an object", code=Reason.MALFORMED)
    return header


def copy_payload(
    chunks: Iterator[pb.Chunk], sink: BinaryIO, *, max_bytes: int, expected_bytes: int | None = None
) -> int:
    """Write the payload to ``sink`` and check the trailer; return the byte count."""
    digest = hashlib.sha256()
    total = 0
    for chunk in chunks:
        part = chunk.WhichOneof("part")
        if part == "data":
            if len(chunk.data) > MAX_CHUNK:
                raise UpdateRejected("chunk larger than 4 MiB", code=Reason.MALFORMED)
            total += len(chunk.data)
            if total > max_bytes:
                raise UpdateRejected(f"payload exceeds the limit of {max_bytes} bytes", code=Reason.OVERSIZE)
            digest.update(chunk.data)
            sink.write(chunk.data)
        elif part == "trailer_sha256":
            # as bytes: compare_digest refuses str with non-ASCII characters (TypeError)
            if not hmac.compare_digest(chunk.trailer_sha256.encode(), digest.hexdigest().encode()):
                raise UpdateRejected("payload digest does not match its trailer", code=Reason.CORRUPT)
            if expected_bytes is not None and total != expected_bytes:
                raise UpdateRejected(
                    f"payload has {total} bytes, header announced {expected_bytes}", code=Reason.TRUNCATED
                )
            return total
        else:
            raise UpdateRejected("second header inside a stream", code=Reason.MALFORMED)
    raise UpdateRejected("stream cut off before its trailer", code=Reason.TRUNCATED)


def read_all(chunks: Iterator[pb.Chunk], *, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    import io

    header = read_header(chunks)
    buf = io.BytesIO()
    copy_payload(chunks, buf, max_bytes=max_bytes)
    return header, buf.getvalue()

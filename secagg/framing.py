"""Length-prefixed framing for a stream of opaque records (one serialised ciphertext each).

Records travel back to back inside the chunked payload; chunk boundaries are independent of record
boundaries, so the framing, not the transport, says where a ciphertext ends.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from secagg.errors import UpdateRejected
from secagg.reasons import Reason

_LEN = struct.Struct(">I")
MAX_RECORD = 64 * 1024 * 1024


def frame(records: Iterable[bytes]) -> Iterator[bytes]:
    for rec in records:
        yield _LEN.pack(len(rec)) + rec


def unframe(fh: BinaryIO) -> Iterator[bytes]:
    while True:
        head = fh.read(4)
        if not head:
            return
        if len(head) != 4:
            raise UpdateRejected("record stream cut inside a length prefix", code=Reason.TRUNCATED)
        (n,) = _LEN.unpack(head)
        if n == 0 or n > MAX_RECORD:
            raise UpdateRejected(f"record length {n} out of range", code=Reason.MALFORMED)
        rec = fh.read(n)
        if len(rec) != n:
            raise UpdateRejected("record stream cut inside a record", code=Reason.TRUNCATED)
        yield rec


def count_records(fh: BinaryIO) -> int:
    """Walk the framing without keeping records (a structural check of a spooled upload)."""
    count = 0
    while True:
        head = fh.read(4)
        if not head:
            return count
        if len(head) != 4:
            raise UpdateRejected("record stream cut inside a length prefix", code=Reason.TRUNCATED)
        (n,) = _LEN.unpack(head)
        if n == 0 or n > MAX_RECORD:
            raise UpdateRejected(f"record length {n} out of range", code=Reason.MALFORMED)
        pos = fh.tell()
        fh.seek(0, 2)
        end = fh.tell()
        if pos + n > end:
            raise UpdateRejected("record stream cut inside a record", code=Reason.TRUNCATED)
        fh.seek(pos + n)
        count += 1


def rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The bytes of ``pieces`` in chunks of ``size`` (the last one shorter), however they were cut."""
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)

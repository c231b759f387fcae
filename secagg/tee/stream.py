"""A spooled sealed upload opened a chunk at a time: random access to its plaintext, never all of it.

The spool holds an upload as the transport framed it: length-prefixed sealed chunks (:mod:`sealing`).
:class:`SealedSource` walks the framing once, reading only each chunk's clear header, and checks
there what :func:`sealing.open_chunks` checks of a whole stream: one upload, one suite, one chunk
count, chunks ``0 .. total - 1`` in order, none missing or extra. After that, a read of plaintext bytes
``[offset, offset + n)`` opens just the chunks that hold them (each at its own place, so a chunk moved
or swapped does not open), keeping the last few opened chunks, so a windowed combine opens each chunk
about once while memory stays a few chunks per upload.

The opener is the enclave's (:meth:`secagg.tee.enclave.Enclave.open_update_chunk`): the keys never
leave it, and plaintext exists only in the memory of the process that runs inside the TEE.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from secagg.errors import UpdateRejected
from secagg.framing import MAX_RECORD
from secagg.reasons import Reason
from secagg.tee import suites
from secagg.tee.sealing import HEADER_SIZE, ChunkHeader

#: ``open(raw_chunk, expected_header) -> plaintext``
Opener = Callable[[bytes, ChunkHeader], bytes]
_LEN = struct.Struct(">I")
#: opened chunks kept per upload (a window that straddles a chunk edge needs two)
KEEP_CHUNKS = 2


def _pread(fd: int, n: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = os.pread(fd, n - len(out), offset + len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


class SealedSource:
    """The plaintext of one spooled sealed upload, readable at offsets (see the module docstring)."""

    def __init__(self, path: Path, opener: Opener, *, max_bytes: int | None = None) -> None:
        self.path = path
        self._open = opener
        self._fd = os.open(path, os.O_RDONLY)
        try:
            self._index(max_bytes)
        except BaseException:
            self.close()
            raise
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def _index(self, max_bytes: int | None) -> None:
        end = os.fstat(self._fd).st_size
        #: per chunk: (offset of the record in the file, record length, first plaintext byte)
        self._records: list[tuple[int, int]] = []
        self._starts: list[int] = []
        self._headers: list[ChunkHeader] = []
        pos, plain = 0, 0
        first: ChunkHeader | None = None
        while pos < end:
            head = _pread(self._fd, 4, pos)
            if len(head) != 4:
                raise UpdateRejected("record stream cut inside a length prefix", code=Reason.TRUNCATED)
            (n,) = _LEN.unpack(head)
            if n == 0 or n > MAX_RECORD:
                raise UpdateRejected(f"record length {n} out of range", code=Reason.MALFORMED)
            if pos + 4 + n > end:
                raise UpdateRejected("record stream cut inside a record", code=Reason.TRUNCATED)
            header = ChunkHeader.from_bytes(_pread(self._fd, min(n, HEADER_SIZE), pos + 4))
            expected = len(self._records)
            if first is None:
                first = header
            elif (header.upload_id, header.suite, header.total) != (
                first.upload_id,
                first.suite,
                first.total,
            ):
                raise UpdateRejected(
                    f"chunk {expected} belongs to another upload", code=Reason.TEE_CHUNK_MIXED
                )
            if header.index != expected:
                raise UpdateRejected(
                    f"expected chunk {expected} of {first.total}, got chunk {header.index} "
                    "(dropped, duplicated or reordered)",
                    code=Reason.TEE_CHUNK_ORDER,
                )
            info = suites.info(header.suite)
            length = n - HEADER_SIZE - info.enc_length - info.tag_length
            if length < 0:
                raise UpdateRejected(f"sealed chunk {expected} too short", code=Reason.TEE_CHUNK_MALFORMED)
            if max_bytes is not None and plain + length > max_bytes:
                raise UpdateRejected(f"sealed update exceeds {max_bytes} bytes", code=Reason.TEE_CHUNK_SIZE)
            self._records.append((pos + 4, n))
            self._starts.append(plain)
            self._headers.append(header)
            plain += length
            pos += 4 + n
        if first is None:
            raise UpdateRejected("sealed update has no chunks", code=Reason.TEE_CHUNK_TRUNCATED)
        if len(self._records) != first.total:
            raise UpdateRejected(
                f"sealed update truncated: {len(self._records)} of {first.total} chunks",
                code=Reason.TEE_CHUNK_TRUNCATED,
            )
        self._size = plain

    @property
    def size(self) -> int:
        """Plaintext bytes of the whole upload."""
        return self._size

    def _chunk(self, i: int) -> bytes:
        got = self._cache.get(i)
        if got is not None:
            self._cache.move_to_end(i)
            return got
        offset, n = self._records[i]
        raw = _pread(self._fd, n, offset)
        if len(raw) != n:
            raise UpdateRejected("sealed upload shorter than when it was indexed", code=Reason.TRUNCATED)
        plain = bytes(self._open(raw, self._headers[i]))
        end = self._starts[i + 1] if i + 1 < len(self._starts) else self._size
        if len(plain) != end - self._starts[i]:
            raise UpdateRejected(
                f"sealed chunk {i} opened to an unexpected length", code=Reason.TEE_CHUNK_MALFORMED
            )
        self._cache[i] = plain
        while len(self._cache) > KEEP_CHUNKS:
            self._cache.popitem(last=False)
        return plain

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self._size:
            raise UpdateRejected(
                f"read of {n} bytes at {offset} outside a sealed upload of {self._size}",
                code=Reason.TRUNCATED,
            )
        i = bisect.bisect_right(self._starts, offset) - 1
        lo = offset - self._starts[i]
        chunk = self._chunk(i) if n else b""
        if lo + n <= len(chunk):
            return chunk[lo : lo + n]  # within one chunk: one copy
        out = bytearray()
        pos = offset
        while len(out) < n:
            chunk = self._chunk(i)
            lo = pos - self._starts[i]
            piece = chunk[lo : lo + n - len(out)]
            out += piece
            pos += len(piece)
            i += 1
        return bytes(out)

    def verify(self) -> None:
        """Open every chunk once, in order (each is authenticated), keeping none of them."""
        for i in range(len(self._records)):
            self._cache.pop(i, None)
            self._chunk(i)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache = OrderedDict()


__all__ = ["KEEP_CHUNKS", "Opener", "SealedSource"]

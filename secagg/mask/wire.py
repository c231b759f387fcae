"""A strict, unambiguous binary encoding for signed payloads, HKDF info strings and messages.

Every field is typed and length-prefixed, so no two different field lists encode to the same bytes
(which a plain concatenation would allow: "ab"+"c" == "a"+"bc"); the reader refuses trailing bytes,
short fields and wrong types instead of guessing.
"""

from __future__ import annotations

import struct

from secagg.mask.errors import ProtocolViolation

Field = bytes | str | int

_BYTES, _STR, _INT = b"B", b"S", b"I"


def pack(*fields: Field) -> bytes:
    # parts joined once at the end: a large blob (a masked vector) is copied once, not three times
    parts: list[bytes] = []
    for f in fields:
        if isinstance(f, bool):
            raise TypeError("bool is not a wire field")
        if isinstance(f, int):
            if not 0 <= f < 2**64:
                raise ValueError(f"integer field out of range: {f}")
            parts += (_INT, struct.pack(">Q", f))
        elif isinstance(f, str):
            raw = f.encode()
            parts += (_STR, struct.pack(">I", len(raw)), raw)
        elif isinstance(f, bytes | bytearray | memoryview):
            raw = bytes(f)
            parts += (_BYTES, struct.pack(">I", len(raw)), raw)
        else:
            raise TypeError(f"unsupported wire field type {type(f).__name__}")
    return b"".join(parts)


class Reader:
    """Reads fields written by :func:`pack`, in order, checking each type."""

    def __init__(self, data: bytes, what: str) -> None:
        self._view = memoryview(data)
        self._pos = 0
        self._what = what

    def _fail(self, why: str) -> ProtocolViolation:
        return ProtocolViolation(f"malformed {self._what}: {why}")

    def _take(self, n: int) -> memoryview:
        if self._pos + n > len(self._view):
            raise self._fail("truncated")
        chunk = self._view[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def _tag(self, expect: bytes) -> None:
        tag = bytes(self._take(1))
        if tag != expect:
            raise self._fail(f"expected field type {expect!r}, got {tag!r}")

    def u64(self) -> int:
        self._tag(_INT)
        return int(struct.unpack(">Q", self._take(8))[0])

    def blob(self, size: int | None = None) -> bytes:
        self._tag(_BYTES)
        (n,) = struct.unpack(">I", self._take(4))
        if size is not None and n != size:
            raise self._fail(f"expected {size} bytes, got {n}")
        return bytes(self._take(n))

    def text(self) -> str:
        self._tag(_STR)
        (n,) = struct.unpack(">I", self._take(4))
        try:
            return bytes(self._take(n)).decode()
        except UnicodeDecodeError:
            raise self._fail("string is not UTF-8") from None

    def end(self) -> None:
        if self._pos != len(self._view):
            raise self._fail(f"{len(self._view) - self._pos} trailing bytes")

"""A masked input read a window at a time, from a spooled file or a sealed upload, never whole.

A :class:`~secagg.mask.messages.MaskedInput` is ``pack(TAG, site, job, round, data)``: a short header,
then the little-endian uint32 vector as one blob. :class:`MaskedSource` parses the header from the
first bytes, checks that the blob ends exactly at the end of the upload, and then reads elements
``[start, stop)`` at their offset: the server sums masked inputs window by window in lockstep
(:meth:`secagg.mask.server.MaskServer.finish_windows`), so memory stays a few windows whatever the
model's size and the number of sites.
"""

from __future__ import annotations

import struct
from typing import Protocol

import numpy as np

from secagg.mask.errors import ProtocolViolation
from secagg.mask.messages import MaskedInput
from secagg.mask.wire import Reader, pack

#: the longest header read to find the blob (tag, site and job names, round)
_MAX_HEAD = 64 * 1024


class Bytes(Protocol):
    """Random-access reads of an upload (a spooled file, a sealed upload opened a chunk at a time)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, n: int) -> bytes: ...

    def close(self) -> None: ...


class MemoryBytes:
    """A masked input already in memory (a library caller's :class:`MaskedInput`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]

    def close(self) -> None:
        """Nothing to release."""


class MaskedSource:
    """One masked input: its header fields, and its vector read at offsets."""

    def __init__(self, src: Bytes) -> None:
        self.src = src
        head = src.read(0, min(src.size, _MAX_HEAD))
        r = Reader(head, MaskedInput.TAG)
        tag = r.text()
        if tag != MaskedInput.TAG:
            raise ProtocolViolation(f"expected a {MaskedInput.TAG} message, got {tag[:64]!r}")
        self.site, self.job, self.round = r.text(), r.text(), r.u64()
        at = len(pack(tag, self.site, self.job, self.round))
        if head[at : at + 1] != b"B" or len(head) < at + 5:
            raise ProtocolViolation("malformed MaskedInput: no vector after its header")
        (n,) = struct.unpack(">I", head[at + 1 : at + 5])
        self._data = at + 5
        if self._data + n != src.size:
            raise ProtocolViolation(
                f"malformed MaskedInput: a vector of {n} bytes in an upload of {src.size - self._data}"
            )
        if n % 4:
            raise ProtocolViolation("malformed MaskedInput: data is not a whole number of uint32")
        self.elements = n // 4

    @classmethod
    def of(cls, msg: MaskedInput) -> MaskedSource:
        return cls(MemoryBytes(msg.to_bytes()))

    def window(self, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` of the masked vector (the weight is the last element)."""
        if not 0 <= start <= stop <= self.elements:
            raise ValueError(f"window {start}..{stop} outside a vector of {self.elements}")
        raw = self.src.read(self._data + 4 * start, 4 * (stop - start))
        return np.frombuffer(raw, dtype="<u4")

    def close(self) -> None:
        self.src.close()


__all__ = ["Bytes", "MaskedSource", "MemoryBytes"]

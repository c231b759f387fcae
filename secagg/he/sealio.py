"""SEAL objects to and from bytes, through the SEAL that TenSEAL bundles (``tenseal.sealapi``).

Why not TenSEAL's ``CKKSVector``: its wrapper encrypts symmetrically but drops SEAL's *seeded*
ciphertexts (the uniform half ``c1`` replaced by the 64-byte PRNG seed that made it), so every upload
was twice as large as it needs to be, and its protobuf wrapping doubled the per-ciphertext cost.
``tenseal.sealapi`` exposes SEAL's own ``encrypt_symmetric`` -> ``Serializable<Ciphertext>`` but saves
and loads only through a file path. This module gives it one: an anonymous in-memory file
(``memfd_create``), one per thread, so nothing touches a disk and threads never share a buffer.
Ciphertexts are not secret; no key ever passes through here.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from typing import Protocol

import tenseal.sealapi as sealapi
import zstandard

# SEAL's serialization header: magic, header size, version major, minor, compression mode, reserved,
# total size (header included), little-endian (seal/serialization.h, SEALHeader).
_HEADER = struct.Struct("<HBBBBHQ")
_MAGIC = 0xA15E
_COMPR_NONE = 0
_COMPR_ZSTD = 2
# zstd is fed this much compressed input at a time: one call can then inflate to at most a few
# MiB (16: a zstd block yields at most 128 KiB from a 4-byte RLE block), so the bound below holds.
_FEED = 512


class _Saveable(Protocol):
    def save(self, path: str, /) -> None: ...


class _File:
    """An in-memory file, closed when the thread that owns it ends (its thread-local dict is dropped)."""

    def __init__(self) -> None:
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("secagg-seal", os.MFD_CLOEXEC)
            self.path = f"/proc/self/fd/{self.fd}"
            self._unlink: str | None = None
        else:  # not Linux: a private temporary file, removed when the thread's file is dropped
            self.fd, self.path = tempfile.mkstemp(prefix="secagg-seal-")
            self._unlink = self.path

    def __del__(self) -> None:
        try:
            os.close(self.fd)
            if self._unlink:
                os.unlink(self._unlink)
        except OSError:
            pass


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.file = _File()


_scratch = _Scratch()


def to_bytes(obj: _Saveable) -> bytes:
    """SEAL's own serialisation of ``obj`` (header, then zstd-compressed data)."""
    s = _scratch.file
    obj.save(s.path)  # SEAL truncates the file on open
    size = os.fstat(s.fd).st_size
    return os.pread(s.fd, size, 0)


def uncompressed(data: bytes | bytearray | memoryview, max_body: int) -> bytes | memoryview:
    """``data`` with its zstd body inflated here, bounded, and re-headed as SEAL's uncompressed mode.

    Why: SEAL's own zstd path, fed hostile bytes, once aborted the whole process from C++
    (``terminate called after throwing std::__ios_failure``, a long fuzz run of the aggregator's HE
    add), which no Python handler can catch. Here the header is parsed strictly, the body is
    inflated by python-zstandard with the output capped at ``max_body`` bytes (what the context's
    largest ciphertext needs), one frame and nothing after it; SEAL then only ever parses plain
    bytes. Raises ``ValueError`` naming what is wrong.
    """
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise ValueError("shorter than SEAL's header")
    magic, header_size, major, minor, compr, reserved, size = _HEADER.unpack_from(view)
    if magic != _MAGIC or header_size != _HEADER.size or reserved != 0:
        raise ValueError("not a SEAL object (magic, header size or reserved field)")
    if size != len(view):
        raise ValueError(f"SEAL header declares {size} bytes, {len(view)} given")
    body = view[_HEADER.size :]
    if compr == _COMPR_NONE:
        if len(body) > max_body:
            raise ValueError(f"SEAL body of {len(body)} bytes exceeds {max_body}")
        return view
    if compr != _COMPR_ZSTD:
        raise ValueError(f"SEAL compression mode {compr} is not zstd or none")
    inflater = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    fed = 0
    try:
        while fed < len(body) and not inflater.eof:
            piece = body[fed : fed + _FEED]
            fed += len(piece)
            out += inflater.decompress(piece)
            if len(out) > max_body:
                raise ValueError(f"SEAL body inflates past {max_body} bytes")
        done = inflater.eof
        rest = len(inflater.unused_data) + len(body) - fed
    except zstandard.ZstdError as exc:
        raise ValueError(f"SEAL body is not valid zstd: {exc}") from None
    if not done:
        raise ValueError("SEAL body ends inside its zstd frame")
    if rest:
        raise ValueError("bytes after the SEAL body's zstd frame")
    return _HEADER.pack(_MAGIC, _HEADER.size, major, minor, _COMPR_NONE, 0, _HEADER.size + len(out)) + out


def load_ciphertext(
    context: object, data: bytes | bytearray | memoryview, max_body: int
) -> sealapi.Ciphertext:
    """Parse SEAL ciphertext bytes under ``context``; SEAL itself checks them against its parameters.

    The body is inflated first by :func:`uncompressed` (at most ``max_body`` bytes). Raises
    ``ValueError`` or whatever SEAL raises (bare ``ValueError``/``RuntimeError``) on any malformed
    input; the caller turns that into a refusal. A seeded ciphertext comes back with its uniform half
    regenerated.
    """
    data = uncompressed(data, max_body)
    s = _scratch.file
    os.pwrite(s.fd, data, 0)
    os.ftruncate(s.fd, len(data))  # after the write: pages are reused, not freed and faulted in again
    ct = sealapi.Ciphertext()
    ct.load(context, s.path)
    return ct

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
import tempfile
import threading
from typing import Protocol

import tenseal.sealapi as sealapi


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


def load_ciphertext(context: object, data: bytes | bytearray | memoryview) -> sealapi.Ciphertext:
    """Parse SEAL ciphertext bytes under ``context``; SEAL itself checks them against its parameters.

    Raises whatever SEAL raises (bare ``ValueError``/``RuntimeError``) on any malformed input; the
    caller turns that into a refusal. A seeded ciphertext comes back with its uniform half regenerated.
    """
    s = _scratch.file
    os.pwrite(s.fd, data, 0)
    os.ftruncate(s.fd, len(data))  # after the write: pages are reused, not freed and faulted in again
    ct = sealapi.Ciphertext()
    ct.load(context, s.path)
    return ct

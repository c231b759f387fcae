"""Expanding a 32-byte seed into a mask vector in Z_2^32 with AES-256-CTR.

Each seed is used for exactly one vector (self-mask seeds are fresh per round; pairwise seeds come from
HKDF bound to job, round and the pair), so a fixed all-zero counter block is safe: the keystream is a
PRF output under a key that is never reused.

Element i of a seed's vector is bytes 4i..4i+3 of its keystream, little-endian. :func:`expand` returns
the vector; :func:`apply_masks` adds and subtracts several seeds' vectors into an existing one in place,
a cache-sized piece at a time (the keystream goes straight into one small reused buffer), with exactly
the values :func:`expand` gives. Both can start at any element (``offset``): CTR mode's counter is the
block number, so element i's keystream starts at block 4i // 16, and a window of the vector is made
without the elements before it (the aggregator unmasks the sum a window at a time).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

SEED_BYTES = 32
#: elements per step: a 256 KiB keystream buffer and the matching slice of the vector stay in cache
_CHUNK = 1 << 16
_ZEROS = bytes(4 * _CHUNK)
#: the vectors' element type: little-endian uint32 (native on the platforms we run on)
MASK_DTYPE = np.dtype("<u4")


def _keystream(seed: bytes, offset: int = 0) -> CipherContext:
    """The keystream of ``seed`` from element ``offset`` on (the counter block, then the bytes of that
    block before the element skipped)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    block, skip = divmod(4 * offset, 16)
    enc = Cipher(algorithms.AES(seed), modes.CTR(block.to_bytes(16, "big"))).encryptor()
    if skip:
        enc.update(bytes(skip))
    return enc


def expand(seed: bytes, length: int, offset: int = 0) -> np.ndarray:
    """``length`` pseudo-random uint32 values from ``seed`` (AES-256-CTR keystream, little-endian),
    elements ``offset .. offset + length`` of the seed's vector."""
    enc = _keystream(seed, offset)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    out = np.empty(length, dtype=MASK_DTYPE)
    raw = out.data.cast("B")
    zeros = memoryview(_ZEROS)
    step = 4 * _CHUNK
    for start in range(0, raw.nbytes, step):
        n = min(step, raw.nbytes - start)
        enc.update_into(zeros[:n], raw[start : start + n])
    return out


def apply_masks(
    vec: np.ndarray, add: Sequence[bytes] = (), subtract: Sequence[bytes] = (), offset: int = 0
) -> np.ndarray:
    """``vec += sum(expand(s) for s in add) - sum(expand(s) for s in subtract)`` (mod 2^32), in place;
    ``vec`` holds elements ``offset .. offset + len(vec)`` (a window of the masked vector).

    ``vec`` must be a one-dimensional uint32 array; it is returned. No full-length mask is ever held:
    each seed's keystream is produced a piece at a time into one reused buffer and added straight in.
    """
    if vec.ndim != 1 or vec.dtype != np.uint32:
        raise ValueError(f"masks apply to a one-dimensional uint32 vector, got {vec.dtype} {vec.shape}")
    if not vec.flags.writeable:
        raise ValueError("the vector to mask must be writeable")
    streams: list[tuple[CipherContext, np.ufunc]] = [(_keystream(s, offset), np.add) for s in add]
    streams += [(_keystream(s, offset), np.subtract) for s in subtract]
    if not streams or vec.size == 0:
        return vec
    buf = np.empty(min(vec.size, _CHUNK), dtype=MASK_DTYPE)
    raw = buf.data.cast("B")
    zeros = memoryview(_ZEROS)
    for start in range(0, vec.size, _CHUNK):
        n = min(_CHUNK, vec.size - start)
        part, ks = vec[start : start + n], buf[:n]
        for enc, op in streams:
            enc.update_into(zeros[: 4 * n], raw[: 4 * n])
            op(part, ks, out=part)
    return vec

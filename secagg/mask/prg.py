"""Expanding a 32-byte seed into a mask vector in Z_2^32 with AES-256-CTR.

Each seed is used for exactly one vector (self-mask seeds are fresh per round; pairwise seeds come from
HKDF bound to job, round and the pair), so a fixed all-zero counter block is safe: the keystream is a
PRF output under a key that is never reused.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_CHUNK = 1 << 20  # elements per AES call, so memory stays bounded for large models


def expand(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uint32 values from ``seed`` (AES-256-CTR keystream, little-endian)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    out = np.empty(length, dtype=np.uint32)
    zeros = bytes(4 * min(length, _CHUNK))
    for start in range(0, length, _CHUNK):
        n = min(_CHUNK, length - start)
        out[start : start + n] = np.frombuffer(enc.update(zeros[: 4 * n]), dtype="<u4")
    return out

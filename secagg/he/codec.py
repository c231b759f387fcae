"""One flat slot stream of CKKS ciphertexts: encrypt at a site, add at the aggregator, decrypt at a site.

The caller hands over one flat float vector (all tensors of a bundle concatenated, no per-tensor
padding); it is cut into ``params.slots``-value chunks, the last one zero-padded, one ciphertext each.
The site multiplies by its normalised weight *before* encrypting, so the aggregator's whole job is
ciphertext addition: no plaintext multiply, no rescale, no context per tensor.

Each ciphertext travels as a frame::

    b"SAHC" | version (1 byte) | context id (16 bytes) | index (u32 BE) | TenSEAL CKKSVector bytes

The context id and index let the aggregator refuse a ciphertext made under another key, from another
job, or sent out of place, before it corrupts a running sum it cannot roll back.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import tenseal as ts

from secagg.errors import ConfigError, UpdateRejected
from secagg.he.context import CONTEXT_ID_BYTES, PublicContext, SecretContext
from secagg.he.params import CkksParams

FRAME_MAGIC = b"SAHC"
FRAME_VERSION = 1
_FRAME = struct.Struct(f">4sB{CONTEXT_ID_BYTES}sI")


def n_ciphertexts(length: int, params: CkksParams) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"an HE vector needs a positive integer length, got {length!r}")
    return math.ceil(length / params.slots)


def max_frame_bytes(params: CkksParams) -> int:
    """Upper bound of one frame, so a receiver can refuse an oversized one before parsing it."""
    data_primes = len(params.coeff_mod_bit_sizes) - 1
    return _FRAME.size + 2 * params.poly_modulus_degree * 8 * data_primes + 4096


def _frame(context_id: bytes, index: int, blob: bytes) -> bytes:
    return _FRAME.pack(FRAME_MAGIC, FRAME_VERSION, context_id, index) + blob


def _unframe(data: bytes, context_id: bytes, params: CkksParams) -> tuple[int, bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UpdateRejected("HE ciphertext must be bytes", code="bad_ciphertext")
    if len(data) < _FRAME.size or len(data) > max_frame_bytes(params):
        raise UpdateRejected(
            f"HE ciphertext frame has an impossible size: {len(data)} bytes", code="bad_ciphertext"
        )
    magic, version, cid, index = _FRAME.unpack_from(data)
    if magic != FRAME_MAGIC or version != FRAME_VERSION:
        raise UpdateRejected("not a secagg HE ciphertext frame", code="bad_ciphertext")
    if cid != context_id:
        raise UpdateRejected(
            f"HE ciphertext was made under another key (context {cid.hex()}, expected {context_id.hex()})",
            code="wrong_context",
        )
    return index, bytes(data[_FRAME.size :])


def _load_vector(ctx: ts.Context, blob: bytes, params: CkksParams) -> ts.CKKSVector:
    """Parse and check a ciphertext against the context: shape, level, scale, not a plaintext in disguise."""
    try:
        vec = ts.ckks_vector_from(ctx, blob)
        cts = vec.data.ciphertext()
    except Exception as exc:  # TenSEAL/SEAL raise bare ValueError/RuntimeError on any bad input
        raise UpdateRejected(
            f"HE ciphertext does not parse under this context: {type(exc).__name__}", code="bad_ciphertext"
        ) from None
    first = ctx.seal_context().data.first_parms_id()
    ok = (
        vec.size() == params.slots
        and len(cts) == 1
        and cts[0].size() == 2
        and cts[0].parms_id() == first
        and cts[0].scale == 2.0**params.scale_bits
        and not cts[0].is_transparent()
    )
    if not ok:
        raise UpdateRejected(
            "HE ciphertext is not a fresh encryption under these parameters (size, level or scale)",
            code="bad_ciphertext",
        )
    return vec


def encrypt_vector(ctx: SecretContext, vec: np.ndarray, weight: float) -> Iterator[bytes]:
    """Check the update, then return an iterator of frames, one per ``slots`` values, in order.

    Checks run now, not on the first ``next()``: a bad update is refused before anything is sent.
    """
    params = ctx.params
    arr = np.asarray(vec)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        raise UpdateRejected("HE update must be a non-empty flat numeric vector", code="bad_shape")
    if np.iscomplexobj(arr):
        raise UpdateRejected("HE update must be real", code="bad_shape")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise UpdateRejected("HE update contains NaN or infinity", code="non_finite")
    if not (isinstance(weight, float | int) and math.isfinite(weight) and 0.0 < weight <= 1.0):
        raise UpdateRejected(f"HE weight must be a normalised weight in (0, 1], got {weight!r}", "bad_weight")
    peak = float(np.max(np.abs(arr)))
    if peak > params.max_abs_value:
        raise UpdateRejected(
            f"HE update has |value| {peak:.4g} above {params.max_abs_value:g}, the largest these CKKS "
            f"parameters ({params.describe()}) add without overflow",
            code="out_of_range",
        )
    scaled = arr * float(weight)
    return _encrypt_chunks(ctx, scaled)


def _encrypt_chunks(ctx: SecretContext, scaled: np.ndarray) -> Iterator[bytes]:
    slots = ctx.params.slots
    n = n_ciphertexts(scaled.size, ctx.params)
    for i in range(n):
        chunk = scaled[i * slots : (i + 1) * slots]
        if chunk.size < slots:
            chunk = np.concatenate([chunk, np.zeros(slots - chunk.size)])
        blob = ts.ckks_vector(ctx.ts_context, chunk).serialize()
        yield _frame(ctx.context_id, i, blob)


class CiphertextAccumulator:
    """Running sums of one flat stream, one per ciphertext index: memory is flat in the number of sites.

    An addition cannot be undone without keeping the addend, so a half-received site stream would spoil
    the total. Stage each site's stream in its own accumulator and :meth:`merge` it into the round total
    only when that site's stream is complete (:attr:`contributions` == 1); memory then grows with the
    number of streams in flight, not with the number of sites.

    Safe to share between threads (one lock around each mutation; parsing runs outside it).
    """

    def __init__(self, ctx: PublicContext, n_ciphertexts: int) -> None:
        if isinstance(n_ciphertexts, bool) or not isinstance(n_ciphertexts, int) or n_ciphertexts < 1:
            raise ConfigError(f"an accumulator needs a positive number of ciphertexts, got {n_ciphertexts!r}")
        if not isinstance(ctx, PublicContext):
            raise ConfigError(
                "the accumulator takes a PublicContext: the aggregator never holds a secret key"
            )
        self._ctx = ctx
        self._n = n_ciphertexts
        self._sums: list[ts.CKKSVector | None] = [None] * n_ciphertexts
        self._counts = [0] * n_ciphertexts
        self._lock = threading.Lock()

    @property
    def n_ciphertexts(self) -> int:
        return self._n

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(self._counts)

    @property
    def contributions(self) -> int:
        """How many complete streams were added; 0 until every index has the same, non-zero count."""
        first = self._counts[0]
        return first if all(c == first for c in self._counts) else 0

    def add(self, index: int, data: bytes) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self._n:
            raise UpdateRejected(f"HE ciphertext index {index!r} is outside 0..{self._n - 1}", "bad_index")
        framed_index, blob = _unframe(data, self._ctx.context_id, self._ctx.params)
        if framed_index != index:
            raise UpdateRejected(
                f"HE ciphertext frame says index {framed_index}, received as {index}", code="bad_index"
            )
        vec = _load_vector(self._ctx.ts_context, blob, self._ctx.params)
        with self._lock:
            current = self._sums[index]
            if current is None:
                self._sums[index] = vec
            else:
                current.add_(vec)
            self._counts[index] += 1

    def merge(self, other: CiphertextAccumulator) -> None:
        """Add a complete staged stream (another accumulator under the same context) into this one.

        ``other`` is consumed (emptied): its sums are moved, not copied.
        """
        if other is self:
            raise ConfigError("cannot merge an HE accumulator into itself")
        if other._ctx.context_id != self._ctx.context_id or other._n != self._n:
            raise UpdateRejected("cannot merge HE sums of another context or length", code="wrong_context")
        if other.contributions == 0:
            raise UpdateRejected(
                f"HE stream is incomplete: {sum(1 for c in other._counts if c == 0)} of {other._n} "
                "ciphertexts missing or counts uneven",
                code="incomplete",
            )
        with self._lock, other._lock:
            for i, vec in enumerate(other._sums):
                assert vec is not None
                current = self._sums[i]
                if current is None:
                    self._sums[i] = vec
                else:
                    current.add_(vec)
                self._counts[i] += other._counts[i]
            other._sums = [None] * other._n
            other._counts = [0] * other._n

    def result(self) -> Iterator[bytes]:
        """Frames of the summed stream, in order; refuses if any index got a different number of addends."""
        if self.contributions == 0:
            raise UpdateRejected(
                f"HE sum is incomplete: counts {min(self._counts)}..{max(self._counts)}",
                code="incomplete",
            )
        return self._result_frames()

    def _result_frames(self) -> Iterator[bytes]:
        for i, vec in enumerate(self._sums):
            assert vec is not None
            yield _frame(self._ctx.context_id, i, vec.serialize())


def decrypt_vector(ctx: SecretContext, ciphertexts: Iterable[bytes], length: int) -> np.ndarray:
    """Decrypt a summed stream back to ``length`` float64 values; refuses a short, long or foreign one."""
    params = ctx.params
    expected = n_ciphertexts(length, params)
    out = np.empty(expected * params.slots, dtype=np.float64)
    received = 0
    for data in ciphertexts:
        if received >= expected:
            raise UpdateRejected(f"HE result has more than the expected {expected} ciphertexts", "bad_length")
        index, blob = _unframe(data, ctx.context_id, params)
        if index != received:
            raise UpdateRejected(f"HE result ciphertext {received} arrived as index {index}", "bad_index")
        vec = _load_vector(ctx.ts_context, blob, params)
        out[received * params.slots : (received + 1) * params.slots] = vec.decrypt()
        received += 1
    if received != expected:
        raise UpdateRejected(f"HE result is truncated: {received} of {expected} ciphertexts", "bad_length")
    return out[:length]

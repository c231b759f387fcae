"""One flat slot stream of CKKS ciphertexts: encrypt at a site, add at the aggregator, decrypt at a site.

The caller hands over one flat float vector (all tensors of a bundle concatenated, no per-tensor
padding); it is cut into chunks of ``params.values_per_ciphertext`` values, the last one zero-padded,
one ciphertext each, two values per complex CKKS slot (real and imaginary part).
The site multiplies by its normalised weight *before* encrypting, so the aggregator's whole job is
ciphertext addition: no plaintext multiply, no rescale, no context per tensor.

Each ciphertext travels as a frame::

    b"SAHC" | version (1 byte) | context id (16 bytes) | index (u32 BE) | SEAL ciphertext bytes

The context id and index let the aggregator refuse a ciphertext made under another key, from another
job, or sent out of place, before it corrupts a running sum it cannot roll back.

Sites encrypt with SEAL's *seeded* symmetric encryption (version 2 frames): the uniform half of each
fresh ciphertext travels as the 64-byte seed that generates it, which halves the upload; the
aggregator's SEAL regenerates it when it loads the ciphertext. Sums are not fresh, so the result
frames carry both halves. SEAL is reached through ``tenseal.sealapi`` (see :mod:`secagg.he.sealio`).
"""

from __future__ import annotations

import math
import struct
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as sealapi

from secagg.errors import ConfigError, UpdateRejected
from secagg.he import sealio
from secagg.he.context import CONTEXT_ID_BYTES, PublicContext, SecretContext
from secagg.he.params import CkksParams
from secagg.reasons import Reason

FRAME_MAGIC = b"SAHC"
FRAME_VERSION = 2
_FRAME = struct.Struct(f">4sB{CONTEXT_ID_BYTES}sI")


def n_ciphertexts(length: int, params: CkksParams) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"an HE vector needs a positive integer length, got {length!r}")
    return math.ceil(length / params.values_per_ciphertext)


def max_frame_bytes(params: CkksParams) -> int:
    """Upper bound of one frame, so a receiver can refuse an oversized one before parsing it."""
    data_primes = len(params.coeff_mod_bit_sizes) - 1
    return _FRAME.size + 2 * params.poly_modulus_degree * 8 * data_primes + 4096


def _frame(context_id: bytes, index: int, blob: bytes) -> bytes:
    return _FRAME.pack(FRAME_MAGIC, FRAME_VERSION, context_id, index) + blob


def _unframe(data: bytes, context_id: bytes, params: CkksParams) -> tuple[int, memoryview]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UpdateRejected("HE ciphertext must be bytes", code=Reason.BAD_CIPHERTEXT)
    if len(data) < _FRAME.size or len(data) > max_frame_bytes(params):
        raise UpdateRejected(
            f"HE ciphertext frame has an impossible size: {len(data)} bytes", code=Reason.BAD_CIPHERTEXT
        )
    magic, version, cid, index = _FRAME.unpack_from(data)
    if magic != FRAME_MAGIC or version != FRAME_VERSION:
        raise UpdateRejected("not a secagg HE ciphertext frame", code=Reason.BAD_CIPHERTEXT)
    if cid != context_id:
        raise UpdateRejected(
            f"HE ciphertext was made under another key (context {cid.hex()}, expected {context_id.hex()})",
            code=Reason.WRONG_CONTEXT,
        )
    return index, memoryview(data)[_FRAME.size :]


@dataclass(frozen=True, eq=False)
class _Seal:
    """The SEAL objects one context needs, made once per context (they hold precomputed tables)."""

    context: object
    first_parms_id: list[int]
    scale: float
    data_primes: int
    max_body: int  # the largest ciphertext body this context can need, inflated (two full halves)
    encoder: sealapi.CKKSEncoder
    evaluator: sealapi.Evaluator
    encryptor: sealapi.Encryptor | None
    decryptor: sealapi.Decryptor | None


_tools: weakref.WeakKeyDictionary[PublicContext | SecretContext, _Seal] = weakref.WeakKeyDictionary()
_tools_lock = threading.Lock()


def _seal(ctx: PublicContext | SecretContext) -> _Seal:
    with _tools_lock:
        found = _tools.get(ctx)
        if found is not None:
            return found
        ts_ctx = ctx.ts_context
        sc = ts_ctx.seal_context().data
        encryptor = decryptor = None
        if isinstance(ctx, SecretContext):
            sk = ts_ctx.secret_key().data
            key = sk if ctx.params.symmetric else ts_ctx.public_key().data
            encryptor = sealapi.Encryptor(sc, key)
            decryptor = sealapi.Decryptor(sc, sk)
        made = _Seal(
            context=sc,
            first_parms_id=list(sc.first_parms_id()),
            scale=2.0**ctx.params.scale_bits,
            data_primes=len(ctx.params.coeff_mod_bit_sizes) - 1,
            max_body=max_frame_bytes(ctx.params),
            encoder=sealapi.CKKSEncoder(sc),
            evaluator=sealapi.Evaluator(sc),
            encryptor=encryptor,
            decryptor=decryptor,
        )
        _tools[ctx] = made
        return made


def _load_ciphertext(tools: _Seal, blob: memoryview) -> sealapi.Ciphertext:
    """Parse and check a ciphertext against the context: shape, level, scale, not a plaintext in disguise."""
    try:
        ct = sealio.load_ciphertext(tools.context, blob, tools.max_body)
    except Exception as exc:  # SEAL raises bare ValueError/RuntimeError on any bad input
        raise UpdateRejected(
            f"HE ciphertext does not parse under this context: {type(exc).__name__}",
            code=Reason.BAD_CIPHERTEXT,
        ) from None
    ok = (
        ct.size() == 2
        and list(ct.parms_id()) == tools.first_parms_id
        and ct.coeff_modulus_size() == tools.data_primes
        and ct.is_ntt_form()
        and ct.scale == tools.scale
        and not ct.is_transparent()
    )
    if not ok:
        raise UpdateRejected(
            "HE ciphertext is not a fresh encryption under these parameters (size, level or scale)",
            code=Reason.BAD_CIPHERTEXT,
        )
    return ct


def _check_weight(weight: float) -> None:
    if not (isinstance(weight, float | int) and math.isfinite(weight) and 0.0 < weight <= 1.0):
        raise UpdateRejected(
            f"HE weight must be a normalised weight in (0, 1], got {weight!r}", Reason.BAD_WEIGHT
        )


def _checked(params: CkksParams, vec: np.ndarray) -> np.ndarray:
    """``vec`` as float64 after the refusals every encrypted value goes through (shape, real, finite,
    within the headroom of ``params``)."""
    arr = np.asarray(vec)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        raise UpdateRejected("HE update must be a non-empty flat numeric vector", code=Reason.BAD_SHAPE)
    if np.iscomplexobj(arr):
        raise UpdateRejected("HE update must be real", code=Reason.BAD_SHAPE)
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise UpdateRejected("HE update contains NaN or infinity", code=Reason.NON_FINITE)
    peak = float(np.max(np.abs(arr)))
    if peak > params.max_abs_value:
        raise UpdateRejected(
            f"HE update has |value| {peak:.4g} above {params.max_abs_value:g}, the largest these CKKS "
            f"parameters ({params.describe()}) add without overflow",
            code=Reason.OUT_OF_RANGE,
        )
    return arr


def encrypt_vector(ctx: SecretContext, vec: np.ndarray, weight: float) -> Iterator[bytes]:
    """Check the update, then return an iterator of frames, one per ``values_per_ciphertext``
    values, in order.

    Checks run now, not on the first ``next()``: a bad update is refused before anything is sent.
    """
    arr = _checked(ctx.params, vec)
    _check_weight(weight)
    scaled = arr * float(weight)
    return _encrypt_chunks(ctx, _slot_chunks([scaled], ctx.params.values_per_ciphertext))


def encrypt_windows(
    ctx: SecretContext, windows: Iterable[tuple[int, np.ndarray]], size: int, weight: float
) -> Iterator[bytes]:
    """:func:`encrypt_vector` of the vector of ``size`` values whose ``(start, values)`` windows come in
    order, with no more of it in memory than one window and one ciphertext's values.

    Why: a site's weighted update is a file read a window at a time (:mod:`secagg.agent.roundfiles`);
    its windows need not line up with the slot count, so the values past the last full ciphertext of
    a window are carried into the next. The frames are those of :func:`encrypt_vector` on the whole
    vector: the same values in the same slots, ciphertext for ciphertext (the encryption noise is
    fresh, as it is on every call of either).

    The weight and size are checked now; each window is checked (as :func:`encrypt_vector` checks the
    whole vector) before any of its values is encrypted, so a bad window raises before its frames
    exist: a caller that spools the frames before sending (the site's upload does) sends nothing.
    """
    _check_weight(weight)
    n_ciphertexts(size, ctx.params)  # refuses a size that is not a positive integer
    per = ctx.params.values_per_ciphertext

    def scaled() -> Iterator[np.ndarray]:
        pos = 0
        for start, vals in windows:
            if start != pos:
                raise UpdateRejected(f"HE update window at {start}, expected {pos}", code=Reason.BAD_SHAPE)
            arr = _checked(ctx.params, vals)
            if pos + arr.size > size:
                raise UpdateRejected(
                    f"HE update has more than the expected {size} values", code=Reason.BAD_SHAPE
                )
            pos += arr.size
            yield arr * float(weight)
        if pos != size:
            raise UpdateRejected(f"HE update has {pos} values, expected {size}", code=Reason.BAD_SHAPE)

    return _encrypt_chunks(ctx, _slot_chunks(scaled(), per))


def _slot_chunks(pieces: Iterable[np.ndarray], per: int) -> Iterator[np.ndarray]:
    """The concatenation of ``pieces`` cut into chunks of ``per`` values, the last one shorter: the
    values of one ciphertext each. A chunk that lies inside one piece is a view of it (the whole
    vector's path copies nothing); one that straddles pieces is gathered into a buffer."""
    carry = np.empty(per, dtype=np.float64)
    held = 0
    for piece in pieces:
        off = 0
        if held:
            take = min(per - held, piece.size)
            carry[held : held + take] = piece[:take]
            held += take
            off = take
            if held < per:
                continue
            yield carry
            carry = np.empty(per, dtype=np.float64)  # the consumer may keep the chunk it was given
            held = 0
        while piece.size - off >= per:
            yield piece[off : off + per]
            off += per
        rest = piece.size - off
        if rest:
            carry[:rest] = piece[off:]
            held = rest
    if held:
        yield carry[:held]


def _encode(tools: _Seal, chunk: np.ndarray, plain: sealapi.Plaintext) -> None:
    if chunk.size % 2:
        chunk = np.append(chunk, 0.0)
    # pairs of values as complex slots; SEAL zero-pads a short last chunk to the full slot count
    tools.encoder.encode(chunk.view(np.complex128).tolist(), tools.scale, plain)


def _encrypt_chunks(ctx: SecretContext, chunks: Iterable[np.ndarray]) -> Iterator[bytes]:
    tools = _seal(ctx)
    encryptor = tools.encryptor
    assert encryptor is not None
    seeded = ctx.params.symmetric
    plain = sealapi.Plaintext()
    for i, chunk in enumerate(chunks):
        _encode(tools, chunk, plain)
        if seeded:
            blob = sealio.to_bytes(encryptor.encrypt_symmetric(plain))
        else:
            ct = sealapi.Ciphertext()
            encryptor.encrypt(plain, ct)
            blob = sealio.to_bytes(ct)
        yield _frame(ctx.context_id, i, blob)


def _parse_frame(ctx: PublicContext, tools: _Seal, index: int, data: bytes) -> sealapi.Ciphertext:
    framed_index, blob = _unframe(data, ctx.context_id, ctx.params)
    if framed_index != index:
        raise UpdateRejected(
            f"HE ciphertext frame says index {framed_index}, received as {index}", code=Reason.BAD_INDEX
        )
    return _load_ciphertext(tools, blob)


class StreamRejected(UpdateRejected):
    """One of the streams given to :func:`sum_streams` is bad; ``stream`` says which."""

    def __init__(self, stream: int, cause: UpdateRejected) -> None:
        super().__init__(str(cause), code=cause.code)
        self.stream = stream


def sum_streams(
    ctx: PublicContext, streams: Sequence[Iterator[bytes]], n_ciphertexts: int
) -> Iterator[bytes]:
    """Frames of the sum of ``streams``, index-major: ciphertext 0 of every stream, then 1, and so on.

    Why not :class:`CiphertextAccumulator` when every stream is already spooled: a running sum for
    every index costs one whole sum stream of memory (SEAL keeps both halves in 64-bit words, about
    2.7x a seeded upload); reading the streams in lockstep needs one ciphertext. Raises
    :class:`StreamRejected` (naming the stream) on a bad, short or long stream; frames already
    yielded must then be discarded by the caller.
    """
    if not isinstance(ctx, PublicContext):
        raise ConfigError("summing takes a PublicContext: the aggregator never holds a secret key")
    if not streams:
        raise ConfigError("nothing to sum: no streams")
    tools = _seal(ctx)
    for index in range(n_ciphertexts):
        total: sealapi.Ciphertext | None = None
        for k, stream in enumerate(streams):
            try:
                data = next(stream, None)
                if data is None:
                    raise UpdateRejected(
                        f"HE stream is incomplete: {index} of {n_ciphertexts} ciphertexts",
                        code=Reason.INCOMPLETE,
                    )
                ct = _parse_frame(ctx, tools, index, data)
            except UpdateRejected as exc:
                raise StreamRejected(k, exc) from exc
            if total is None:
                total = ct
            else:
                tools.evaluator.add_inplace(total, ct)
        assert total is not None
        yield _frame(ctx.context_id, index, sealio.to_bytes(total))
    for k, stream in enumerate(streams):
        try:
            extra = next(stream, None)
        except UpdateRejected as exc:
            raise StreamRejected(k, exc) from exc
        if extra is not None:
            raise StreamRejected(
                k,
                UpdateRejected(
                    f"HE stream has more than the expected {n_ciphertexts} ciphertexts", Reason.BAD_LENGTH
                ),
            )


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
        self._seal = _seal(ctx)
        self._n = n_ciphertexts
        self._sums: list[sealapi.Ciphertext | None] = [None] * n_ciphertexts
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
            raise UpdateRejected(
                f"HE ciphertext index {index!r} is outside 0..{self._n - 1}", Reason.BAD_INDEX
            )
        ct = _parse_frame(self._ctx, self._seal, index, data)
        with self._lock:
            current = self._sums[index]
            if current is None:
                self._sums[index] = ct
            else:
                self._seal.evaluator.add_inplace(current, ct)
            self._counts[index] += 1

    def merge(self, other: CiphertextAccumulator) -> None:
        """Add a complete staged stream (another accumulator under the same context) into this one.

        ``other`` is consumed (emptied): its sums are moved, not copied.
        """
        if other is self:
            raise ConfigError("cannot merge an HE accumulator into itself")
        if other._ctx.context_id != self._ctx.context_id or other._n != self._n:
            raise UpdateRejected(
                "cannot merge HE sums of another context or length", code=Reason.WRONG_CONTEXT
            )
        if other.contributions == 0:
            raise UpdateRejected(
                f"HE stream is incomplete: {sum(1 for c in other._counts if c == 0)} of {other._n} "
                "ciphertexts missing or counts uneven",
                code=Reason.INCOMPLETE,
            )
        with self._lock, other._lock:
            for i, ct in enumerate(other._sums):
                assert ct is not None
                current = self._sums[i]
                if current is None:
                    self._sums[i] = ct
                else:
                    self._seal.evaluator.add_inplace(current, ct)
                self._counts[i] += other._counts[i]
            other._sums = [None] * other._n
            other._counts = [0] * other._n

    def result(self) -> Iterator[bytes]:
        """Frames of the summed stream, in order; refuses if any index got a different number of addends."""
        if self.contributions == 0:
            raise UpdateRejected(
                f"HE sum is incomplete: counts {min(self._counts)}..{max(self._counts)}",
                code=Reason.INCOMPLETE,
            )
        return self._result_frames()

    def _result_frames(self) -> Iterator[bytes]:
        for i, ct in enumerate(self._sums):
            assert ct is not None
            yield _frame(self._ctx.context_id, i, sealio.to_bytes(ct))


def decrypt_vector(ctx: SecretContext, ciphertexts: Iterable[bytes], length: int) -> np.ndarray:
    """Decrypt a summed stream back to ``length`` float64 values; refuses a short, long or foreign one."""
    out = np.empty(length, dtype=np.float64)
    for start, vals in decrypt_windows(ctx, ciphertexts, length):
        out[start : start + vals.size] = vals
    return out


def decrypt_windows(
    ctx: SecretContext, ciphertexts: Iterable[bytes], length: int
) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`decrypt_vector` a ciphertext at a time: ``(start, values)`` windows of the ``length``
    float64 values, one per ciphertext (the last one cut to ``length``), so a site steps its model on
    the decrypted average without the whole of it in memory. Refuses what :func:`decrypt_vector`
    refuses, when it reaches it: a long or reordered stream at the frame at fault, a short one after
    its last frame (the caller must discard what it made of a refused stream)."""
    params = ctx.params
    tools = _seal(ctx)
    decryptor = tools.decryptor
    assert decryptor is not None
    expected = n_ciphertexts(length, params)
    per = params.values_per_ciphertext
    return _decrypted(ctx, tools, decryptor, ciphertexts, length, expected, per)


def _decrypted(
    ctx: SecretContext,
    tools: _Seal,
    decryptor: sealapi.Decryptor,
    ciphertexts: Iterable[bytes],
    length: int,
    expected: int,
    per: int,
) -> Iterator[tuple[int, np.ndarray]]:
    plain = sealapi.Plaintext()
    received = 0
    for data in ciphertexts:
        if received >= expected:
            raise UpdateRejected(
                f"HE result has more than the expected {expected} ciphertexts", Reason.BAD_LENGTH
            )
        index, blob = _unframe(data, ctx.context_id, ctx.params)
        if index != received:
            raise UpdateRejected(
                f"HE result ciphertext {received} arrived as index {index}", Reason.BAD_INDEX
            )
        decryptor.decrypt(_load_ciphertext(tools, blob), plain)
        slots = np.array(tools.encoder.decode_complex(plain), dtype=np.complex128)
        start = received * per
        yield start, slots.view(np.float64)[: min(per, length - start)]
        received += 1
    if received != expected:
        raise UpdateRejected(
            f"HE result is truncated: {received} of {expected} ciphertexts", Reason.BAD_LENGTH
        )

"""Mode protection of a site's pre-weighted update: what leaves the site, as a byte stream.

``plain`` is safetensors of the weighted update (baselines only, and only where the policy allows
it); ``he`` is the framed CKKS ciphertext stream of one flat slot vector. A ``distributed_gaussian``
share goes to the ``tee`` enclave as a safetensors bundle of its residues mod 2^32
(:func:`protect_share`), never as floats, so the enclave adds exactly what ``mask`` would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from secagg.bundle import BundleSpec, bundle_header
from secagg.errors import UpdateRejected
from secagg.framing import frame
from secagg.reasons import Reason

#: values per piece of a streamed plaintext bundle (4 MiB of float32)
PIECE_VALUES = 1 << 20


def plain_size(spec: BundleSpec) -> int:
    """Bytes of :func:`protect_plain`'s stream (header, then 4 bytes a value)."""
    return len(bundle_header(spec)) + 4 * spec.size


def protect_plain(spec: BundleSpec, weighted: np.ndarray) -> Iterator[bytes]:
    """The float32 safetensors bundle of ``weighted`` (bundle order), a 4 MiB piece at a time: no
    float32 copy of the model and no serialised bundle are ever whole in memory."""
    if weighted.shape != (spec.size,):
        raise UpdateRejected(
            f"flat vector has {weighted.size} values, spec has {spec.size}", code=Reason.BAD_SHAPE
        )
    windows = ((s, weighted[s : s + PIECE_VALUES]) for s in range(0, spec.size, PIECE_VALUES))
    return protect_plain_windows(spec, windows)


def protect_plain_windows(spec: BundleSpec, windows: Iterable[tuple[int, np.ndarray]]) -> Iterator[bytes]:
    """:func:`protect_plain` of the vector whose ``(start, values)`` windows come in order: the same
    bytes, with no more of the vector in memory than one window."""
    yield bundle_header(spec)
    pos = 0
    for start, vals in windows:
        if start != pos:
            raise UpdateRejected(f"window at {start}, expected {pos}", code=Reason.BAD_SHAPE)
        for off in range(0, vals.size, PIECE_VALUES):
            yield np.ascontiguousarray(vals[off : off + PIECE_VALUES], dtype="<f4").tobytes()
        pos += vals.size
    if pos != spec.size:
        raise UpdateRejected(f"flat vector has {pos} values, spec has {spec.size}", code=Reason.BAD_SHAPE)


def share_size(spec: BundleSpec, frac_bits: int) -> int:
    """Bytes of :func:`protect_share`'s stream (header, then 4 bytes a residue)."""
    from secagg.privacy.shares import SHARE_DTYPE, share_metadata

    return len(bundle_header(spec, SHARE_DTYPE, share_metadata(frac_bits))) + 4 * spec.size


def protect_share(spec: BundleSpec, integers: np.ndarray, frac_bits: int) -> Iterator[bytes]:
    """The ``U32`` safetensors bundle of a distributed-DP share's residues mod 2^32 (bundle order), its
    fixed point in the metadata, a 4 MiB piece at a time."""
    from secagg.privacy.shares import SHARE_DTYPE, residues, share_metadata

    if integers.shape != (spec.size,):
        raise UpdateRejected(
            f"integer share has {integers.size} values, spec has {spec.size}", code=Reason.BAD_SHAPE
        )
    yield bundle_header(spec, SHARE_DTYPE, share_metadata(frac_bits))
    for start in range(0, spec.size, PIECE_VALUES):
        yield residues(integers[start : start + PIECE_VALUES]).astype("<u4", copy=False).tobytes()


def protect_he(secret_ctx: object, weighted: np.ndarray) -> Iterator[bytes]:
    from secagg.he.codec import encrypt_vector

    yield from frame(encrypt_vector(secret_ctx, weighted, 1.0))  # type: ignore[arg-type]


def protect_he_windows(
    secret_ctx: object, windows: Iterable[tuple[int, np.ndarray]], size: int
) -> Iterator[bytes]:
    """:func:`protect_he` of the weighted vector whose ``(start, values)`` windows come in order: the
    same frames (:func:`secagg.he.codec.encrypt_windows`), with one window of the vector in memory."""
    from secagg.he.codec import encrypt_windows

    yield from frame(encrypt_windows(secret_ctx, windows, size, 1.0))  # type: ignore[arg-type]

"""Fixed-point encoding of real vectors into Z_2^32, where additive masks are uniform and cancel.

Values are clipped to [-clip, clip] (the job states the range, so clipping is policy, not error),
scaled by 2^frac_bits, rounded to nearest and stored in two's complement. The sum of n such values
is exact as long as n * clip * 2^frac_bits fits in a signed 32-bit integer (checked, never wrapped).
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError, UpdateRejected
from secagg.mask.config import SUM_LIMIT
from secagg.reasons import Reason

#: elements per step of :func:`quantize`, so its temporaries stay in cache
_CHUNK = 1 << 16


def _check_headroom(n: int, bound: float, frac_bits: int) -> None:
    if n < 1:
        raise ConfigError(f"number of summed sites must be >= 1, got {n}")
    if n * bound * 2**frac_bits > SUM_LIMIT:
        raise ConfigError(
            f"sum headroom exceeded: {n} sites * {bound} * 2^{frac_bits} does not fit in signed 32-bit"
        )


def quantize(vec: np.ndarray, clip: float, frac_bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Clip, scale, round to nearest; return uint32 (two's complement). Non-finite values are refused.

    Written into ``out`` (a uint32 vector of the same length) when given; if the update is refused,
    ``out`` may hold part of it. Works a cache-sized piece at a time with no full-length temporaries
    (float32 input is widened to float64 piece by piece, so it needs no float64 copy).
    """
    x = np.asarray(vec)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    x = x.ravel()
    _check_headroom(1, clip, frac_bits)
    if out is None:
        out = np.empty(x.size, dtype=np.uint32)
    elif out.shape != (x.size,) or out.dtype != np.uint32:
        raise ValueError(f"out must be a uint32 vector of {x.size} elements, got {out.dtype} {out.shape}")
    # |rint(v * 2^f)| <= clip * 2^f <= SUM_LIMIT (checked above), so it fits in int32, and int32 read
    # as uint32 is the value mod 2^32
    as_int = out.view(np.int32)
    lo, hi, scale = -float(clip), float(clip), float(2**frac_bits)
    step = min(x.size, _CHUNK)
    tmp = np.empty(step, dtype=np.float64)
    finite = np.empty(step, dtype=bool)
    for start in range(0, x.size, _CHUNK):
        n = min(_CHUNK, x.size - start)
        part, t = x[start : start + n], tmp[:n]
        if not np.isfinite(part, out=finite[:n]).all():
            raise UpdateRejected("update contains NaN or infinite values", code=Reason.NON_FINITE)
        if part.dtype != np.float64:
            np.copyto(t, part)  # widen first: clipping float32 against a float64 bound could round it
            part = t
        np.clip(part, lo, hi, out=t)
        np.multiply(t, scale, out=t)
        np.rint(t, out=t)
        np.copyto(as_int[start : start + n], t, casting="unsafe")
    return out


def dequantize(sum_u32: np.ndarray, n: int, clip: float, frac_bits: int) -> np.ndarray:
    """Read a sum of ``n`` quantised vectors back as float64 (refuses an ``n`` that could have wrapped)."""
    _check_headroom(n, clip, frac_bits)
    s = np.asarray(sum_u32, dtype=np.uint32)
    out = s.view(np.int32).astype(np.float64)
    out /= float(2**frac_bits)
    return out


def quantisation_bound(n_sites: int, frac_bits: int) -> float:
    """Worst-case absolute error per element of a sum of ``n_sites`` in-range values: each site's
    round-to-nearest is off by at most half a step, 2^-(frac_bits + 1)."""
    return n_sites * 2.0 ** -(frac_bits + 1)

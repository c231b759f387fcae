"""Fixed-point encoding of real vectors into Z_2^32, where additive masks are uniform and cancel.

Values are clipped to [-clip, clip] (the job states the range, so clipping is policy, not error),
scaled by 2^frac_bits, rounded to nearest and stored in two's complement. The sum of n such values
is exact as long as n * clip * 2^frac_bits fits in a signed 32-bit integer (checked, never wrapped).
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError, UpdateRejected
from secagg.mask.config import SUM_LIMIT

_MOD = 2**32


def _check_headroom(n: int, bound: float, frac_bits: int) -> None:
    if n < 1:
        raise ConfigError(f"number of summed sites must be >= 1, got {n}")
    if n * bound * 2**frac_bits > SUM_LIMIT:
        raise ConfigError(
            f"sum headroom exceeded: {n} sites * {bound} * 2^{frac_bits} does not fit in signed 32-bit"
        )


def quantize(vec: np.ndarray, clip: float, frac_bits: int) -> np.ndarray:
    """Clip, scale, round to nearest; return uint32 (two's complement). Non-finite values are refused."""
    x = np.asarray(vec, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise UpdateRejected("update contains NaN or infinite values", code="non_finite")
    _check_headroom(1, clip, frac_bits)
    q = np.rint(np.clip(x, -clip, clip) * float(2**frac_bits)).astype(np.int64)
    return np.mod(q, _MOD).astype(np.uint32)


def dequantize(sum_u32: np.ndarray, n: int, clip: float, frac_bits: int) -> np.ndarray:
    """Read a sum of ``n`` quantised vectors back as float64 (refuses an ``n`` that could have wrapped)."""
    _check_headroom(n, clip, frac_bits)
    s = np.asarray(sum_u32, dtype=np.uint32)
    return s.view(np.int32).astype(np.float64) / float(2**frac_bits)


def quantisation_bound(n_sites: int, frac_bits: int) -> float:
    """Worst-case absolute error per element of a sum of ``n_sites`` in-range values: each site's
    round-to-nearest is off by at most half a step, 2^-(frac_bits + 1)."""
    return n_sites * 2.0 ** -(frac_bits + 1)

"""The integer shares of ``distributed_gaussian`` as every mode sums them: residues in Z_2^32.

One site's share (:func:`secagg.privacy.distributed.encode`) is an int64 vector in units of
``2^-frac_bits``. Every mode that sums shares does it the same way, so the released sum is the same
function of the shares whichever mode ran the round: each share is reduced mod 2^32 as it is
(:func:`residues`; never clipped, since clipping a noised entry would change the honest sum's noise),
the residues are added with uint32 wrap-around, and the total is read back as signed 32-bit
(:func:`read_sum`). The reduction is post-processing of the exact integer sum, so it costs no
privacy; it changes the result only if the sum leaves the signed range, which a site refuses to risk
above :data:`secagg.privacy.distributed.MAX_OVERFLOW` a round. ``mask`` and ``tee-mask`` add the
residues under their masks (:meth:`secagg.mask.client.MaskClient.masked_input`); ``tee`` seals them
to the enclave as a safetensors bundle of ``U32`` tensors named by :func:`share_metadata`, and the
enclave adds them window by window (:mod:`secagg.aggregator.modes.tee`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from secagg.errors import UpdateRejected
from secagg.privacy.distributed import MECHANISM
from secagg.reasons import Reason

#: safetensors metadata of a sealed share: which mechanism, and the fixed point it is in
SHARE_KEY = "secagg.share"
FRAC_BITS_KEY = "secagg.share.frac_bits"
#: the safetensors dtype of a share's residues
SHARE_DTYPE = "U32"
_MAX_FRAC_BITS = 30


def residues(integers: npt.ArrayLike) -> npt.NDArray[np.uint32]:
    """The share mod 2^32 (two's complement): the sum of residues is the integer sum mod 2^32."""
    return (np.asarray(integers, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)


def read_sum(total: npt.NDArray[np.uint32], frac_bits: int) -> npt.NDArray[np.float64]:
    """A wrapped sum of residues read as signed 32-bit, in real units (times ``2^-frac_bits``)."""
    out = np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64)
    out *= 2.0**-frac_bits
    return out


def share_metadata(frac_bits: int) -> dict[str, str]:
    """What a share's bundle says of itself (sealed with it, so the host cannot relabel it)."""
    return {SHARE_KEY: MECHANISM, FRAC_BITS_KEY: str(int(frac_bits))}


def share_frac_bits(meta: Mapping[str, str]) -> int | None:
    """The fixed point of a share's bundle from its metadata, None for an ordinary (float) update;
    refuses (``malformed``) a bundle that claims to be a share of another kind or fixed point."""
    kind = meta.get(SHARE_KEY)
    if kind is None:
        if FRAC_BITS_KEY in meta:
            raise UpdateRejected("a fixed point without a share", code=Reason.MALFORMED)
        return None
    if kind != MECHANISM:
        raise UpdateRejected(f"an integer share of unknown kind {kind!r}", code=Reason.MALFORMED)
    raw = meta.get(FRAC_BITS_KEY, "")
    if not (raw.isascii() and raw.isdigit() and int(raw) <= _MAX_FRAC_BITS):
        raise UpdateRejected(f"an integer share with fixed point {raw!r}", code=Reason.MALFORMED)
    return int(raw)


__all__ = [
    "FRAC_BITS_KEY",
    "SHARE_DTYPE",
    "SHARE_KEY",
    "read_sum",
    "residues",
    "share_frac_bits",
    "share_metadata",
]

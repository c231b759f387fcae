"""What a job's ``mask:`` section means for a round, and how protocol messages ride the relay.

Shared by the aggregator and the site agent so both derive the same parameters from the same job.
"""

from __future__ import annotations

import base64
import json
import math

from secagg.errors import UpdateRejected
from secagg.jobs.spec import MaskSpec
from secagg.mask.config import MaskConfig, recommended_neighbours, recommended_threshold
from secagg.reasons import Reason


def mask_config(spec: MaskSpec | None, n_sites: int) -> MaskConfig:
    """The job's masking parameters for ``n_sites``, with the finest fixed point the sum's headroom
    allows: n * max(clip, 1) * 2^f must stay below 2^31."""
    clip = spec.clip if spec is not None else 1.0
    frac_bits = int(math.floor(math.log2((2**31 - 1) / (n_sites * max(clip, 1.0)))))
    k = recommended_neighbours(n_sites)
    if spec is not None and spec.neighbours is not None:
        k = spec.neighbours
    k = min(k, n_sites - 1)
    t = spec.threshold if spec is not None else recommended_threshold(k)
    cfg = MaskConfig(threshold=t, neighbours=k, clip=clip, frac_bits=min(frac_bits, 30))
    cfg.check_sites(n_sites)
    return cfg


def pack(messages: list[bytes]) -> bytes:
    return json.dumps([base64.b64encode(m).decode() for m in messages]).encode()


def unpack(data: bytes) -> list[bytes]:
    try:
        items = json.loads(data)
        if not isinstance(items, list):
            raise ValueError("not a list")
        return [base64.b64decode(x, validate=True) for x in items]
    except (ValueError, TypeError) as exc:
        raise UpdateRejected(f"malformed message list: {exc}", code=Reason.MALFORMED) from None

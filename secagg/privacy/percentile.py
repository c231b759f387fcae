"""Partial sharing: send only the largest-magnitude entries (Shokri and Shmatikov, CCS 2015).

This limits what leaves the site but is not differential privacy, so it spends nothing. The parameter is
the share kept, ``percent`` (top p percent of all entries by |value|, across the whole update);
NVFlare's ``PercentilePrivacy(percentile=P)`` keeps the entries above the P-th percentile, i.e.
``percent = 100 - P``. Exactly ``ceil(n * percent / 100)`` entries are shared (ties broken arbitrarily,
so the count never drifts with repeated values); the rest travel as zeros in the same shapes, so HE and
mask packing see the same layout. With ``gamma`` set, shared values are clipped to ``[-gamma, gamma]``.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError
from secagg.privacy.spend import Spend, Update, as_update, flatten, share_count, unflatten


def percentile(
    update: Update, rng: np.random.Generator, *, percent: float, gamma: float | None = None
) -> tuple[Update, Spend | None]:
    """Keep the top ``percent`` percent of entries by magnitude, optionally clipped; zero the rest."""
    del rng  # deterministic; the signature is the filter signature
    if not 0 < percent <= 100:
        raise ConfigError(f"percentile: percent must be in (0, 100], got {percent}")
    if gamma is not None and not gamma > 0:
        raise ConfigError(f"percentile: gamma must be > 0, got {gamma}")
    upd = as_update(update)
    x = flatten(upd)
    k = share_count(x.size, percent / 100.0)
    out = np.zeros_like(x)
    if k:
        keep = np.argpartition(np.abs(x), x.size - k)[x.size - k :]
        vals = x[keep]
        out[keep] = vals if gamma is None else np.clip(vals, -gamma, gamma)
    return unflatten(out, upd), None

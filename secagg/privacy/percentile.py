"""Partial sharing: send only the largest-magnitude entries (Shokri and Shmatikov, CCS 2015).

This limits what leaves the site but is not differential privacy, so it spends nothing. The parameter is
the share kept, ``percentile``: the top p percent of all entries by |value|, across the whole update, as
in the job and policy vocabulary (:mod:`secagg.jobs.filters`). NVFlare's
``PercentilePrivacy(percentile=P)`` names the other end (keep the entries above the P-th percentile), so
it translates to ``100 - P`` (:meth:`secagg.privacy.specs.PercentileSpec.from_nvflare`).

Exactly ``ceil(n * percentile / 100)`` entries are shared (ties broken arbitrarily, so the count never
drifts with repeated values); the rest travel as zeros in the same shapes, so HE and mask packing see the
same layout. With ``gamma`` set, shared values are clipped to ``[-gamma, gamma]``.

Memory: this filter needs the **whole update at once**. The top ``k`` entries are chosen across every
tensor together (one ``argpartition`` over the flat update), so it holds the flat update, its
magnitudes and the output, about three float64 copies of the model, at the site. It does not work per
tensor or per window (a per-window top-k would keep a different set); a streamed version would need a
threshold search over several passes and is not built. Sites with very large models should prefer
``gaussian`` or ``exclude``, or budget the memory.
"""

from __future__ import annotations

import numpy as np

from secagg.errors import ConfigError
from secagg.privacy.spend import Spend, Update, as_update, flatten, share_count, unflatten


def percentile(
    update: Update, rng: np.random.Generator, *, percentile: float, gamma: float | None = None
) -> tuple[Update, Spend | None]:
    """Keep the top ``percentile`` percent of entries by magnitude, optionally clipped; zero the rest."""
    del rng  # deterministic; the signature is the filter signature
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile: percentile must be in (0, 100], got {percentile}")
    if gamma is not None and not gamma > 0:
        raise ConfigError(f"percentile: gamma must be > 0, got {gamma}")
    upd = as_update(update)
    x = flatten(upd)
    k = share_count(x.size, percentile / 100.0)
    out = np.zeros_like(x)
    if k:
        keep = np.argpartition(np.abs(x), x.size - k)[x.size - k :]
        vals = x[keep]
        out[keep] = vals if gamma is None else np.clip(vals, -gamma, gamma)
    return unflatten(out, upd), None

"""The site's ``distributed_gaussian`` share, as every mode that sums shares sends it (mask, tee-mask, tee).

The filter chain already turned the update into the site's noised integer share times
``2^-frac_bits``, and the agent multiplied it by the roster's weight. A mode that sums shares must
send the integers themselves, unweighted: a sample-count weight would scale each site's share, and
its noise, by its own weight, so the sum would no longer be the Skellam sum the ledger charged.
Distributed DP therefore averages uniformly over the sites whose shares were summed. Before anything
leaves, the site refuses a round whose 32-bit sum could wrap (the sum is formed mod 2^32 in every
mode: :mod:`secagg.privacy.shares`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secagg.agent.modes.base import ModeContext, Outgoing
from secagg.errors import ConfigError
from secagg.jobs.filters import DistributedGaussianFilter


@dataclass(frozen=True)
class IntegerShare:
    """One site's share for one round: int64 values in units of ``2^-frac_bits``."""

    integers: np.ndarray
    frac_bits: int
    filter: DistributedGaussianFilter


def integer_share(ctx: ModeContext, out: Outgoing) -> IntegerShare | None:
    """The share to send in place of the weighted update, or None when the job has no
    ``distributed_gaussian`` filter (the chain admission built under this site's policy)."""
    from secagg.policy.decide import distributed_filter
    from secagg.privacy.distributed import MAX_OVERFLOW, integers_of, overflow_probability

    f = distributed_filter(ctx.load_policy(), out.spec)
    if f is None:
        return None
    p = overflow_probability(
        len(out.sites), f.min_honest_sites, f.noise_multiplier, f.clip, f.frac_bits, out.weighted.size
    )
    if p > MAX_OVERFLOW:
        raise ConfigError(f"distributed_gaussian: the 32-bit sum could wrap (probability {p:.2g} a round)")
    # the filters already loaded this update whole (distributed_gaussian needs it: privacy/streamed.py)
    return IntegerShare(integers_of(out.weighted.array(), out.weight, f.frac_bits), f.frac_bits, f)


__all__ = ["IntegerShare", "integer_share"]

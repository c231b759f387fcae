"""The arithmetic of a round's roster that both sides must agree on, bit for bit.

The aggregator announces weights and every site recomputes them (:mod:`secagg.agent.consistency`),
so both use these functions on the same signed counts. Pure: no I/O, no keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: the largest sample count a site may declare: far above any real data set, and small enough that the
#: sum over any number of sites stays an exact integer in a float64 (2**53)
MAX_SAMPLES = 10**12


class BadSampleCount(ValueError):
    """A sample count that is not an integer in 1..MAX_SAMPLES."""


def sample_count(value: Any) -> int:
    """Parse a declared sample count: an integer (not a bool, not a float) in 1..MAX_SAMPLES.

    A float count of 1e308 would overflow the total and turn every weight into zero or NaN."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadSampleCount(f"sample count must be an integer, got {type(value).__name__}")
    if not 1 <= value <= MAX_SAMPLES:
        raise BadSampleCount(f"sample count must be between 1 and {MAX_SAMPLES}, got {value}")
    return value


def expected_weights(signed: Mapping[str, Mapping[str, Any]], sites: Iterable[str]) -> dict[str, float]:
    """Each site's share of the round: its signed sample count over the sum of the roster's counts.

    Summed in sorted order over exact integers, so every site and the aggregator get the same floats."""
    counts = {s: sample_count(signed[s].get("n_samples")) for s in sorted(sites)}
    total = sum(counts.values())
    return {s: n / total for s, n in counts.items()}


__all__ = ["MAX_SAMPLES", "BadSampleCount", "expected_weights", "sample_count"]

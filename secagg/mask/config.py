"""Round parameters and the public SecAgg+ neighbourhood graph.

Bell et al. (CCS 2020) replace Bonawitz's complete graph with a random k-regular graph, k = O(log n):
a site exchanges keys, shares and pairwise masks only with its k neighbours, so its cost grows with
log n. The graph must be public and fixed before the round (a function of the site list, job and
round only) so that the aggregator cannot shape neighbourhoods to isolate a site.

Each site Shamir-shares its secrets among its neighbours *and itself* (k + 1 holders), threshold t.
We require 2t > k + 1: then no two disjoint sets of t holders exist, so an aggregator that tells one
group "site j survived" and another "site j dropped" can never collect both t self-mask shares and t
mask-key shares of the same site.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass

from secagg.errors import ConfigError, PolicyRefusal
from secagg.mask import wire
from secagg.reasons import Reason

#: the summed quantised values live in signed 32-bit two's complement: |sum| must stay below this
SUM_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class MaskConfig:
    """What the job states for masking; validated on construction and again per site count."""

    threshold: int
    neighbours: int
    clip: float
    frac_bits: int
    #: the largest sample weight a site may reveal (the weight rides as one more masked element)
    max_weight: float = 1.0

    def __post_init__(self) -> None:
        errors = []
        if not isinstance(self.threshold, int) or self.threshold < 2:
            errors.append(f"threshold must be an integer >= 2, got {self.threshold!r}")
        if not isinstance(self.neighbours, int) or self.neighbours < 1:
            errors.append(f"neighbours must be an integer >= 1, got {self.neighbours!r}")
        if not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits <= 30:
            errors.append(f"frac_bits must be an integer in [0, 30], got {self.frac_bits!r}")
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            errors.append(f"clip must be a finite number > 0, got {self.clip!r}")
        mw = self.max_weight
        if not (isinstance(mw, int | float) and math.isfinite(mw) and mw > 0):
            errors.append(f"max_weight must be a finite number > 0, got {mw!r}")
        if errors:
            raise ConfigError("mask config: " + "; ".join(errors))

    @classmethod
    def recommended(cls, n_sites: int, clip: float, frac_bits: int, max_weight: float = 1.0) -> MaskConfig:
        """k = O(log n) neighbours and the smallest safe threshold for ``n_sites`` sites."""
        k = recommended_neighbours(n_sites)
        _, hi = degree_range(n_sites, k)
        cfg = cls(recommended_threshold(hi), k, clip, frac_bits, max_weight)
        cfg.check_sites(n_sites)
        return cfg

    def effective_neighbours(self, n_sites: int) -> int:
        """k as used for ``n_sites``: a neighbourhood cannot be larger than everyone else."""
        return min(self.neighbours, n_sites - 1)

    def check_sites(self, n_sites: int) -> None:
        """Refuse parameters that cannot work, or cannot be safe, for ``n_sites`` sites."""
        if n_sites < 2:
            raise ConfigError(f"mask mode needs at least 2 sites, got {n_sites}")
        lo, hi = degree_range(n_sites, self.effective_neighbours(n_sites))
        if self.threshold > lo + 1:
            raise ConfigError(
                f"threshold {self.threshold} exceeds the {lo + 1} share holders of a site "
                f"({lo} neighbours + the site itself): its secrets could never be recovered"
            )
        if 2 * self.threshold <= hi + 1:
            raise ConfigError(
                f"threshold {self.threshold} is not a strict majority of the up to {hi + 1} share holders "
                f"of a site ({hi} neighbours + the site itself): an aggregator could obtain both the "
                f"self-mask and the mask-key shares of one site; use threshold >= {(hi + 1) // 2 + 1}"
            )
        top = max(self.clip, self.max_weight) * 2**self.frac_bits * n_sites
        if top > SUM_LIMIT:
            fit = math.floor(math.log2(SUM_LIMIT / (max(self.clip, self.max_weight) * n_sites)))
            raise ConfigError(
                f"sum headroom exceeded: {n_sites} sites * max(clip={self.clip}, max_weight="
                f"{self.max_weight}) * 2^{self.frac_bits} = {top:.3g} does not fit in signed 32-bit "
                f"(limit {SUM_LIMIT}); lower frac_bits to at most {fit} or reduce clip/max_weight"
            )


def recommended_neighbours(n_sites: int) -> int:
    """k = O(log n) as in SecAgg+: 3 * ceil(log2 n), capped at everyone else."""
    if n_sites < 2:
        raise ConfigError(f"mask mode needs at least 2 sites, got {n_sites}")
    return min(n_sites - 1, 3 * math.ceil(math.log2(n_sites)))


def recommended_threshold(neighbours: int) -> int:
    """The smallest safe threshold: a strict majority of the k + 1 share holders."""
    return (neighbours + 1) // 2 + 1


def check_threshold(config: MaskConfig, min_threshold: int) -> None:
    """A site policy's floor on t: raise :class:`PolicyRefusal` when the job asks for less."""
    if config.threshold < min_threshold:
        raise PolicyRefusal(
            f"mask threshold {config.threshold} is below the policy minimum {min_threshold}",
            code=Reason.MASK_THRESHOLD,
        )


def graph_seed(job: str, round: int) -> bytes:
    """The public seed of the round's neighbourhood graph: everyone computes the same one."""
    return hashlib.sha256(wire.pack(b"secagg/mask/v1/graph", job, round)).digest()


def neighbourhood(sites: Sequence[str], k: int, seed: bytes) -> dict[str, list[str]]:
    """A random Harary graph: sites on a ring in a seed-keyed pseudo-random order, each joined to the
    k/2 nearest on each side (plus a diameter when k is odd). Symmetric; degree k (one site has k + 1
    when k and n are both odd); complete when k >= n - 1.
    """
    names = list(sites)
    if len(set(names)) != len(names):
        raise ConfigError("site names must be unique")
    n = len(names)
    if k < 1:
        raise ConfigError(f"neighbourhood size must be >= 1, got {k}")
    graph: dict[str, set[str]] = {s: set() for s in names}
    if k >= n - 1:
        for s in names:
            graph[s] = set(names) - {s}
        return {s: sorted(v) for s, v in graph.items()}
    ring = sorted(names, key=lambda s: (hmac.new(seed, s.encode(), hashlib.sha256).digest(), s))

    def join(a: str, b: str) -> None:
        if a != b:
            graph[a].add(b)
            graph[b].add(a)

    for i, s in enumerate(ring):
        for d in range(1, k // 2 + 1):
            join(s, ring[(i + d) % n])
    if k % 2:
        # Harary H(k, n) for odd k: diameters; with n odd one site ends up with degree k + 1
        for i in range(n // 2 if n % 2 == 0 else (n + 1) // 2):
            join(ring[i], ring[(i + n // 2) % n])
    return {s: sorted(v) for s, v in graph.items()}


def degree_range(n_sites: int, k: int) -> tuple[int, int]:
    """Smallest and largest neighbourhood size of :func:`neighbourhood` (independent of the seed)."""
    if k >= n_sites - 1:
        return n_sites - 1, n_sites - 1
    if k % 2 and n_sites % 2:
        return k, k + 1
    return k, k

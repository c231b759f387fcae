"""What distributed DP costs a site per round: the time to draw its noise share for the whole update.

``distributed_gaussian`` (:mod:`secagg.privacy.distributed`) makes each site clip its update, round it
to the fixed point at random until the rounded norm meets the sensitivity bound, and add integer
Skellam noise, ``Poisson(mu_s) - Poisson(mu_s)`` per coordinate from a fresh OS-keyed Philox
generator. Two figures per size, medians over ``repeats``:

* ``noise_s``: :func:`secagg.privacy.sampler.skellam` alone, ``2 d`` Poisson draws at the share's
  ``mu_s`` (``min_honest_sites`` = the mask threshold for ``sites``, as the demo sweep assumes);
* ``filter_s``: the whole filter as the agent runs it on a float32 update (clip, conditional
  rounding, noise, the share back as float32), which is what a round adds to ``mask``'s protect time.

Sampling depends on ``mu_s`` only through numpy's Poisson algorithm (PTRS above mu 10, constant time
per draw), so the figure is the same for any noise multiplier a real policy would set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .clock import Lap, clock, lap

#: the filter's settings measured (cost does not depend on them, see the module docstring)
CLIP, NOISE_MULTIPLIER, FRAC_BITS = 1.0, 1.0, 16


@dataclass(frozen=True)
class SamplingResult:
    params: int
    sites: int
    min_honest_sites: int
    share_mu: float
    repeats: int
    noise_s: float
    noise_cpu_s: float
    filter_s: float
    filter_cpu_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(laps: list[Lap]) -> tuple[float, float]:
    return float(np.median([x.wall for x in laps])), float(np.median([x.cpu for x in laps]))


def measure(params: int, sites: int, repeats: int = 3, seed: int = 0) -> SamplingResult:
    """Time one site's noise share for a ``params``-entry update among ``sites`` sites."""
    from secagg.mask.job import mask_config
    from secagg.privacy.distributed import distributed_gaussian, norm_bound, share_mu
    from secagg.privacy.sampler import skellam

    m = mask_config(None, sites).threshold
    mu = share_mu(NOISE_MULTIPLIER, norm_bound(CLIP, FRAC_BITS, params), m)
    update = {"w": np.random.default_rng(seed).normal(0.0, 0.05, params).astype(np.float32)}
    noise: list[Lap] = []
    whole: list[Lap] = []
    for _ in range(repeats):
        t0 = clock()
        skellam(mu, params)
        noise.append(lap(t0))
        t0 = clock()
        distributed_gaussian(
            update,
            np.random.default_rng(),
            clip=CLIP,
            noise_multiplier=NOISE_MULTIPLIER,
            min_honest_sites=m,
            frac_bits=FRAC_BITS,
        )
        whole.append(lap(t0))
    (n_wall, n_cpu), (f_wall, f_cpu) = _median(noise), _median(whole)
    return SamplingResult(params, sites, m, mu, repeats, n_wall, n_cpu, f_wall, f_cpu)


def markdown(results: list[SamplingResult]) -> str:
    rows = [
        "| params | sites | min_honest_sites | share mu | noise s (cpu) | whole filter s (cpu) |",
        "|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.params:,} | {r.sites} | {r.min_honest_sites} | {r.share_mu:.3g} "
            f"| {r.noise_s:.3f} ({r.noise_cpu_s:.3f}) | {r.filter_s:.3f} ({r.filter_cpu_s:.3f}) |"
        )
    return "\n".join(rows) + "\n"

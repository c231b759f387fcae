"""Distributed DP: each site adds a *share* of integer Skellam noise; only the sum carries the target.

The mechanism is the Skellam mechanism of Agarwal, Kairouz and Liu, "The Skellam Mechanism for
Differentially Private Federated Learning" (NeurIPS 2021), with the conditional randomized rounding of
Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation" (ICML 2021). Per site and round, with ``C`` = ``clip``, ``z`` = ``noise_multiplier``,
``m`` = ``min_honest_sites``, ``f`` = ``frac_bits`` (the mask protocol's fixed point, step 2^-f), and
``d`` the number of entries:

1. clip the whole update to L2 norm ``C`` and scale by ``2^f`` (``c = C 2^f``);
2. round every entry at random (unbiased), and redraw the rounding until the integer vector's L2 norm
   is at most ``D2 = min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)))`` with
   ``beta = exp(-1/2)`` (KLS21, Thm. 1 / Sec. 5: the bound holds with probability >= 1 - beta, so a
   redraw is rare; conditioning makes it a hard bound, the L2 sensitivity). ``D1 = min(D2^2,
   sqrt(d) D2)`` bounds the L1 norm of an integer vector of that L2 norm;
3. add ``Sk(mu_s, mu_s)`` noise per entry with ``2 mu_s = (z D2)^2 / m``: any ``m`` honest shares sum,
   exactly, to ``Sk(mu, mu)`` with ``mu = (z D2)^2 / 2``, variance ``(z D2)^2``: the Gaussian filter's
   noise multiplier ``z`` on the sum, in integer units.

The sum over sites is then ``(alpha, eps(alpha))``-RDP with (AKL21, Thm. 3.5)::

    eps(alpha) = alpha D2^2 / (4 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu))

For ``alpha >= 1`` this is at most ``alpha / (2 z_eff^2)`` with
``1 / (2 z_eff^2) = 1 / (2 z^2) + (D2^2 + 3 D1) / (8 mu^2)``: the RDP curve of a Gaussian mechanism of
noise multiplier ``z_eff`` (slightly below ``z``). The receipt carries ``z_eff``, so the ledger composes
rounds and converts at the budget's delta with the very code it uses for the Gaussian filter (Opacus'
RDP accountant), and never charges less than the Skellam bound.

Modular wrap-around: the mask protocol sums in Z_2^32 and reads the result as signed 32-bit. Reducing
the exact integer sum mod 2^32 is post-processing, so it costs no privacy; it only breaks the result
when ``|sum| >= 2^31``. As in both papers this is a utility event, bounded here per round by
:func:`overflow_probability` (Bernstein's inequality for the Poisson differences, a union bound over
entries, every site adding noise) and refused above :data:`MAX_OVERFLOW` at the site.

Quantisation error: randomized rounding is unbiased; its inflation of the norm is what ``D2`` charges.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from secagg.errors import ConfigError
from secagg.privacy.accounting import rdp_epsilon
from secagg.privacy.sampler import generator, randomized_round, skellam
from secagg.privacy.spend import Spend, Update, as_update, flatten, unflatten

MECHANISM = "distributed_gaussian"
#: the conditional rounding's failure probability before conditioning (KLS21 use exp(-1/2))
BETA = math.exp(-0.5)
#: the signed 32-bit range the mask protocol's sum is read in
SUM_LIMIT = 2**31 - 1
#: the largest per-round probability of a wrapped entry a site accepts
MAX_OVERFLOW = 1e-9
#: entries of the released float update must be exact in float32
_FLOAT32_EXACT = 2**24
_MAX_ROUNDING_TRIES = 1000


def norm_bound(clip: float, frac_bits: int, d: int, beta: float = BETA) -> float:
    """``D2``: the L2 norm bound of the rounded integer vector (KLS21, conditional rounding)."""
    c = clip * 2.0**frac_bits
    sd = math.sqrt(max(d, 0))
    return min(c + sd, math.sqrt(c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + sd / 2.0)))


def l1_bound(d2: float, d: int) -> float:
    """``D1``: an integer vector of L2 norm ``d2`` has L1 norm at most ``min(d2^2, sqrt(d) d2)``."""
    return min(d2 * d2, math.sqrt(max(d, 1)) * d2)


def sum_mu(noise_multiplier: float, d2: float) -> float:
    """``mu`` of the honest sum's ``Sk(mu, mu)``: variance ``2 mu = (z D2)^2``."""
    return (noise_multiplier * d2) ** 2 / 2.0


def share_mu(noise_multiplier: float, d2: float, min_honest_sites: int) -> float:
    """One site's ``mu_s``: ``min_honest_sites`` shares add up to :func:`sum_mu`."""
    return sum_mu(noise_multiplier, d2) / min_honest_sites


def skellam_rdp(alpha: float, d1: float, d2: float, mu: float) -> float:
    """AKL21 Thm. 3.5: the RDP of order ``alpha`` of adding ``Sk(mu, mu)`` to a sum of sensitivity
    ``(d1, d2)``."""
    return alpha * d2 * d2 / (4.0 * mu) + min(
        ((2.0 * alpha - 1.0) * d2 * d2 + 6.0 * d1) / (16.0 * mu * mu), 3.0 * d1 / (4.0 * mu)
    )


def effective_noise_multiplier(noise_multiplier: float, clip: float, frac_bits: int, d: int) -> float:
    """``z_eff``: the Gaussian noise multiplier whose RDP curve dominates the Skellam sum's at every
    ``alpha >= 1`` (see the module docstring); what the ledger composes."""
    d2 = norm_bound(clip, frac_bits, d)
    d1 = l1_bound(d2, d)
    mu = sum_mu(noise_multiplier, d2)
    slope = 1.0 / (2.0 * noise_multiplier**2) + (d2 * d2 + 3.0 * d1) / (8.0 * mu * mu)
    return 1.0 / math.sqrt(2.0 * slope)


def spend(noise_multiplier: float, clip: float, frac_bits: int, d: int, delta: float) -> Spend:
    """The receipt of one round (epsilon for display at ``delta``; the ledger composes ``z_eff``)."""
    z_eff = effective_noise_multiplier(noise_multiplier, clip, frac_bits, d)
    eps = rdp_epsilon([(z_eff, 1.0, 1)], delta)
    return Spend(MECHANISM, eps, delta, noise_multiplier=z_eff, sample_rate=1.0, steps=1)


def overflow_probability(
    n_sites: int, min_honest_sites: int, noise_multiplier: float, clip: float, frac_bits: int, d: int
) -> float:
    """An upper bound on the chance that some entry of the round's sum leaves the signed 32-bit range.

    Every site's entry is at most ``D2`` in size; with all ``n_sites`` adding noise, each entry's noise
    is a difference of Poissons of variance ``V = n (z D2)^2 / m``, and Bernstein's inequality gives
    ``P(|noise| >= t) <= 2 exp(-t^2 / (2 (V + t/3)))`` for ``t = 2^31 - 1 - n D2``; union over ``d``.
    """
    d2 = norm_bound(clip, frac_bits, d)
    t = SUM_LIMIT - n_sites * d2
    if t <= 0:
        return 1.0
    v = n_sites * (noise_multiplier * d2) ** 2 / min_honest_sites
    return min(1.0, d * 2.0 * math.exp(-(t * t) / (2.0 * (v + t / 3.0))))


def encode(
    x: npt.NDArray[np.float64],
    *,
    clip: float,
    noise_multiplier: float,
    min_honest_sites: int,
    frac_bits: int,
    rng: np.random.Generator | None = None,
    noise_seed: int | None = None,
) -> npt.NDArray[np.int64]:
    """Steps 1-3 on a flat vector: the site's integer share (units ``2^-frac_bits``), noise included.

    ``rng`` draws the rounding (a fresh OS-keyed generator when None); the noise always comes from
    :func:`secagg.privacy.sampler.skellam` (``noise_seed`` only in tests).
    """
    d = int(x.size)
    v = np.asarray(x, dtype=np.float64).copy()
    norm = float(np.linalg.norm(v))
    if norm > clip:
        v *= clip / norm
    v *= 2.0**frac_bits
    d2 = norm_bound(clip, frac_bits, d)
    r = rng if rng is not None else generator()
    for _ in range(_MAX_ROUNDING_TRIES):
        k = randomized_round(v, r)
        if float(np.linalg.norm(k.astype(np.float64))) <= d2:
            break
    else:  # pragma: no cover - probability beta^1000
        raise ConfigError("distributed_gaussian: conditional rounding did not meet its norm bound")
    return k + skellam(share_mu(noise_multiplier, d2, min_honest_sites), d, seed=noise_seed)


def _check(clip: float, noise_multiplier: float, min_honest_sites: int, frac_bits: int, delta: float) -> None:
    if not (
        clip > 0
        and math.isfinite(clip)
        and noise_multiplier > 0
        and math.isfinite(noise_multiplier)
        and isinstance(min_honest_sites, int)
        and min_honest_sites >= 1
        and isinstance(frac_bits, int)
        and 0 <= frac_bits <= 30
        and 0 < delta < 1
    ):
        raise ConfigError(
            "distributed_gaussian: need clip > 0, noise_multiplier > 0, min_honest_sites >= 1, "
            "0 <= frac_bits <= 30, 0 < delta < 1"
        )


def distributed_gaussian(
    update: Update,
    rng: np.random.Generator,
    *,
    clip: float,
    noise_multiplier: float,
    min_honest_sites: int,
    frac_bits: int = 16,
    delta: float = 1e-5,
) -> tuple[Update, Spend | None]:
    """The filter: the update becomes this site's noised integer share times ``2^-frac_bits``.

    Every entry is an exact multiple of ``2^-frac_bits`` below 2^24 of them, so float32 holds it
    exactly and the mask mode recovers the integers bit for bit (:func:`integers_of`). ``rng`` (the
    chain's) is not used: rounding and noise come from fresh OS-keyed generators.
    """
    _check(clip, noise_multiplier, min_honest_sites, frac_bits, delta)
    upd = as_update(update)
    x = flatten(upd).astype(np.float64)
    k = encode(
        x,
        clip=clip,
        noise_multiplier=noise_multiplier,
        min_honest_sites=min_honest_sites,
        frac_bits=frac_bits,
    )
    if k.size and int(np.abs(k).max()) >= _FLOAT32_EXACT:
        raise ConfigError(
            "distributed_gaussian: an entry does not fit float32 exactly; lower frac_bits or the noise"
        )
    out = k.astype(np.float64) * 2.0**-frac_bits
    return unflatten(out, upd), spend(noise_multiplier, clip, frac_bits, int(x.size), delta)


def integers_of(weighted: npt.NDArray[np.float32], weight: float, frac_bits: int) -> npt.NDArray[np.int64]:
    """The integer share back from ``flatten(update) * weight`` (how the agent hands it to a mode).

    Refuses (``ConfigError``) unless multiplying the recovered share by ``weight`` again, in the same
    dtype, gives the very same vector, so a rounding slip can never change what is masked.
    """
    w = float(weight)
    if not (math.isfinite(w) and w > 0):
        raise ConfigError(f"distributed_gaussian: cannot recover the share from weight {weight!r}")
    given = np.asarray(weighted)
    if given.dtype not in (np.float32, np.float64):
        raise ConfigError(f"distributed_gaussian: cannot recover the share from {given.dtype} values")
    k = np.rint(given.astype(np.float64) / w * 2.0**frac_bits).astype(np.int64)
    # the agent's product, redone in the agent's dtype (float64 from BundleSpec.flatten): equal bit
    # for bit, or the share was not recovered exactly
    again = (k.astype(np.float64) * 2.0**-frac_bits).astype(given.dtype) * given.dtype.type(w)
    if not np.array_equal(again, given):
        raise ConfigError("distributed_gaussian: the weighted update is not an integer share")
    return k

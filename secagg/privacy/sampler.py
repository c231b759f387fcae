"""Integer noise for distributed DP: symmetric Skellam, ``Poisson(mu) - Poisson(mu)``, drawn exactly.

Why Skellam (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021): the sum of independent ``Sk(mu_i, mu_i)`` is exactly ``Sk(sum mu_i, ...)``,
so the noise of any set of honest sites adds up, in the integers the mask protocol already sums in, to
a known distribution with a known RDP curve. (A sum of discrete Gaussians is only close to one.)

Where the randomness comes from, and why that is enough:

* Every draw gets a fresh generator keyed with 256 bits from ``secrets.token_bytes`` (the OS CSPRNG,
  ``os.urandom``). Nothing of the key is stored, logged or reused across calls.
* The generator is numpy's ``Philox`` (Philox-4x64-10, Salmon et al. SC 2011): a counter-mode keyed
  bijection (a reduced Threefish-like Feistel network). It is not a NIST-vetted cipher, so we do not
  claim its stream is indistinguishable from random to an attacker who sees it. The attacker never
  does: a site's noise is added to its own update and only ever leaves the site inside a masked
  vector (``mask``) or an HPKE-sealed message (``tee``); what is revealed is the sum over sites. The
  DP proof needs the noise to be distributed as Skellam and independent of everything the adversary
  holds; a fresh OS-random key per draw, used for one vector and discarded, gives exactly that
  unless Philox's output could be predicted from nothing, which no known attack approaches.
  (The alternative, a pure-Python Poisson sampler on ``secrets.randbits``, is exact but costs
  seconds per thousand entries at the ``mu ~ 1e9`` the fixed point needs.)
* Poisson variates are integers, produced by numpy's exact samplers (inversion for small ``mu``,
  Hoermann's PTRS transformed rejection otherwise): there is no floating-point noise value whose
  low bits could leak the secret (Mironov, CCS 2012, attacks float Laplace, not integer samplers).

``seed`` exists for tests (distribution checks against the exact pmf); production code never passes it.
"""

from __future__ import annotations

import secrets

import numpy as np
import numpy.typing as npt

#: Poisson parameters above this would make numpy's int64 sampler lose exactness
MAX_MU = 1e15


def generator(seed: int | None = None) -> np.random.Generator:
    """A fresh Philox generator keyed from the OS CSPRNG (``seed`` only in tests)."""
    if seed is None:
        key = int.from_bytes(secrets.token_bytes(16), "little")
        counter = int.from_bytes(secrets.token_bytes(32), "little")
        return np.random.Generator(np.random.Philox(key=key, counter=counter))
    return np.random.Generator(np.random.Philox(seed))


def skellam(mu: float, size: int, *, seed: int | None = None) -> npt.NDArray[np.int64]:
    """``size`` independent ``Sk(mu, mu)`` draws (mean 0, variance ``2 mu``) as int64."""
    if not (np.isfinite(mu) and 0 <= mu <= MAX_MU):
        raise ValueError(f"skellam: mu must be finite in [0, {MAX_MU:g}], got {mu!r}")
    if size < 0:
        raise ValueError(f"skellam: size must be >= 0, got {size}")
    if mu == 0:
        return np.zeros(size, dtype=np.int64)
    rng = generator(seed)
    a = rng.poisson(mu, size).astype(np.int64)
    b = rng.poisson(mu, size).astype(np.int64)
    return a - b


def skellam_pmf(k: npt.ArrayLike, mu: float) -> npt.NDArray[np.float64]:
    """The exact pmf of ``Sk(mu, mu)``: ``exp(-2 mu) I_|k|(2 mu)`` (modified Bessel, scaled form)."""
    from scipy.special import ive

    kk = np.abs(np.asarray(k, dtype=np.float64))
    # ive(v, x) = iv(v, x) exp(-x): stable for large mu
    return np.asarray(ive(kk, 2.0 * mu), dtype=np.float64)


def randomized_round(x: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Round each entry down or up at random, unbiased: ``floor(x) + Bernoulli(x - floor(x))``."""
    lo = np.floor(x)
    up = rng.random(x.shape) < (x - lo)
    return (lo + up).astype(np.int64)

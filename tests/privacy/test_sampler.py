"""The Skellam sampler: its distribution against the exact pmf, and exact integer sums of shares.

Tests seed the generator so a failure reproduces; production draws (no seed) are keyed from os.urandom.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from secagg.privacy.sampler import generator, randomized_round, skellam, skellam_pmf

N = 200_000


def _chi_square_p(draws: np.ndarray, mu: float) -> float:
    """Chi-square goodness of fit against ``Sk(mu, mu)``: bins of one value each over the bulk, the
    two tails pooled (each tail bin holds the exact tail mass), every bin expecting >= 20 draws."""
    sd = np.sqrt(2 * mu)
    lo, hi = int(np.floor(-4 * sd)), int(np.ceil(4 * sd))
    ks = np.arange(lo, hi + 1)
    p = skellam_pmf(ks, mu)
    tail = (1.0 - p.sum()) / 2
    expected = np.concatenate([[tail], p, [tail]]) * draws.size
    observed = np.concatenate(
        [
            [np.sum(draws < lo)],
            np.bincount(draws[(draws >= lo) & (draws <= hi)] - lo, minlength=ks.size),
            [np.sum(draws > hi)],
        ]
    )
    keep = expected >= 20
    # pool the sparse bins into one so no mass is dropped
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 20:
        obs, exp = obs[:-1], exp[:-1]
        exp *= obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)


def test_pmf_is_a_distribution_with_the_right_moments() -> None:
    mu = 7.5
    ks = np.arange(-200, 201)
    p = skellam_pmf(ks, mu)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert (p * ks).sum() == pytest.approx(0.0, abs=1e-12)
    assert (p * ks**2).sum() == pytest.approx(2 * mu, rel=1e-10)


@pytest.mark.parametrize("mu", [0.3, 4.0, 60.0, 5000.0])
def test_draws_match_the_exact_pmf(mu: float) -> None:
    x = skellam(mu, N, seed=1234)
    assert x.dtype == np.int64
    sd = np.sqrt(2 * mu)
    assert abs(x.mean()) < 5 * sd / np.sqrt(N)
    # variance of the sample variance for Sk: (mu4 - sigma^4) / N, with excess kurtosis 1 / (2 mu)
    var = 2 * mu
    assert x.var() == pytest.approx(var, abs=5 * var * np.sqrt((2 + 1 / (2 * mu)) / N))
    assert _chi_square_p(x, mu) > 1e-3


def test_tails_are_no_heavier_than_the_exact_pmf() -> None:
    mu = 10.0
    x = skellam(mu, N, seed=99)
    for t in (8, 12, 16):
        exact = 2 * skellam_pmf(np.arange(t, 400), mu).sum()
        seen = np.mean(np.abs(x) >= t)
        assert seen == pytest.approx(exact, abs=5 * np.sqrt(exact / N) + 1e-5)


def test_shares_sum_exactly_to_the_skellam_of_the_sum() -> None:
    """Three sites' shares of mu / 3 add up, in the integers, to Sk(mu, mu): the exactness the honest
    sum relies on (a sum of rounded Gaussians would not be one)."""
    mu = 30.0
    total = sum(skellam(mu / 3, N, seed=s) for s in (1, 2, 3))
    assert total.dtype == np.int64
    assert _chi_square_p(total, mu) > 1e-3


def test_a_wrong_mu_is_detected() -> None:
    """The chi-square check has power: draws of mu = 4 do not pass for mu = 4.5."""
    assert _chi_square_p(skellam(4.0, N, seed=5), 4.5) < 1e-6


def test_production_draws_are_fresh_each_call() -> None:
    a, b = skellam(1e6, 64), skellam(1e6, 64)
    assert not np.array_equal(a, b)
    assert not np.array_equal(generator().integers(0, 2**62, 8), generator().integers(0, 2**62, 8))


def test_zero_and_bad_mu() -> None:
    assert not skellam(0.0, 5).any()
    with pytest.raises(ValueError):
        skellam(float("nan"), 5)
    with pytest.raises(ValueError):
        skellam(-1.0, 5)


def test_randomized_rounding_is_unbiased() -> None:
    x = np.full(N, 2.3)
    r = randomized_round(x, generator(7))
    assert set(np.unique(r)) == {2, 3}
    assert r.mean() == pytest.approx(2.3, abs=5 * np.sqrt(0.21 / N))

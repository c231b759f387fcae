"""``distributed_gaussian``: the site's integer share, the sum's guarantee, and what the ledger charges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.errors import ConfigError
from secagg.privacy import distributed as D
from secagg.privacy.accounting import compose, rdp_epsilon
from secagg.privacy.ledger import Ledger
from secagg.privacy.specs import (
    DistributedGaussianSpec,
    build_chain,
    parse_specs,
    spend_of,
    stronger_or_equal,
    worst_case_spends,
)

SPEC = {"name": "distributed_gaussian", "clip": 1.0, "noise_multiplier": 1.0, "min_honest_sites": 3}


def test_the_rounded_share_never_exceeds_the_norm_bound() -> None:
    rng = np.random.default_rng(0)
    for d in (1, 10, 500):
        x = rng.normal(size=d)
        x *= 1.0 / np.linalg.norm(x)  # exactly at the clip: the rounding may only push it out
        b = D.norm_bound(1.0, 4, d)
        for _ in range(50):
            k = D.encode(x, clip=1.0, noise_multiplier=1e-9, min_honest_sites=1, frac_bits=4, rng=rng)
            # noise of variance ~1e-18 * b^2 is zero in the integers, so k is the rounded vector
            assert np.linalg.norm(k) <= b


def test_honest_shares_sum_to_the_target_noise_and_the_true_sum() -> None:
    """m sites' shares: the sum is unbiased and its noise variance is (z D2)^2 in integer units."""
    d, m, z, f = 4, 3, 0.5, 3
    xs = [np.array([0.1, -0.2, 0.3, 0.0]) * (i + 1) / 3 for i in range(m)]
    true = sum(x * 2**f for x in xs)
    sums = np.array(
        [
            sum(D.encode(x, clip=1.0, noise_multiplier=z, min_honest_sites=m, frac_bits=f) for x in xs)
            for _ in range(4000)
        ]
    )
    d2 = D.norm_bound(1.0, f, d)
    target = (z * d2) ** 2
    assert sums.dtype == np.int64
    np.testing.assert_allclose(sums.mean(axis=0), true, atol=5 * math.sqrt(target / 4000))
    # the rounding adds at most 1/4 per site to each entry's variance
    var = sums.var(axis=0)
    assert np.all(var > target * 0.9) and np.all(var < (target + m / 4) * 1.1)


def test_effective_multiplier_dominates_the_skellam_rdp_curve() -> None:
    for z, d in ((0.7, 10), (1.0, 1000), (2.0, 100_000)):
        d2 = D.norm_bound(1.0, 16, d)
        d1 = D.l1_bound(d2, d)
        mu = D.sum_mu(z, d2)
        ze = D.effective_noise_multiplier(z, 1.0, 16, d)
        assert ze < z
        for alpha in [1.01, 1.5, 2, 4, 8, 16, 32, 64, 256]:
            assert D.skellam_rdp(alpha, d1, d2, mu) <= alpha / (2 * ze**2)
    # a coarse fixed point: the rounding inflates the sensitivity (c = 1, D2 ~ sqrt(d) / 2), and the
    # noise, scaled to D2, grows with it: the privacy charged stays z's, the utility pays
    assert D.norm_bound(1.0, 0, 10_000) > 50
    assert D.share_mu(1.0, D.norm_bound(1.0, 0, 10_000), 1) > 50**2 / 2


def test_spend_is_the_rdp_of_the_effective_multiplier() -> None:
    s = spend_of(DistributedGaussianSpec.model_validate(SPEC), 1000)
    assert s is not None and s.mechanism == "distributed_gaussian" and s.rdp
    assert s.noise_multiplier == D.effective_noise_multiplier(1.0, 1.0, 16, 1000)
    assert s.epsilon == rdp_epsilon([(s.noise_multiplier, 1.0, 1)], 1e-5)


def test_ledger_composes_rounds_with_the_same_function(tmp_path) -> None:
    rounds = 20
    spends = worst_case_spends([SPEC], 1000, rounds)
    z_eff = D.effective_noise_multiplier(1.0, 1.0, 16, 1000)
    expected = rdp_epsilon([(z_eff, 1.0, 1)] * rounds, 1e-5)
    assert compose(spends, 1e-5).epsilon == expected
    with Ledger(tmp_path / "l.sqlite", "ds", 1e6, 1e-5) as ledger:
        for r in range(rounds):
            ledger.debit("job", r, [spends[r]])
        assert ledger.total()[0] == expected
    # and never less than the Gaussian of the target multiplier itself
    assert expected >= rdp_epsilon([(1.0, 1.0, rounds)], 1e-5)


def test_the_filter_outputs_an_exact_share_the_mask_mode_recovers() -> None:
    (chain,) = build_chain(parse_specs([SPEC]))
    upd = {"w": np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4), "b": np.ones(2, np.float32)}
    out, spend = chain(upd, np.random.default_rng(0))
    assert spend is not None and spend.mechanism == "distributed_gaussian"
    flat = np.concatenate([out["w"].ravel(), out["b"]])
    k = flat.astype(np.float64) * 2**16
    assert np.array_equal(k, np.rint(k))  # integers in units of 2^-16
    for weight in (1.0, 0.37, 1 / 3, 1e-3, 117 / 463):
        # the agent hands the mode BundleSpec.flatten (float64) times the weight; float32 too
        for weighted in (flat.astype(np.float64) * weight, flat * weight):
            assert np.array_equal(D.integers_of(weighted, weight, 16), k.astype(np.int64))


def test_integers_of_refuses_what_is_not_a_share() -> None:
    with pytest.raises(ConfigError):
        D.integers_of(np.array([0.1234567], np.float32) * 0.3, 0.3, 16)
    with pytest.raises(ConfigError):
        D.integers_of(np.array([0.1234567]) * 0.3, 0.3, 16)
    with pytest.raises(ConfigError):
        D.integers_of(np.zeros(3, np.float32), 0.0, 16)


def test_overflow_bound() -> None:
    assert D.overflow_probability(20, 3, 1.0, 1.0, 16, 10**6) < 1e-30
    assert D.overflow_probability(20, 3, 1.0, 1.0, 26, 10**6) == 1.0  # 20 * 2^26 >= 2^31
    assert D.overflow_probability(3, 1, 40.0, 1.0, 24, 100) > D.MAX_OVERFLOW


def test_stronger_or_equal() -> None:
    assert stronger_or_equal({**SPEC, "noise_multiplier": 2.0, "min_honest_sites": 5}, SPEC)
    assert not stronger_or_equal({**SPEC, "noise_multiplier": 0.5}, SPEC)
    assert not stronger_or_equal({**SPEC, "min_honest_sites": 2}, SPEC)
    assert not stronger_or_equal({**SPEC, "clip": 2.0}, SPEC)
    assert not stronger_or_equal({**SPEC, "frac_bits": 12}, SPEC)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigError):
        parse_specs([{**SPEC, "min_honest_sites": 0}])
    with pytest.raises(ConfigError):
        D.distributed_gaussian(
            {"a": np.ones(2, np.float32)},
            np.random.default_rng(),
            clip=1.0,
            noise_multiplier=1.0,
            min_honest_sites=0,
        )

"""Each filter's output statistics on large samples, and what it reports spending."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.errors import ConfigError, UpdateRejected
from secagg.privacy import (
    Spend,
    exclude,
    gaussian,
    percentile,
    rdp_epsilon,
    svt,
    svt_epsilon,
)
from secagg.privacy.spend import share_count


def _update(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "conv.weight": (rng.normal(size=(64, 3, 5, 5)) * scale).astype(np.float32),
        "conv.bias": (rng.normal(size=(64,)) * scale).astype(np.float32),
        "fc.weight": (rng.normal(size=(100, 400)) * scale).astype(np.float32),
        "fc.bias": (rng.normal(size=(100,)) * scale).astype(np.float32),
        "scale": np.float32(rng.normal() * scale).reshape(()),
    }


def _flat(u: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.ravel() for v in u.values()])


def _same_layout(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == b[k].shape and b[k].dtype == np.float32


# -- SVT ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 1.0])
def test_svt_shares_exactly_the_fraction_and_respects_the_clip(fraction: float) -> None:
    rng = np.random.default_rng(1)
    upd = _update(rng, scale=1e-4)
    n = _flat(upd).size
    out, spend = svt(upd, rng, fraction=fraction, epsilon=0.1, noise_var=0.1, gamma=1e-5, tau=1e-6)
    _same_layout(upd, out)
    flat = _flat(out)
    assert np.count_nonzero(flat) == math.ceil(n * fraction)
    assert np.abs(flat).max() <= 1e-5 * (1 + 1e-6)
    assert spend is not None and spend.mechanism == "svt" and spend.delta == 0.0


def test_svt_release_noise_is_laplace_with_nvflare_scale() -> None:
    # all-zero update: released values are clip(0 + Laplace(2 gamma / noise_var)); with noise_var large
    # the clip never binds, so the sample is the Laplace noise itself
    rng = np.random.default_rng(2)
    gamma, noise_var = 1.0, 200.0
    upd = {"w": np.zeros(200_000, dtype=np.float32)}
    out, _ = svt(upd, rng, fraction=0.5, epsilon=1.0, noise_var=noise_var, gamma=gamma, tau=0.0)
    vals = out["w"][out["w"] != 0].astype(np.float64)
    b = 2 * gamma / noise_var
    assert vals.size == 100_000
    assert abs(np.mean(np.abs(vals)) / b - 1) < 0.02  # E|Laplace(b)| = b
    assert abs(np.std(vals) / (math.sqrt(2) * b) - 1) < 0.03
    assert abs(np.mean(vals)) < 0.02 * b


def test_svt_prefers_large_entries_when_selection_noise_is_small() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    x = np.zeros(n, dtype=np.float32)
    big = rng.choice(n, size=n // 10, replace=False)
    x[big] = 1e-5
    # epsilon huge: threshold and query noise tiny, tau between 0 and gamma
    out, _ = svt({"w": x}, rng, fraction=0.1, epsilon=1e9, noise_var=1e9, gamma=1e-5, tau=5e-6)
    chosen = np.flatnonzero(out["w"])
    assert set(chosen.tolist()) == set(big.tolist())


class _RecordingRng:
    """A Generator stand-in that records every Laplace scale SVT asks for."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self.scales: list[tuple[float, int | None]] = []

    def laplace(self, scale: float, size: int | None = None) -> np.ndarray:
        self.scales.append((scale, size))
        return self._rng.laplace(scale=scale, size=size)

    def choice(self, *args: object, **kwargs: object) -> np.ndarray:
        return self._rng.choice(*args, **kwargs)  # type: ignore[call-overload]


def test_svt_noise_scales_are_nvflares() -> None:
    rng = _RecordingRng(8)
    n, fraction, eps1, eps3, gamma = 5000, 0.2, 0.3, 0.7, 1e-3
    upd = {"w": np.random.default_rng(0).normal(scale=1e-3, size=n).astype(np.float32)}
    svt(upd, rng, fraction=fraction, epsilon=eps1, noise_var=eps3, gamma=gamma, tau=1e-4)  # type: ignore[arg-type]
    c = 1000
    threshold, *queries, release = rng.scales
    assert threshold == (pytest.approx(2 * gamma / eps1), None)  # lambda_rho, drawn once
    eps2 = eps1 * (2 * c) ** (2 / 3)
    assert queries and all(s == pytest.approx(4 * gamma * c / eps2) for s, _ in queries)  # lambda_nu
    assert queries[0][1] == n and all(q[1] < n for q in queries[1:])  # later passes: the rest only
    assert release == (pytest.approx(2 * gamma / eps3), c)


def test_svt_epsilon_is_the_composed_figure() -> None:
    rng = np.random.default_rng(4)
    upd = {"w": rng.normal(size=1000).astype(np.float32)}
    _, spend = svt(upd, rng, fraction=0.1, epsilon=0.5, noise_var=0.2, gamma=1.0, tau=0.0)
    c = 100
    assert spend is not None
    assert spend.epsilon == pytest.approx(0.5 + 0.5 * (2 * c) ** (2 / 3) + c * 0.2)
    assert spend.epsilon == svt_epsilon(1000, 0.1, 0.5, 0.2)


def test_svt_does_not_mutate_input_and_is_reproducible() -> None:
    upd = _update(np.random.default_rng(5), scale=1e-5)
    before = {k: v.copy() for k, v in upd.items()}
    a, _ = svt(upd, np.random.default_rng(9))
    b, _ = svt(upd, np.random.default_rng(9))
    for k in upd:
        assert np.array_equal(upd[k], before[k])
        assert np.array_equal(a[k], b[k])


def test_svt_refuses_bad_parameters_and_unreachable_threshold() -> None:
    rng = np.random.default_rng(6)
    with pytest.raises(ConfigError):
        svt({"w": np.ones(10, np.float32)}, rng, fraction=0.0)
    with pytest.raises(ConfigError, match="too high"):
        svt({"w": np.zeros(1000, np.float32)}, rng, fraction=0.5, epsilon=1e9, gamma=1e-5, tau=1.0)


def test_non_finite_update_is_refused() -> None:
    rng = np.random.default_rng(7)
    bad = {"w": np.array([1.0, np.nan], dtype=np.float32)}
    for f in (svt, gaussian):
        with pytest.raises(UpdateRejected) as ei:
            f(bad, rng, clip=1.0, noise_multiplier=1.0) if f is gaussian else f(bad, rng)
        assert ei.value.code == "non_finite"


# -- percentile -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [1.0, 10.0, 33.3, 100.0])
def test_percentile_shares_exactly_the_top_entries(percent: float) -> None:
    rng = np.random.default_rng(10)
    upd = _update(rng)
    x = _flat(upd)
    out, spend = percentile(upd, rng, percentile=percent)
    assert spend is None
    _same_layout(upd, out)
    y = _flat(out)
    k = share_count(x.size, percent / 100)
    shared = np.flatnonzero(y)
    assert shared.size == k
    assert np.array_equal(y[shared], x[shared])  # values unchanged without gamma
    # every shared entry is at least as large as every unshared one
    unshared = np.setdiff1d(np.arange(x.size), shared)
    if unshared.size:
        assert np.abs(x[shared]).min() >= np.abs(x[unshared]).max()


def test_percentile_clips_to_gamma_and_counts_ties_exactly() -> None:
    rng = np.random.default_rng(11)
    out, _ = percentile({"w": rng.normal(size=10_000).astype(np.float32)}, rng, percentile=5, gamma=0.5)
    assert np.abs(out["w"]).max() == pytest.approx(0.5)
    assert np.count_nonzero(out["w"]) == 500
    ties = {"w": np.ones(1000, dtype=np.float32)}
    out, _ = percentile(ties, rng, percentile=10)
    assert np.count_nonzero(out["w"]) == 100


# -- exclude --------------------------------------------------------------------------------------------


def test_exclude_zeroes_by_exact_name_glob_and_regex_keeping_shapes() -> None:
    rng = np.random.default_rng(12)
    upd = _update(rng)
    out, spend = exclude(upd, rng, tensors=["conv.*", "scale"])
    assert spend is None
    _same_layout(upd, out)
    for k in ("conv.weight", "conv.bias", "scale"):
        assert not out[k].any()
    for k in ("fc.weight", "fc.bias"):
        assert np.array_equal(out[k], upd[k])
    out, _ = exclude(upd, rng, regex=r"\.bias$")
    assert not out["conv.bias"].any() and not out["fc.bias"].any()
    assert np.array_equal(out["fc.weight"], upd["fc.weight"])
    # globs are case-sensitive and anchored: "fc" alone matches nothing
    out, _ = exclude(upd, rng, tensors=["fc", "FC.*"])
    assert all(np.array_equal(out[k], upd[k]) for k in upd)


# -- gaussian -------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Optimal order")
def test_gaussian_clips_the_whole_update_to_the_l2_bound() -> None:
    rng = np.random.default_rng(13)
    upd = _update(rng, scale=10.0)
    out, _ = gaussian(upd, rng, clip=2.0, noise_multiplier=1e-9)
    _same_layout(upd, out)
    x, y = _flat(upd).astype(np.float64), _flat(out).astype(np.float64)
    assert np.linalg.norm(y) == pytest.approx(2.0, rel=1e-4)
    assert np.allclose(y, x * 2.0 / np.linalg.norm(x), atol=1e-6)  # direction kept: one global scale
    small = {"w": np.full(4, 0.1, dtype=np.float32)}
    out, _ = gaussian(small, rng, clip=2.0, noise_multiplier=1e-9)
    assert np.allclose(out["w"], 0.1, atol=1e-6)  # inside the ball: not scaled


def test_gaussian_noise_scale_is_z_times_c() -> None:
    rng = np.random.default_rng(14)
    upd = {"w": np.zeros(200_000, dtype=np.float32)}
    out, spend = gaussian(upd, rng, clip=0.5, noise_multiplier=1.3, delta=1e-6)
    y = out["w"].astype(np.float64)
    assert abs(np.std(y) / (1.3 * 0.5) - 1) < 0.01
    assert abs(np.mean(y)) < 0.01 * 0.65
    assert spend == Spend("gaussian", spend.epsilon, 1e-6, 1.3, 1.0, 1)
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(1.3, 1.0, 1)]
    assert spend.epsilon == pytest.approx(acc.get_epsilon(delta=1e-6))
    assert spend.epsilon == rdp_epsilon([(1.3, 1.0, 1)], 1e-6)


def test_spend_refuses_values_that_would_defeat_a_budget_check() -> None:
    for bad in (
        dict(epsilon=math.nan, delta=0.0),
        dict(epsilon=-1.0, delta=0.0),
        dict(epsilon=math.inf, delta=0.0),
        dict(epsilon=1.0, delta=1.0),
    ):
        with pytest.raises(ConfigError):
            Spend("svt", **bad)  # type: ignore[arg-type]
    s = Spend("gaussian", 1.0, 1e-5, 1.1, 0.01, 100)
    assert Spend.from_dict(s.to_dict()) == s


def test_svt_selection_is_not_biased_by_position() -> None:
    # equal entries: every position must be equally likely, whichever pass fills the quota
    rng = np.random.default_rng(15)
    n = 100_000
    upd = {"first": np.full(n // 2, 5e-6, np.float32), "second": np.full(n // 2, 5e-6, np.float32)}
    out, _ = svt(upd, rng, fraction=0.3, epsilon=1.0, noise_var=1.0, gamma=1e-5, tau=5e-6)
    a, b = np.count_nonzero(out["first"]), np.count_nonzero(out["second"])
    assert a + b == 30_000
    assert abs(a - b) < 0.05 * 30_000

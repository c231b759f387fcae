"""The roster's weights come from the sites' signed counts (invariant 7, weights half)."""

from __future__ import annotations

import pytest

from secagg.agent.consistency import WeightsRefused, check_weights
from secagg.roster import MAX_SAMPLES, BadSampleCount, expected_weights, sample_count

SIGNED = {"site-1": {"n_samples": 100}, "site-2": {"n_samples": 50}, "site-3": {"n_samples": 250}}
HONEST = {"site-1": 0.25, "site-2": 0.125, "site-3": 0.625}


def _check(announced: dict, **kw: object) -> dict[str, float]:
    args: dict = {"me": "site-1", "job": "j", "round_": 1, "min_sites": 3, **kw}
    return check_weights(announced, SIGNED, **args)


def test_honest_weights_pass_and_are_recomputed() -> None:
    assert _check(HONEST) == HONEST
    assert expected_weights(SIGNED, reversed(list(SIGNED))) == HONEST


@pytest.mark.parametrize(
    "announced",
    [
        {"site-1": 1.0, "site-2": 1e-12, "site-3": 1e-12},  # unmasks site-1
        {"site-1": 0.25, "site-2": 0.125, "site-3": 0.625 * (1 + 1e-6)},
        {"site-1": 0.25, "site-2": 0.125, "site-3": float("nan")},
        {"site-1": 0.25, "site-2": "0.125", "site-3": 0.625},
        {"site-1": 0.25, "site-2": True, "site-3": 0.625},
    ],
)
def test_weights_the_counts_do_not_give_are_refused(announced: dict) -> None:
    with pytest.raises(WeightsRefused) as exc:
        _check(announced)
    assert exc.value.code == "weights_mismatch"


def test_a_roster_without_this_site_or_with_an_unsigned_site_is_refused() -> None:
    with pytest.raises(WeightsRefused, match="not in the roster"):
        _check({"site-2": 0.2, "site-3": 0.8}, min_sites=2)
    with pytest.raises(WeightsRefused, match="no signed sample count for site-4"):
        _check({**HONEST, "site-4": 0.1})


def test_a_roster_smaller_than_the_job_needs_is_refused() -> None:
    with pytest.raises(WeightsRefused) as exc:
        check_weights({"site-1": 2 / 3, "site-2": 1 / 3}, SIGNED, me="site-1", job="j", round_=1, min_sites=3)
    assert exc.value.code == "roster_too_small"


def test_min_weight_share_protects_this_site_from_dominating() -> None:
    assert _check(HONEST, min_weight_share=0.125) == HONEST
    with pytest.raises(WeightsRefused) as exc:
        _check(HONEST, min_weight_share=0.2)
    assert exc.value.code == "weight_share_too_small"
    assert "site-2 (0.125)" in str(exc.value)
    # its own share is not the point: site-2 checking the same roster minds only the others' shares
    assert check_weights(HONEST, SIGNED, me="site-2", job="j", round_=1, min_sites=3, min_weight_share=0.2)


@pytest.mark.parametrize("bad", [0, -1, MAX_SAMPLES + 1, 1e308, 10.0, True, None, "100"])
def test_sample_counts_are_bounded_integers(bad: object) -> None:
    with pytest.raises(BadSampleCount):
        sample_count(bad)
    assert sample_count(MAX_SAMPLES) == MAX_SAMPLES

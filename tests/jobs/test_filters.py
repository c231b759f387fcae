"""The job/policy filter vocabulary: which direction is stronger agrees with the privacy package.

``STRONGER_WHEN_SMALLER`` only words a refusal; the verdict is ``secagg.privacy.stronger_or_equal``.
If the two disagreed, a site would explain a refusal with the wrong knob, or (as ``noise_var`` once was)
accept a weaker setting as stronger.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from secagg.jobs.filters import STRONGER_WHEN_SMALLER, FilterSpec, SvtFilter
from secagg.privacy import stronger_or_equal

BASE: dict[str, dict[str, Any]] = {
    "svt": {"name": "svt", "fraction": 0.25, "epsilon": 0.1, "noise_var": 0.1, "gamma": 1e-5, "tau": 1e-6},
    "percentile": {"name": "percentile", "percentile": 25, "gamma": 0.01},
    "gaussian": {"name": "gaussian", "clip": 1.0, "noise_multiplier": 1.1},
    "distributed_gaussian": {
        "name": "distributed_gaussian",
        "clip": 1.0,
        "noise_multiplier": 1.1,
        "min_honest_sites": 4,
    },
    "dpsgd": {"name": "dpsgd", "target_epsilon": 1.0, "target_delta": 1e-5, "max_grad_norm": 1.0},
}
ADAPTER: TypeAdapter[FilterSpec] = TypeAdapter(FilterSpec)
KNOBS = [(f, k, smaller) for f, knobs in STRONGER_WHEN_SMALLER.items() for k, smaller in knobs.items()]


def spec(name: str, **over: Any) -> FilterSpec:
    return ADAPTER.validate_python({**BASE[name], **over})


def test_table_covers_every_filter_with_a_guarantee() -> None:
    assert set(STRONGER_WHEN_SMALLER) == set(BASE)


@pytest.mark.parametrize(("name", "knob", "smaller"), KNOBS, ids=[f"{f}.{k}" for f, k, _ in KNOBS])
def test_table_agrees_with_privacy_stronger_or_equal(name: str, knob: str, smaller: bool) -> None:
    site = spec(name)
    value = getattr(site, knob)
    stronger, weaker = (value / 2, value * 2) if smaller else (value * 2, value / 2)
    if knob in {"fraction", "percentile"}:  # capped at 1 / 100: go below the site value instead
        stronger, weaker = value / 2, value
        site = spec(name, **{knob: value / 1.5})
    assert stronger_or_equal(spec(name, **{knob: stronger}), site)
    assert not stronger_or_equal(spec(name, **{knob: weaker}), site)


def test_noise_var_smaller_is_stronger() -> None:
    site = spec("svt")
    assert STRONGER_WHEN_SMALLER["svt"]["noise_var"] is True
    assert stronger_or_equal(spec("svt", noise_var=0.01), site)  # more noise: 2 gamma / 0.01
    assert not stronger_or_equal(spec("svt", noise_var=1.0), site)  # less noise


def test_tau_does_not_change_the_guarantee() -> None:
    assert "tau" not in STRONGER_WHEN_SMALLER["svt"]
    assert stronger_or_equal(spec("svt", tau=0.0), spec("svt", tau=1e-3))
    assert stronger_or_equal(spec("svt", tau=1e-3), spec("svt", tau=0.0))


@pytest.mark.parametrize("bad", [0, -0.1, math.inf, math.nan])
def test_noise_var_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValidationError):
        SvtFilter.model_validate({**BASE["svt"], "noise_var": bad})


@pytest.mark.parametrize(
    ("name", "knob"),
    [("svt", "epsilon"), ("gaussian", "noise_multiplier"), ("dpsgd", "target_epsilon"), ("gaussian", "clip")],
)
def test_infinite_values_are_refused(name: str, knob: str) -> None:
    with pytest.raises(ValidationError):
        spec(name, **{knob: math.inf})

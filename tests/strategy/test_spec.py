from __future__ import annotations

import pytest

from secagg.errors import ConfigError
from secagg.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    StrategySpec,
    make_strategy,
    parse_spec,
)


@pytest.mark.parametrize(
    ("name", "cls", "params"),
    [
        ("fedavg", FedAvg, {}),
        ("fedprox", FedProx, {"mu": 0.01}),
        ("fedavgm", FedAvgM, {"eta": 0.1, "momentum": 0.9}),
        ("fedadagrad", FedAdagrad, {"eta": 0.1, "beta_1": 0.0, "tau": 0.01}),
        ("fedadam", FedAdam, {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}),
        ("fedyogi", FedYogi, {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}),
    ],
)
def test_defaults_are_resolved_and_built(name, cls, params):
    spec = parse_spec({"name": name})
    assert spec.params() == params
    s = make_strategy(spec)
    assert type(s) is cls and s.params() == params
    assert type(make_strategy(name)) is cls  # the short form a job.yaml may use


def test_given_parameters_override_defaults_only_where_given():
    s = make_strategy({"name": "fedyogi", "eta": 0.5, "tau": None})
    assert s.params() == {"eta": 0.5, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}
    assert make_strategy({"name": "fedprox", "mu": 1}).client_config() == {"strategy": "fedprox", "mu": 1.0}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "fedadam", "lr": 0.1}, "lr: Extra inputs are not permitted"),
        ({"name": "scaffold"}, "name: Input should be 'fedavg'"),
        ({}, "name: Field required"),
        ({"name": "fedadam", "mu": 0.1}, "fedadam does not use mu"),
        ({"name": "fedadagrad", "beta_2": 0.9}, "fedadagrad does not use beta_2"),
        ({"name": "fedavg", "eta": 1.0}, r"fedavg does not use eta \(it takes no parameters\)"),
        ({"name": "fedavgm", "beta_1": 0.9}, r"it takes eta, momentum"),
        ({"name": "fedadam", "eta": 0}, "eta: Input should be greater than 0"),
        ({"name": "fedadam", "beta_1": 1.0}, "beta_1: Input should be less than 1"),
        ({"name": "fedyogi", "beta_2": -0.5}, "beta_2: Input should be greater than or equal to 0"),
        ({"name": "fedadam", "tau": float("nan")}, "tau: Input should be a finite number"),
        ({"name": "fedavgm", "momentum": 1}, "momentum: Input should be less than 1"),
        ({"name": "fedprox", "mu": -1}, "mu: Input should be greater than or equal to 0"),
        ({"name": "fedadam", "eta": "fast"}, "eta: Input should be a valid number"),
        (["fedadam"], "Input should be a valid dictionary"),
    ],
)
def test_invalid_specs_raise_config_error(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(data)
    with pytest.raises(ConfigError):
        make_strategy(data)


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as e:
        parse_spec({"name": "fedadam", "eta": -1, "beta_1": 2, "foo": 1})
    text = str(e.value)
    assert "eta:" in text and "beta_1:" in text and "foo:" in text


def test_spec_is_immutable_and_round_trips_through_json():
    spec = parse_spec({"name": "fedadam", "eta": 0.05})
    with pytest.raises(Exception):  # pydantic frozen-instance error
        spec.eta = 1.0  # type: ignore[misc]
    again = StrategySpec.model_validate_json(spec.model_dump_json(exclude_none=True))
    assert again == spec

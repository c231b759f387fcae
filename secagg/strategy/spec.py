"""The ``strategy:`` block of a job config, parsed once into a fully resolved spec.

After validation every parameter the named strategy takes is filled (from the paper defaults if
not given) and every parameter it does not take is None. A parameter given for a strategy that
ignores it (``mu`` for fedadam, ``beta_2`` for fedadagrad) is an error, not a silent no-op: a job
author who wrote it expected it to matter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from secagg import validation
from secagg.errors import ConfigError
from secagg.strategy.base import Strategy
from secagg.strategy.fedavg import FedAvg, FedProx
from secagg.strategy.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam, FedYogi)
}

StrategyName = Literal["fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi"]
_PARAMS = ("mu", "eta", "beta_1", "beta_2", "tau", "momentum")


class StrategySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrategyName
    mu: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    eta: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    beta_1: float | None = Field(default=None, ge=0, lt=1, allow_inf_nan=False)
    beta_2: float | None = Field(default=None, ge=0, lt=1, allow_inf_nan=False)
    tau: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    momentum: float | None = Field(default=None, ge=0, lt=1, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: object) -> object:
        if not isinstance(data, Mapping) or data.get("name") not in STRATEGIES:
            return data  # let field validation report the bad name or shape
        takes = STRATEGIES[data["name"]].defaults
        ignored = sorted(k for k in _PARAMS if data.get(k) is not None and k not in takes)
        if ignored:
            allowed = ", ".join(takes) or "no parameters"
            raise ValueError(f"{data['name']} does not use {', '.join(ignored)} (it takes {allowed})")
        resolved = dict(data)
        for key, default in takes.items():
            if resolved.get(key) is None:
                resolved[key] = default
        return resolved

    def params(self) -> dict[str, float]:
        """Only the parameters the named strategy takes, all resolved."""
        return {k: v for k in STRATEGIES[self.name].defaults if (v := getattr(self, k)) is not None}


def parse_spec(data: object) -> StrategySpec:
    """A job config's strategy block, or ConfigError naming the field and the problem."""
    if isinstance(data, str):
        data = {"name": data}
    try:
        return validation.validate(StrategySpec, data)
    except validation.FieldProblems as exc:
        raise ConfigError(f"invalid strategy spec: {exc.line()}") from None


def make_strategy(spec: StrategySpec | Mapping[str, object] | str) -> Strategy:
    """The strategy a spec names, with its resolved parameters."""
    if not isinstance(spec, StrategySpec):
        spec = parse_spec(spec)
    return STRATEGIES[spec.name](**spec.params())

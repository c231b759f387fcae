"""``job.yaml``: what a job asks of the federation, parsed once into a frozen model.

The aggregator, the site agent and the site policy all read this one model; unknown keys are errors
so that a typo (``min_site: 1``) cannot silently fall back to a default.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from secagg.jobs.filters import FilterSpec
from secagg.modes import NAMES
from secagg.strategy.spec import StrategySpec

#: the names of :data:`secagg.modes.MODES` (a test holds the two equal)
Mode = Literal["plain", "he", "mask", "tee", "tee-mask"]
#: ``evaluation:`` in job.yaml (see ``JobSpec.evaluation``)
Evaluation = Literal["global", "cross_site"]
MODES: tuple[str, ...] = NAMES


#: RFC 8785 (the audit log's canonical JSON) refuses integers at or past 2^53: so does job.yaml
MAX_SAFE_INT = 2**53 - 1
MAX_ROUNDS = 1_000_000
MAX_SITES = 100_000
#: a week: a round that may take longer is not a round but an outage
MAX_ROUND_TIMEOUT_S = 7 * 24 * 3600.0


def json_safe_problem(value: object, path: str = "") -> str | None:
    """Why ``value`` (data read from YAML) cannot be written as RFC 8785 JSON, or None: a float that
    is infinite or NaN, an integer past 2^53, anywhere (the first found, named by its path)."""
    stack: list[tuple[str, object]] = [(path, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        if isinstance(v, int):
            if abs(v) > MAX_SAFE_INT:
                return f"{where or '(top)'}: integer out of range (|x| must be below 2^53)"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return f"{where or '(top)'}: {v} is not a finite number"
        elif isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in v.items())
        elif isinstance(v, list | tuple):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
    return None


#: the top-level numbers of job.yaml and their ranges, checked before pydantic so that a value such as
#: ``rounds: 1e30`` is reported as out of range (not as a failed integer conversion)
_RANGES: dict[str, tuple[float, float]] = {
    "rounds": (1, MAX_ROUNDS),
    "min_sites": (1, MAX_SITES),
    "round_timeout": (0, MAX_ROUND_TIMEOUT_S),
}


def range_problem(data: object) -> str | None:
    if not isinstance(data, dict):
        return None
    for key, (lo, hi) in _RANGES.items():
        v = data.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and not (lo <= v <= hi):
            return f"{key}: {v:.6g} is out of range ({lo:g} to {hi:g})"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HESpec(_Strict):
    """The project's HE key is made once, by the key holder, with ``secagg-default`` (CKKS N=4096,
    q=[40, 20], scale 2^36): a job cannot pick other parameters for it, so any other preset is refused
    here rather than silently ignored (``secagg.he.params`` keeps the others for measurements)."""

    preset: Literal["secagg-default"] = "secagg-default"


class MaskSpec(_Strict):
    threshold: int = Field(ge=2, le=MAX_SITES)
    neighbours: int | None = Field(default=None, ge=1, le=MAX_SITES)
    clip: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False)


def _package_file(value: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{value!r} must be a relative path inside the package")
    return value


class JobSpec(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    rounds: int = Field(ge=1, le=MAX_ROUNDS)
    min_sites: int = Field(ge=1, le=MAX_SITES)
    mode: Mode
    model: str
    entry: str
    round_timeout: float = Field(default=120, gt=0, le=MAX_ROUND_TIMEOUT_S, allow_inf_nan=False)
    strategy: StrategySpec = Field(default_factory=lambda: StrategySpec(name="fedavg"))
    he: HESpec | None = None
    mask: MaskSpec | None = None
    privacy: list[FilterSpec] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    #: what the sites evaluate after the last round: ``global``, each site the final global model on
    #: its held-out data (as always); ``cross_site``, also every site's last local model on every other
    #: site's data where every site's policy shares it (:mod:`secagg.agent.evaluation`)
    evaluation: Evaluation = "global"

    @model_validator(mode="before")
    @classmethod
    def _json_safe(cls, data: object) -> object:
        """Every number anywhere (``params``, ``strategy``, ``privacy``) must survive RFC 8785."""
        if (problem := json_safe_problem(data) or range_problem(data)) is not None:
            raise ValueError(problem)
        return data

    @field_validator("strategy", mode="before")
    @classmethod
    def _short_strategy(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("model", "entry")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _package_file(value)

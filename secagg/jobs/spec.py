"""``job.yaml``: what a job asks of the federation, parsed once into a frozen model.

The aggregator, the site agent and the site policy all read this one model; unknown keys are errors
so that a typo (``min_site: 1``) cannot silently fall back to a default.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from secagg.jobs.filters import FilterSpec
from secagg.modes import NAMES
from secagg.strategy.spec import StrategySpec

#: the names of :data:`secagg.modes.MODES` (a test holds the two equal)
Mode = Literal["plain", "he", "mask", "tee", "tee-mask"]
MODES: tuple[str, ...] = NAMES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HESpec(_Strict):
    """The project's HE key is made once, by the key holder, with ``secagg-default`` (CKKS N=4096,
    q=[40, 20], scale 2^36): a job cannot pick other parameters for it, so any other preset is refused
    here rather than silently ignored (``secagg.he.params`` keeps the others for measurements)."""

    preset: Literal["secagg-default"] = "secagg-default"


class MaskSpec(_Strict):
    threshold: int = Field(ge=2)
    neighbours: int | None = Field(default=None, ge=1)
    clip: float = Field(default=1.0, gt=0)


def _package_file(value: str) -> str:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ValueError(f"{value!r} must be a relative path inside the package")
    return value


class JobSpec(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    rounds: int = Field(ge=1)
    min_sites: int = Field(ge=1)
    mode: Mode
    model: str
    entry: str
    round_timeout: float = Field(default=120, gt=0)
    strategy: StrategySpec = Field(default_factory=lambda: StrategySpec(name="fedavg"))
    he: HESpec | None = None
    mask: MaskSpec | None = None
    privacy: list[FilterSpec] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("strategy", mode="before")
    @classmethod
    def _short_strategy(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("model", "entry")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _package_file(value)

"""The privacy filter shapes a job may request and a site policy may require.

One vocabulary for both sides, so that "is the job's request at least as strong as the site's rule?"
is a field-by-field comparison, not a translation. The privacy package implements the filters; this
module only names their parameters and says which direction of each parameter is *stronger*.

The verdict "at least as strong" is ``secagg.privacy.stronger_or_equal``'s (the policy calls it); the
table here only names, in words, which knob made a request weaker, and a test keeps the two in step.
Every number must be finite: an infinite epsilon would pass ``gt=0`` and make every budget moot.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Filter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SvtFilter(_Filter):
    """Sparse vector technique: share a noisy ``fraction`` of coordinates above threshold ``tau``."""

    name: Literal["svt"]
    fraction: float = Field(gt=0, le=1)
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    #: NVFlare's eps_3, the per-entry release budget: noise scale 2 gamma / noise_var, so 0 is undefined
    noise_var: float = Field(gt=0, allow_inf_nan=False)
    gamma: float = Field(gt=0, allow_inf_nan=False)
    tau: float = Field(ge=0, allow_inf_nan=False)


class PercentileFilter(_Filter):
    """Share only the top ``percentile`` percent of coordinates by magnitude, clipped to ``gamma``."""

    name: Literal["percentile"]
    percentile: float = Field(gt=0, le=100)
    gamma: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class ExcludeFilter(_Filter):
    """Never share the named tensors (names or shell globs)."""

    name: Literal["exclude"]
    tensors: list[str] = Field(min_length=1)


class GaussianFilter(_Filter):
    """Clip the update's L2 norm to ``clip`` and add N(0, (noise_multiplier * clip)^2) noise."""

    name: Literal["gaussian"]
    clip: float = Field(gt=0, allow_inf_nan=False)
    noise_multiplier: float = Field(gt=0, allow_inf_nan=False)


class DistributedGaussianFilter(_Filter):
    """Distributed DP (modes ``mask``, ``tee-mask`` and ``tee`` only): each site clips to ``clip``,
    quantises at the fixed point 2^-``frac_bits`` (no finer than the mask's, where masked) and adds a share
    of Skellam noise so that any ``min_honest_sites`` honest sites' sum carries ``noise_multiplier``."""

    name: Literal["distributed_gaussian"]
    clip: float = Field(gt=0, allow_inf_nan=False)
    noise_multiplier: float = Field(gt=0, allow_inf_nan=False)
    min_honest_sites: int = Field(ge=1, le=100_000)
    frac_bits: int = Field(16, ge=0, le=30)


class DpsgdFilter(_Filter):
    """DP-SGD inside local training; the only filter a site cannot add after training."""

    name: Literal["dpsgd"]
    target_epsilon: float = Field(gt=0, allow_inf_nan=False)
    target_delta: float = Field(gt=0, lt=1)
    max_grad_norm: float = Field(gt=0, allow_inf_nan=False)
    #: local epochs per round the noise is calibrated for (steps = epochs x batches per epoch); not a
    #: privacy knob: more epochs at the same target epsilon means more noise per step
    epochs: int = Field(1, ge=1, le=10_000)


AnyFilter = (
    SvtFilter | PercentileFilter | ExcludeFilter | GaussianFilter | DistributedGaussianFilter | DpsgdFilter
)
FilterSpec = Annotated[AnyFilter, Field(discriminator="name")]

#: per filter, each parameter that bounds the guarantee and whether a *smaller* value is the stronger
#: (more private) one. SVT's ``noise_var`` is a per-entry epsilon (release noise 2 gamma / noise_var):
#: smaller is stronger. ``tau`` is absent: the threshold is public and does not change the guarantee.
STRONGER_WHEN_SMALLER: dict[str, dict[str, bool]] = {
    "svt": {"fraction": True, "epsilon": True, "noise_var": True, "gamma": True},
    "percentile": {"percentile": True, "gamma": True},
    "gaussian": {"clip": True, "noise_multiplier": False},
    "distributed_gaussian": {"clip": True, "noise_multiplier": False, "min_honest_sites": False},
    "dpsgd": {"target_epsilon": True, "target_delta": True, "max_grad_norm": True},
}

#: filters that act inside training; a site cannot bolt them on to a job that did not ask for them
TRAINING_TIME_FILTERS = frozenset({"dpsgd"})

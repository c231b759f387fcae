"""Filter configuration: pydantic specs, the chain built from them, and the "stronger or equal" order.

A site policy names the filters it requires; a job may ask for the same filters with stronger settings,
never weaker. ``stronger_or_equal`` is that order, per filter, stated on parameters alone so the agent
can decide before anything runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from secagg import validation
from secagg.errors import ConfigError
from secagg.privacy.distributed import distributed_gaussian
from secagg.privacy.exclude import exclude
from secagg.privacy.gaussian import gaussian
from secagg.privacy.percentile import percentile
from secagg.privacy.spend import Spend, Update, as_update
from secagg.privacy.svt import svt, svt_epsilon

#: a filter: the update and a random generator in, the new update and what it spent out
Filter = Callable[[Update, np.random.Generator], tuple[Update, Spend | None]]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SvtSpec(_Spec):
    """NVFlare ``SVTPrivacy``'s parameters, same names, same defaults (see :mod:`secagg.privacy.svt`)."""

    name: Literal["svt"] = "svt"
    fraction: float = Field(0.1, gt=0, le=1)
    epsilon: float = Field(0.1, gt=0, allow_inf_nan=False)
    noise_var: float = Field(0.1, gt=0, allow_inf_nan=False)
    gamma: float = Field(1e-5, gt=0, allow_inf_nan=False)
    tau: float = Field(1e-6, allow_inf_nan=False)

    @classmethod
    def from_nvflare(cls, args: Mapping[str, Any]) -> SvtSpec:
        """The ``args`` of an NVFlare ``SVTPrivacy`` filter entry, one to one."""
        return _validate(cls, {"name": "svt", **dict(args)})


class PercentileSpec(_Spec):
    """Share the top ``percentile`` percent of entries by magnitude (see :mod:`.percentile`)."""

    name: Literal["percentile"] = "percentile"
    percentile: float = Field(gt=0, le=100)
    gamma: float | None = Field(None, gt=0, allow_inf_nan=False)

    @classmethod
    def from_nvflare(cls, args: Mapping[str, Any]) -> PercentileSpec:
        """NVFlare ``PercentilePrivacy(percentile=P, gamma=G)`` keeps entries above the P-th percentile."""
        args = dict(args)
        known = {"percentile", "gamma"}
        if set(args) - known:
            raise ConfigError(f"PercentilePrivacy: unknown argument(s) {sorted(set(args) - known)}")
        p = float(args.get("percentile", 10))
        if not 0 <= p < 100:
            raise ConfigError(f"PercentilePrivacy: percentile must be in [0, 100), got {p}")
        return _validate(
            cls, {"name": "percentile", "percentile": 100.0 - p, "gamma": args.get("gamma", 0.01)}
        )


class ExcludeSpec(_Spec):
    """Tensors zeroed before upload: exact names or globs, and/or a regex (see :mod:`.exclude`)."""

    name: Literal["exclude"] = "exclude"
    tensors: tuple[str, ...] = ()
    regex: str | None = None

    @model_validator(mode="after")
    def _something(self) -> ExcludeSpec:
        if not self.tensors and not self.regex:
            raise ValueError("exclude needs at least one pattern or a regex")
        return self

    @classmethod
    def from_nvflare(cls, args: Mapping[str, Any]) -> ExcludeSpec:
        """NVFlare ``ExcludeVars(exclude_vars=...)``: a list of names, or a string taken as a regex."""
        ev = dict(args).get("exclude_vars")
        if isinstance(ev, str):
            return _validate(cls, {"name": "exclude", "regex": ev})
        return _validate(cls, {"name": "exclude", "tensors": list(ev or [])})


class GaussianSpec(_Spec):
    """DP-FedAvg: clip to L2 norm ``clip``, add ``N(0, (noise_multiplier * clip)^2)``."""

    name: Literal["gaussian"] = "gaussian"
    clip: float = Field(gt=0, allow_inf_nan=False)
    noise_multiplier: float = Field(gt=0, allow_inf_nan=False)
    sample_rate: float = Field(1.0, gt=0, le=1)
    delta: float = Field(1e-5, gt=0, lt=1)


class DistributedGaussianSpec(_Spec):
    """Distributed DP (Skellam shares, :mod:`secagg.privacy.distributed`): ``noise_multiplier`` is
    the target for the *sum* of any ``min_honest_sites`` honest sites; ``frac_bits`` is the mask
    protocol's fixed point, which the job's ``mask.frac_bits`` must equal."""

    name: Literal["distributed_gaussian"] = "distributed_gaussian"
    clip: float = Field(gt=0, allow_inf_nan=False)
    noise_multiplier: float = Field(gt=0, allow_inf_nan=False)
    min_honest_sites: int = Field(ge=1)
    frac_bits: int = Field(16, ge=0, le=30)
    delta: float = Field(1e-5, gt=0, lt=1)


class DpsgdSpec(_Spec):
    """DP-SGD inside local training (:mod:`secagg.privacy.dpsgd_runtime`); not an update filter, so
    :func:`build_chain` leaves it out: the agent installs it in the training subprocess.
    """

    name: Literal["dpsgd"] = "dpsgd"
    target_epsilon: float = Field(gt=0, allow_inf_nan=False)
    target_delta: float = Field(gt=0, lt=1)
    max_grad_norm: float = Field(gt=0, allow_inf_nan=False)
    epochs: int = Field(1, ge=1, le=10_000)


FilterSpec = Annotated[
    SvtSpec | PercentileSpec | ExcludeSpec | GaussianSpec | DistributedGaussianSpec | DpsgdSpec,
    Field(discriminator="name"),
]

#: specs that act inside training rather than on the finished update
TRAINING_TIME = frozenset({"dpsgd"})
_ADAPTER: TypeAdapter[list[FilterSpec]] = TypeAdapter(list[FilterSpec])


def _validate(cls: Any, data: Any) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"privacy filter: {validation.problems(exc).line()}") from None


def parse_specs(data: Sequence[Mapping[str, Any] | BaseModel]) -> list[FilterSpec]:
    """Validate filter dicts or models (a policy's or job's, e.g. :mod:`secagg.jobs.filters`) into specs.

    Any pydantic model is read through its ``model_dump``, so the job/policy vocabulary (same names, same
    fields) converts without this package importing it. One line on error.
    """
    items = [d.model_dump(exclude_none=True) if isinstance(d, BaseModel) else d for d in data]
    try:
        return _ADAPTER.validate_python(items)
    except ValidationError as exc:
        raise ConfigError(f"privacy filters: {validation.problems(exc).line()}") from None


def _as_spec(spec: FilterSpec | Mapping[str, Any] | BaseModel) -> FilterSpec:
    if isinstance(spec, _Spec):
        return spec  # type: ignore[return-value]
    return parse_specs([spec])[0]


def build_filter(spec: FilterSpec) -> Filter:
    if isinstance(spec, DpsgdSpec):
        raise ConfigError("dpsgd runs inside training (secagg.privacy.dpsgd_runtime), not on the update")
    params = spec.model_dump(exclude={"name"})
    if isinstance(spec, SvtSpec):
        return functools.partial(svt, **params)
    if isinstance(spec, PercentileSpec):
        return functools.partial(percentile, **params)
    if isinstance(spec, ExcludeSpec):
        return functools.partial(exclude, **params)
    if isinstance(spec, GaussianSpec):
        return functools.partial(gaussian, **params)
    if isinstance(spec, DistributedGaussianSpec):
        return functools.partial(distributed_gaussian, **params)
    raise ConfigError(f"unknown privacy filter spec {spec!r}")


def build_chain(specs: Sequence[FilterSpec | Mapping[str, Any] | BaseModel]) -> list[Filter]:
    """One filter per update-filter spec, in order (dicts and foreign models are validated first).

    Training-time specs (``dpsgd``) are left out: they are the training runner's job.
    """
    parsed = [_as_spec(s) for s in specs]
    return [build_filter(s) for s in parsed if s.name not in TRAINING_TIME]


def apply_chain(
    chain: Sequence[Filter], update: Mapping[str, Any], rng: np.random.Generator
) -> tuple[Update, list[Spend]]:
    """Run the filters in order, each on the previous one's output; collect what each spent, in order."""
    current = as_update(update)
    spends: list[Spend] = []
    for f in chain:
        current, spend = f(current, rng)
        if spend is not None:
            spends.append(spend)
    return current, spends


def stronger_or_equal(
    job_spec: FilterSpec | Mapping[str, Any] | BaseModel,
    policy_spec: FilterSpec | Mapping[str, Any] | BaseModel,
) -> bool:
    """True when ``job_spec`` protects at least as much as ``policy_spec`` (same filter, no weaker knob).

    svt: fraction, epsilon, noise_var and gamma no larger (tau does not change the guarantee);
    percentile: percentile no larger, and gamma no larger when the policy sets one; exclude: every policy
    pattern (and its regex) also in the job; gaussian: noise multiplier no smaller, clip, sample rate and
    delta no larger; distributed_gaussian: noise multiplier and min_honest_sites no smaller, clip and
    delta no larger, the same frac_bits (the fixed point, not a privacy knob); dpsgd: target epsilon,
    target delta and max grad norm no larger.

    ``noise_var`` is NVFlare's eps_3 (release noise scale ``2 gamma / noise_var``): a *larger* value means
    *less* noise, so it must not grow.
    """
    job_spec, policy_spec = _as_spec(job_spec), _as_spec(policy_spec)
    if isinstance(job_spec, DpsgdSpec) and isinstance(policy_spec, DpsgdSpec):
        return (
            job_spec.target_epsilon <= policy_spec.target_epsilon
            and job_spec.target_delta <= policy_spec.target_delta
            and job_spec.max_grad_norm <= policy_spec.max_grad_norm
        )
    if isinstance(job_spec, SvtSpec) and isinstance(policy_spec, SvtSpec):
        return (
            job_spec.fraction <= policy_spec.fraction
            and job_spec.epsilon <= policy_spec.epsilon
            and job_spec.noise_var <= policy_spec.noise_var
            and job_spec.gamma <= policy_spec.gamma
        )
    if isinstance(job_spec, PercentileSpec) and isinstance(policy_spec, PercentileSpec):
        if job_spec.percentile > policy_spec.percentile:
            return False
        if policy_spec.gamma is None:
            return True
        return job_spec.gamma is not None and job_spec.gamma <= policy_spec.gamma
    if isinstance(job_spec, ExcludeSpec) and isinstance(policy_spec, ExcludeSpec):
        return set(policy_spec.tensors) <= set(job_spec.tensors) and (
            policy_spec.regex is None or policy_spec.regex == job_spec.regex
        )
    if isinstance(job_spec, GaussianSpec) and isinstance(policy_spec, GaussianSpec):
        return (
            job_spec.noise_multiplier >= policy_spec.noise_multiplier
            and job_spec.clip <= policy_spec.clip
            and job_spec.sample_rate <= policy_spec.sample_rate
            and job_spec.delta <= policy_spec.delta
        )
    if isinstance(job_spec, DistributedGaussianSpec) and isinstance(policy_spec, DistributedGaussianSpec):
        return (
            job_spec.noise_multiplier >= policy_spec.noise_multiplier
            and job_spec.min_honest_sites >= policy_spec.min_honest_sites
            and job_spec.clip <= policy_spec.clip
            and job_spec.delta <= policy_spec.delta
            and job_spec.frac_bits == policy_spec.frac_bits
        )
    return False


def chain_shortfalls(
    job_specs: Sequence[FilterSpec | Mapping[str, Any] | BaseModel],
    policy_specs: Sequence[FilterSpec | Mapping[str, Any] | BaseModel],
) -> list[str]:
    """Every policy filter the job chain lacks or weakens, as reasons (empty: the job chain is acceptable).

    Each required filter must be matched by a stronger-or-equal job filter of the same name; the
    policy's order is kept (a job may add filters in between), since clipping before or after noise
    changes the guarantee.
    """
    jobs = [_as_spec(j) for j in job_specs]
    reasons: list[str] = []
    pos = 0
    for req in (_as_spec(p) for p in policy_specs):
        for i in range(pos, len(jobs)):
            if stronger_or_equal(jobs[i], req):
                pos = i + 1
                break
        else:
            same = [j for j in jobs if j.name == req.name]
            why = "weaker than" if same else "missing, policy requires"
            reasons.append(f"privacy filter {req.name}: {why} {req.model_dump(exclude={'name'})}")
    return reasons


def spend_of(spec: FilterSpec | Mapping[str, Any] | BaseModel, n_params: int) -> Spend | None:
    """What one round through ``spec`` costs at most, for an update of ``n_params`` entries (admission).

    distributed_gaussian's cost grows (slightly) with ``n_params``: the rounding inflates the norm.
    DP-SGD's noise multiplier depends on the data set size, unknown before training; its worst case is
    its target ``(epsilon, delta)`` per round, composed basically.
    """
    spec = _as_spec(spec)
    if isinstance(spec, DpsgdSpec):
        return Spend("dpsgd", spec.target_epsilon, spec.target_delta)
    if isinstance(spec, SvtSpec):
        eps = svt_epsilon(n_params, spec.fraction, spec.epsilon, spec.noise_var)
        return Spend("svt", eps, 0.0) if eps > 0 else None
    if isinstance(spec, GaussianSpec):
        from secagg.privacy.accounting import rdp_epsilon

        eps = rdp_epsilon([(spec.noise_multiplier, spec.sample_rate, 1)], spec.delta)
        return Spend("gaussian", eps, spec.delta, spec.noise_multiplier, spec.sample_rate, 1)
    if isinstance(spec, DistributedGaussianSpec):
        from secagg.privacy.distributed import spend

        return spend(spec.noise_multiplier, spec.clip, spec.frac_bits, n_params, spec.delta)
    return None


def worst_case_spends(
    specs: Sequence[FilterSpec | Mapping[str, Any] | BaseModel], n_params: int, rounds: int
) -> list[Spend]:
    """The spends of ``rounds`` releases through the chain: the job's declared worst case."""
    per_round = [s for s in (spend_of(spec, n_params) for spec in specs) if s is not None]
    return [s for _ in range(rounds) for s in per_round]

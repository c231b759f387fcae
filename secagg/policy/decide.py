"""Would this site run this job? A pure function of (policy, job.yaml, verified signer).

Every rule is evaluated, even after one fails, so the site operator and the aggregator see the whole
picture in one pass. Each rule yields a :class:`Reason` with a short ``code`` (reported to the
aggregator and written to the audit log) and a sentence a security officer can read.

*Validate*, not *verify*: the signer passed in must come from ``secagg.jobs.verify_job``; here we only
ask whether this site trusts that signer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from secagg.errors import ConfigError, PolicyRefusal
from secagg.jobs.filters import (
    STRONGER_WHEN_SMALLER,
    TRAINING_TIME_FILTERS,
    AnyFilter,
    DistributedGaussianFilter,
    ExcludeFilter,
)
from secagg.jobs.signer import SUBMIT_ROLES, SignerInfo
from secagg.jobs.spec import JobSpec
from secagg.modes import traits
from secagg.policy.model import SitePolicy
from secagg.policy.params import count_parameters
from secagg.privacy.accounting import Composition, compose
from secagg.privacy.specs import stronger_or_equal, worst_case_spends
from secagg.privacy.spend import Spend
from secagg.reasons import Reason as Code

OK = Code.OK

#: filters whose privacy cost depends on how many entries the update has
SIZE_DEPENDENT = frozenset({"svt", "distributed_gaussian"})
DISTRIBUTED = "distributed_gaussian"


def distributed_dp_allowed(mode: str) -> bool:
    """Modes where distributed noise is enough: the sum is formed exactly from integer shares that
    no party outside an attested enclave sees one of: masked in ``mask`` and ``tee-mask``, sealed to
    the enclave in ``tee`` (which sums the shares in Z_2^32 as the mask protocol does and averages
    them uniformly). In ``he`` every site holds the secret key and in ``plain`` the aggregator reads
    each update, so a share of the noise would leave one update almost bare."""
    return traits(mode).sums_shares


@dataclass(frozen=True)
class Reason:
    rule: str
    ok: bool
    code: str
    text: str


@dataclass(frozen=True)
class Decision:
    accept: bool
    reasons: list[Reason] = field(default_factory=list)
    #: the filter chain the site will apply: the job's requests, strengthened by the site's rules
    effective_privacy: list[AnyFilter] = field(default_factory=list)
    #: the job's worst-case spend over all its rounds, as the ledger composes it (None: no budget)
    worst_case: Composition | None = None
    #: the update's entry count the spend was computed for (None: not needed or unknown)
    n_params: int | None = None
    #: the releases ``worst_case`` composes, one per filter and round: what a site hands to
    #: ``Ledger.admission_check`` to check the job against what its data set has already spent
    spends: list[Spend] = field(default_factory=list)

    @property
    def failed(self) -> list[Reason]:
        return [r for r in self.reasons if not r.ok]

    def to_dict(self) -> dict[str, object]:
        """For the audit log and the declined-task message to the aggregator."""
        out: dict[str, object] = {
            "accept": self.accept,
            "codes": [r.code for r in self.failed],
            "reasons": [{"rule": r.rule, "ok": r.ok, "code": r.code, "text": r.text} for r in self.reasons],
        }
        if self.worst_case is not None:
            w = self.worst_case
            out["worst_case"] = {"epsilon": w.epsilon, "delta": w.delta, "n_params": self.n_params}
        return out

    def raise_if_refused(self) -> None:
        if not self.accept:
            first = self.failed[0]
            raise PolicyRefusal("; ".join(r.text for r in self.failed), code=first.code)


def _signer_rule(policy: SitePolicy, signers: Sequence[SignerInfo]) -> Reason:
    if not signers:
        return Reason(
            "signer", False, Code.SIGNER_UNVERIFIED, "No verified signature: the signer is unknown."
        )
    for s in signers:
        if s.kind == "provisioned" and s.name in policy.signers.submitters and s.role in SUBMIT_ROLES:
            return Reason("signer", True, OK, f"Signed by {s.describe()}, a submitter this site trusts.")
        if s.kind == "sigstore" and any(
            t.identity == s.name and t.issuer == s.issuer for t in policy.signers.sigstore
        ):
            return Reason("signer", True, OK, f"Signed by {s.describe()}, which this site trusts.")
    who = ", ".join(s.describe() for s in signers)
    return Reason("signer", False, Code.SIGNER_UNTRUSTED, f"Signed by {who}, whom this site does not trust.")


def _weaker_knobs(job_f: AnyFilter, site_f: AnyFilter) -> list[str]:
    """Where ``job_f`` is weaker than ``site_f`` (same filter name), in words; the verdict itself is
    ``secagg.privacy.stronger_or_equal``'s, so this only explains it."""
    if isinstance(site_f, ExcludeFilter) and isinstance(job_f, ExcludeFilter):
        missing = sorted(set(site_f.tensors) - set(job_f.tensors))
        return [f"does not exclude {', '.join(missing)}"] if missing else []
    weaker = []
    for name, smaller in STRONGER_WHEN_SMALLER[site_f.name].items():
        want, got = getattr(site_f, name), getattr(job_f, name)
        if want is None:
            continue
        if got is None:
            weaker.append(f"{name} unset (site requires {want})")
        elif (got > want) if smaller else (got < want):
            weaker.append(f"{name} {got} is {'above' if smaller else 'below'} the site's {want}")
    return weaker


def _compare(job_f: AnyFilter, site_f: AnyFilter) -> list[str]:
    """Empty when ``job_f`` protects at least as much as ``site_f``; otherwise the reasons it does not."""
    if stronger_or_equal(job_f, site_f):
        return []
    return _weaker_knobs(job_f, site_f) or ["weaker than the site's settings"]


def _privacy_rules(policy: SitePolicy, job: JobSpec) -> tuple[list[Reason], list[AnyFilter]]:
    reasons: list[Reason] = []
    chain: list[AnyFilter] = list(job.privacy)
    requested = {f.name for f in job.privacy}
    for site_f in policy.privacy.required:
        rule = f"privacy.{site_f.name}"
        same = [f for f in job.privacy if f.name == site_f.name]
        if not same:
            chain.append(site_f)
            how = (
                "trains the job's unchanged code with it"
                if site_f.name in TRAINING_TIME_FILTERS
                else "adds it to every update"
            )
            reasons.append(
                Reason(
                    rule,
                    True,
                    OK,
                    f"The job does not request {site_f.name}; the site {how}, at its own settings.",
                )
            )
            continue
        problems = [p for f in same for p in _compare(f, site_f)]
        if problems:
            reasons.append(
                Reason(
                    rule,
                    False,
                    Code.PRIVACY_WEAKER,
                    f"The job's {site_f.name} settings are "
                    f"weaker than this site allows: {'; '.join(problems)}.",
                )
            )
        else:
            reasons.append(
                Reason(
                    rule,
                    True,
                    OK,
                    f"The job's {site_f.name} settings are at least as strict as this site requires.",
                )
            )
    if not policy.privacy.required:
        reasons.append(
            Reason(
                "privacy",
                True,
                OK,
                "This site requires no privacy filter."
                + (f" The job requests: {', '.join(sorted(requested))}." if requested else ""),
            )
        )
    return reasons, chain


def distributed_filter(policy: SitePolicy, job: JobSpec) -> DistributedGaussianFilter | None:
    """The ``distributed_gaussian`` filter of the chain admission built for ``job`` under ``policy``
    (the job's own request or the site's requirement), so a mode can finish its encoding."""
    _, chain = _privacy_rules(policy, job)
    return next((f for f in chain if isinstance(f, DistributedGaussianFilter)), None)


def _distributed_rules(job: JobSpec, chain: Sequence[AnyFilter]) -> list[Reason]:
    """``distributed_gaussian`` only where one update is hidden, and never with fewer sites in a sum
    than the honest sites its noise shares are split across."""
    out: list[Reason] = []
    for f in chain:
        if not isinstance(f, DistributedGaussianFilter):
            continue
        m = f.min_honest_sites
        if not distributed_dp_allowed(job.mode):
            out.append(
                Reason(
                    "privacy.distributed_gaussian",
                    False,
                    Code.DISTRIBUTED_DP_MODE,
                    f"distributed_gaussian splits its noise across {m} sites, but in mode {job.mode} "
                    "a single site's update is visible to some party, where its share of the noise "
                    "protects it hardly at all; use mask, tee-mask or tee.",
                )
            )
            continue
        floor = [("min_sites", job.min_sites)]
        if traits(job.mode).masked and job.mask is not None:
            floor.append(("mask threshold", job.mask.threshold))
        short = [f"{what} {v}" for what, v in floor if v < m]
        if short:
            out.append(
                Reason(
                    "privacy.distributed_gaussian",
                    False,
                    Code.DISTRIBUTED_DP_SITES,
                    f"distributed_gaussian needs {m} honest sites in every sum, but the job's "
                    f"{' and '.join(short)} would let a round be summed over fewer.",
                )
            )
        else:
            out.append(
                Reason(
                    "privacy.distributed_gaussian",
                    True,
                    OK,
                    f"Any {m} honest sites' noise shares add up to noise multiplier "
                    f"{f.noise_multiplier} on the sum; every round sums at least {m} sites.",
                )
            )
    return out


def worst_case_spend(
    chain: Sequence[AnyFilter], rounds: int, n_params: int, budget_delta: float
) -> Composition:
    """The job's worst-case spend: ``rounds`` releases through ``chain`` for an ``n_params``-entry update.

    The privacy package's own functions, the ones the ledger debits and composes with, so admission and
    the ledger never disagree: per-release costs from ``spend_of`` (SVT: eps_1 + eps_1 (2c)^(2/3) +
    c * noise_var for c shared entries), then ``compose`` at the budget's delta (Opacus RDP for the
    Gaussian filter, basic composition for SVT and DP-SGD's declared targets). Raises ``ConfigError``
    when a cost is not a finite number.
    """
    return compose(worst_case_spends(list(chain), n_params, rounds), budget_delta)


def _budget_rule(
    policy: SitePolicy, job: JobSpec, chain: Sequence[AnyFilter], n_params: int | None, job_root: Path | None
) -> tuple[Reason, Composition | None, int | None]:
    budget = policy.privacy.budget
    if budget is None:
        return Reason("budget", True, OK, "This site declares no privacy budget."), None, n_params
    sized = [f.name for f in chain if f.name in SIZE_DEPENDENT]
    if sized and n_params is None and job_root is not None:
        try:
            n_params = count_parameters(job_root / job.model)
        except ConfigError as exc:
            return _size_unknown(sized, str(exc)), None, None
    if sized and n_params is None:
        return _size_unknown(sized, "no model was given to count its parameters"), None, None
    try:
        c = worst_case_spend(chain, job.rounds, n_params or 0, budget.delta)
    except ConfigError as exc:
        text = f"The job's worst-case privacy spend is not a finite number ({exc})."
        return Reason("budget", False, Code.BUDGET_EXCEEDED, text), None, n_params
    size = f" of a {n_params}-parameter update" if sized else ""
    spend = (
        f"worst-case privacy spend over {job.rounds} rounds{size}, epsilon {c.epsilon:.4g}, "
        f"delta {c.delta:.3g} ({c.method}),"
    )
    limit = f"the budget (epsilon {budget.epsilon}, delta {budget.delta})"
    if c.epsilon <= budget.epsilon and c.delta <= budget.delta:
        return Reason("budget", True, OK, f"The {spend} is within {limit}."), c, n_params
    return Reason("budget", False, Code.BUDGET_EXCEEDED, f"The {spend} is more than {limit}."), c, n_params


def _size_unknown(names: Sequence[str], why: str) -> Reason:
    return Reason(
        "budget",
        False,
        Code.MODEL_SIZE_UNKNOWN,
        f"The job uses {', '.join(sorted(set(names)))}, whose privacy cost grows with the number of "
        f"entries it shares, and the model's size is unknown ({why}); the budget cannot be checked.",
    )


def decide(
    policy: SitePolicy,
    job: JobSpec,
    signer: SignerInfo | Sequence[SignerInfo] | None,
    *,
    n_params: int | None = None,
    job_root: Path | None = None,
) -> Decision:
    """Every rule's verdict on ``job``. ``n_params`` is the update's entry count (SVT's cost grows with
    it); if not given, it is read from the model file under ``job_root`` when the budget needs it."""
    signers = [signer] if isinstance(signer, SignerInfo) else list(signer or [])
    reasons = [_signer_rule(policy, signers)]

    if job.mode in policy.modes:
        reasons.append(Reason("mode", True, OK, f"Mode {job.mode} is allowed here."))
    else:
        reasons.append(
            Reason(
                "mode",
                False,
                Code.MODE_NOT_ALLOWED,
                f"Mode {job.mode} is not allowed; this site accepts {', '.join(policy.modes)}.",
            )
        )

    lim = policy.limits
    if lim.max_rounds is None or job.rounds <= lim.max_rounds:
        reasons.append(
            Reason(
                "rounds",
                True,
                OK,
                f"{job.rounds} rounds"
                + (f" (limit {lim.max_rounds})." if lim.max_rounds else " (no limit set)."),
            )
        )
    else:
        reasons.append(
            Reason(
                "rounds",
                False,
                Code.TOO_MANY_ROUNDS,
                f"{job.rounds} rounds is more than this site's limit of {lim.max_rounds}.",
            )
        )
    if job.min_sites >= lim.min_sites_per_round:
        reasons.append(
            Reason(
                "min_sites",
                True,
                OK,
                f"Each round needs at least {job.min_sites} sites (site minimum {lim.min_sites_per_round}).",
            )
        )
    else:
        reasons.append(
            Reason(
                "min_sites",
                False,
                Code.TOO_FEW_SITES,
                f"The job would aggregate as few as "
                f"{job.min_sites} sites; this site requires at least {lim.min_sites_per_round} "
                "so its update is never combined with too few others.",
            )
        )
    if traits(job.mode).masked:
        if job.mask is None:
            reasons.append(
                Reason(
                    "mask",
                    False,
                    Code.MASK_SETTINGS_MISSING,
                    "Mode mask without mask settings (threshold) in job.yaml.",
                )
            )
        elif job.mask.threshold < lim.mask_min_threshold:
            reasons.append(
                Reason(
                    "mask",
                    False,
                    Code.MASK_THRESHOLD_TOO_LOW,
                    f"Mask threshold "
                    f"{job.mask.threshold} is below this site's minimum {lim.mask_min_threshold}.",
                )
            )
        else:
            reasons.append(
                Reason(
                    "mask",
                    True,
                    OK,
                    f"Mask threshold {job.mask.threshold} meets the minimum {lim.mask_min_threshold}.",
                )
            )

    privacy_reasons, chain = _privacy_rules(policy, job)
    reasons += privacy_reasons

    reasons += _distributed_rules(job, chain)

    budget_reason, worst, n_params = _budget_rule(policy, job, chain, n_params, job_root)
    reasons.append(budget_reason)
    spends = worst_case_spends(list(chain), n_params or 0, job.rounds) if worst is not None else []

    if traits(job.mode).attested:
        att = policy.attestation
        if att is None:
            reasons.append(
                Reason(
                    "attestation",
                    False,
                    Code.ATTESTATION_MISSING,
                    f"Mode {job.mode} needs attestation rules in the policy, and there are none.",
                )
            )
        else:
            reasons.append(
                Reason(
                    "attestation",
                    True,
                    OK,
                    "Updates are sealed only to an aggregator whose "
                    f"fresh {'/'.join(att.types)} evidence matches the attestation rules.",
                )
            )

    if job.evaluation == "cross_site":
        from secagg.policy.evaluation import share_decision

        share = share_decision(policy, job, chain)
        reasons.append(Reason("evaluation", True, OK, share.text))

    return Decision(
        accept=all(r.ok for r in reasons),
        reasons=reasons,
        effective_privacy=chain,
        worst_case=worst,
        n_params=n_params,
        spends=spends,
    )

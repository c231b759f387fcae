"""Would this site run this job? A pure function of (policy, job.yaml, verified signer).

Every rule is evaluated, even after one fails, so the site operator and the aggregator see the whole
picture in one pass. Each rule yields a :class:`Reason` with a short ``code`` (reported to the
aggregator and written to the audit log) and a sentence a security officer can read.

*Validate*, not *verify*: the signer passed in must come from ``secagg.jobs.verify_job``; here we only
ask whether this site trusts that signer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from secagg.errors import PolicyRefusal
from secagg.jobs.filters import STRONGER_WHEN_SMALLER, TRAINING_TIME_FILTERS, AnyFilter, ExcludeFilter
from secagg.jobs.signer import SUBMIT_ROLES, SignerInfo
from secagg.jobs.spec import JobSpec
from secagg.policy.model import SitePolicy

OK = "ok"


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

    @property
    def failed(self) -> list[Reason]:
        return [r for r in self.reasons if not r.ok]

    def to_dict(self) -> dict[str, object]:
        """For the audit log and the declined-task message to the aggregator."""
        return {
            "accept": self.accept,
            "codes": [r.code for r in self.failed],
            "reasons": [{"rule": r.rule, "ok": r.ok, "code": r.code, "text": r.text} for r in self.reasons],
        }

    def raise_if_refused(self) -> None:
        if not self.accept:
            first = self.failed[0]
            raise PolicyRefusal("; ".join(r.text for r in self.failed), code=first.code)


def _signer_rule(policy: SitePolicy, signers: Sequence[SignerInfo]) -> Reason:
    if not signers:
        return Reason("signer", False, "signer_unverified", "No verified signature: the signer is unknown.")
    for s in signers:
        if s.kind == "provisioned" and s.name in policy.signers.submitters and s.role in SUBMIT_ROLES:
            return Reason("signer", True, OK, f"Signed by {s.describe()}, a submitter this site trusts.")
        if s.kind == "sigstore" and any(
            t.identity == s.name and t.issuer == s.issuer for t in policy.signers.sigstore
        ):
            return Reason("signer", True, OK, f"Signed by {s.describe()}, which this site trusts.")
    who = ", ".join(s.describe() for s in signers)
    return Reason("signer", False, "signer_untrusted", f"Signed by {who}, whom this site does not trust.")


def _compare(job_f: AnyFilter, site_f: AnyFilter) -> list[str]:
    """Where ``job_f`` is weaker than ``site_f`` (same filter name), in words."""
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


def _privacy_rules(policy: SitePolicy, job: JobSpec) -> tuple[list[Reason], list[AnyFilter]]:
    reasons: list[Reason] = []
    chain: list[AnyFilter] = list(job.privacy)
    requested = {f.name for f in job.privacy}
    for site_f in policy.privacy.required:
        rule = f"privacy.{site_f.name}"
        same = [f for f in job.privacy if f.name == site_f.name]
        if not same:
            if site_f.name in TRAINING_TIME_FILTERS:
                reasons.append(
                    Reason(
                        rule,
                        False,
                        "required_filter_missing",
                        f"The site requires {site_f.name} during training and the job does not "
                        "use it; it cannot be added after training.",
                    )
                )
            else:
                chain.append(site_f)
                reasons.append(
                    Reason(
                        rule,
                        True,
                        OK,
                        f"The job does not request {site_f.name}; the site "
                        "adds it with its own settings to every update.",
                    )
                )
            continue
        problems = [p for f in same for p in _compare(f, site_f)]
        if problems:
            reasons.append(
                Reason(
                    rule,
                    False,
                    "privacy_weaker",
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


def worst_case_spend(
    chain: Sequence[AnyFilter], rounds: int, delta_budget: float
) -> tuple[float, float, list[str]]:
    """(epsilon, delta) spent over ``rounds`` by basic composition, and notes on how it was counted.

    Basic composition over-counts, which is the safe direction for a refusal rule. The Gaussian filter
    uses the classical bound eps = sqrt(2 ln(1.25/d)) / z with the budget's delta split evenly over
    rounds; percentile and exclude give no differential-privacy guarantee and count as zero.
    """
    eps_r, delta_r, notes = 0.0, 0.0, []
    for f in chain:
        if f.name == "svt":
            eps_r += f.epsilon
        elif f.name == "dpsgd":
            eps_r += f.target_epsilon
            delta_r += f.target_delta
        elif f.name == "gaussian":
            d = delta_budget / rounds if delta_budget > 0 else 0.0
            if d <= 0:
                return math.inf, math.inf, ["the gaussian filter needs a delta > 0 in the budget"]
            eps_r += math.sqrt(2 * math.log(1.25 / d)) / f.noise_multiplier
            delta_r += d
            notes.append("gaussian counted with the classical bound")
    return eps_r * rounds, delta_r * rounds, notes


def decide(policy: SitePolicy, job: JobSpec, signer: SignerInfo | Sequence[SignerInfo] | None) -> Decision:
    signers = [signer] if isinstance(signer, SignerInfo) else list(signer or [])
    reasons = [_signer_rule(policy, signers)]

    if job.mode in policy.modes:
        reasons.append(Reason("mode", True, OK, f"Mode {job.mode} is allowed here."))
    else:
        reasons.append(
            Reason(
                "mode",
                False,
                "mode_not_allowed",
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
                "too_many_rounds",
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
                "too_few_sites",
                f"The job would aggregate as few as "
                f"{job.min_sites} sites; this site requires at least {lim.min_sites_per_round} "
                "so its update is never combined with too few others.",
            )
        )
    if job.mode == "mask":
        if job.mask is None:
            reasons.append(
                Reason(
                    "mask",
                    False,
                    "mask_settings_missing",
                    "Mode mask without mask settings (threshold) in job.yaml.",
                )
            )
        elif job.mask.threshold < lim.mask_min_threshold:
            reasons.append(
                Reason(
                    "mask",
                    False,
                    "mask_threshold_too_low",
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

    budget = policy.privacy.budget
    if budget is None:
        reasons.append(Reason("budget", True, OK, "This site declares no privacy budget."))
    else:
        eps, delta, notes = worst_case_spend(chain, job.rounds, budget.delta)
        spend = f"worst case epsilon {eps:.4g}, delta {delta:.3g} over {job.rounds} rounds"
        extra = f" ({'; '.join(notes)})" if notes else ""
        if eps <= budget.epsilon and delta <= budget.delta:
            reasons.append(
                Reason(
                    "budget",
                    True,
                    OK,
                    f"Privacy spend, {spend}{extra}, is within the "
                    f"budget (epsilon {budget.epsilon}, delta {budget.delta}).",
                )
            )
        else:
            reasons.append(
                Reason(
                    "budget",
                    False,
                    "budget_exceeded",
                    f"Privacy spend, {spend}{extra}, is "
                    f"more than the budget (epsilon {budget.epsilon}, delta {budget.delta}).",
                )
            )

    if job.mode == "tee":
        att = policy.attestation
        if att is None:
            reasons.append(
                Reason(
                    "attestation",
                    False,
                    "attestation_missing",
                    "Mode tee needs attestation rules in the policy, and there are none.",
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

    return Decision(accept=all(r.ok for r in reasons), reasons=reasons, effective_privacy=chain)

"""Whether this site shares its last local model for a job's cross-site evaluation: one function, read
by ``policy explain`` (as a rule line of the decision) and by the agent when the job ends, so the two
can never disagree.

Sharing is consent, not a privacy filter: it is off unless the policy sets
``privacy.share_local_model_for_evaluation``. Where it is on, a site still does not share a release
whose protection holds only in the aggregate: ``distributed_gaussian`` adds to each site only its
``1/m`` share of the noise, so one site's released model alone is not differentially private.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from secagg.jobs.filters import AnyFilter
from secagg.jobs.spec import JobSpec
from secagg.policy.model import SitePolicy
from secagg.reasons import Reason


@dataclass(frozen=True)
class ShareDecision:
    """``share``: this site's local model may be sealed to the other sites; ``code``: ``ok`` or the
    reason code why not; ``text``: one sentence for a security officer."""

    share: bool
    code: str
    text: str


def share_decision(policy: SitePolicy, job: JobSpec, chain: Sequence[AnyFilter]) -> ShareDecision:
    """What this site does with its local model in ``job`` (``chain``: the effective filters)."""
    if job.evaluation != "cross_site":
        return ShareDecision(False, Reason.OK, "The job asks only for the final global model's evaluation.")
    if not policy.privacy.share_local_model_for_evaluation:
        return ShareDecision(
            False,
            Reason.XSITE_NOT_SHARED,
            "The job asks for cross-site evaluation: this site evaluates the final global model and "
            "does not share its own local model (share_local_model_for_evaluation is false), so no "
            "site's local model is evaluated.",
        )
    if any(f.name == "distributed_gaussian" for f in chain):
        return ShareDecision(
            False,
            Reason.XSITE_UNSAFE_RELEASE,
            "The job asks for cross-site evaluation, but this site's release carries only its share of "
            "distributed_gaussian noise: its local model alone is not private, so it is not shared.",
        )
    return ShareDecision(
        True,
        Reason.OK,
        "The job asks for cross-site evaluation: if every site agrees, this site's last released local "
        "model is sealed to each other site (never readable by the aggregator) and evaluated there; "
        "it spends no privacy budget (it is the release already debited).",
    )


__all__ = ["ShareDecision", "share_decision"]

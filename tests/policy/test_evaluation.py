"""share_local_model_for_evaluation: off by default, shown by ``policy explain``, and never on for a
release whose protection holds only in the sum."""

from __future__ import annotations

from typing import Any

from secagg.jobs import JobSpec, SignerInfo
from secagg.policy import SitePolicy
from secagg.policy import decide as _decide
from secagg.policy.evaluation import share_decision
from secagg.policy.explain import describe_policy, render_decision
from secagg.reasons import Reason

LEAD = SignerInfo(kind="provisioned", name="submitter@org-1", org="org-1", role="lead")
DDG = {"name": "distributed_gaussian", "clip": 1.0, "noise_multiplier": 1.0, "min_honest_sites": 3}


def _policy(share: bool | None = None, required: list[dict[str, Any]] | None = None) -> SitePolicy:
    privacy: dict[str, Any] = {"required": required or []}
    if share is not None:
        privacy["share_local_model_for_evaluation"] = share
    return SitePolicy.model_validate(
        {
            "version": 1,
            "signers": {"submitters": ["submitter@org-1"]},
            "modes": ["plain", "mask"],
            "privacy": privacy,
        }
    )


def _job(evaluation: str = "cross_site", mode: str = "plain") -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "j",
            "rounds": 2,
            "min_sites": 3,
            "mode": mode,
            "model": "m.safetensors",
            "entry": "train.py",
            "evaluation": evaluation,
            **({"mask": {"threshold": 3}} if mode == "mask" else {}),
        }
    )


def test_off_by_default_and_said_so() -> None:
    policy = _policy()
    assert policy.privacy.share_local_model_for_evaluation is False
    d = share_decision(policy, _job(), [])
    assert (d.share, d.code) == (False, Reason.XSITE_NOT_SHARED)
    assert any(
        "is never shared (share_local_model_for_evaluation: false)" in line
        for line in describe_policy(policy)
    )
    assert _job("global").evaluation == "global" and JobSpec.model_fields["evaluation"].default == "global"


def test_explain_with_a_cross_site_job_names_what_the_site_does() -> None:
    decision = _decide(_policy(share=True), _job(), LEAD, n_params=10)
    assert decision.accept
    text = "\n".join(render_decision(decision))
    assert "ok   evaluation: The job asks for cross-site evaluation: if every site agrees" in text
    assert "MAY be sealed to the other sites" in "\n".join(describe_policy(_policy(share=True)))
    assert "evaluation" not in [
        r.rule for r in _decide(_policy(share=True), _job("global"), LEAD, n_params=10).reasons
    ]


def test_a_release_protected_only_in_the_sum_is_never_shared() -> None:
    policy = _policy(share=True, required=[DDG])
    decision = _decide(policy, _job(mode="mask"), LEAD, n_params=10)
    d = share_decision(policy, _job(mode="mask"), decision.effective_privacy)
    assert (d.share, d.code) == (False, Reason.XSITE_UNSAFE_RELEASE)

"""``decide``: every rule, each refusal with its reason code, and all rules evaluated together."""

from __future__ import annotations

import math
from typing import Any

import pytest

from secagg.errors import PolicyRefusal
from secagg.jobs import JobSpec, SignerInfo
from secagg.policy import SitePolicy, decide, worst_case_spend

LEAD = SignerInfo(kind="provisioned", name="submitter@org-1", org="org-1", role="lead")
CI_ID = "https://github.com/x/y/.github/workflows/release.yml@refs/heads/main"
GHA = "https://token.actions.githubusercontent.com"
SVT = {"name": "svt", "fraction": 0.25, "epsilon": 0.1, "noise_var": 0.1, "gamma": 1e-5, "tau": 1e-6}


def policy(**over: Any) -> SitePolicy:
    base: dict[str, Any] = {
        "version": 1,
        "signers": {"submitters": ["submitter@org-1"], "sigstore": [{"identity": CI_ID, "issuer": GHA}]},
        "modes": ["he", "mask", "tee"],
        "privacy": {
            "required": [SVT, {"name": "percentile", "percentile": 25}],
            "budget": {"epsilon": 1.0, "delta": 1e-5},
        },
        "attestation": {"types": ["sev-snp"], "measurements": ["ab" * 48]},
        "limits": {"max_rounds": 10, "min_sites_per_round": 3, "mask_min_threshold": 3},
    }
    base.update(over)
    return SitePolicy.model_validate(base)


def job(**over: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": "j",
        "rounds": 5,
        "min_sites": 3,
        "mode": "he",
        "model": "m",
        "entry": "t.py",
    }
    base.update(over)
    return JobSpec.model_validate(base)


def codes(decision) -> list[str]:
    return [r.code for r in decision.reasons if not r.ok]


def test_accept_and_site_adds_required_filters() -> None:
    d = decide(policy(), job(), LEAD)
    assert d.accept and codes(d) == []
    assert [f.name for f in d.effective_privacy] == ["svt", "percentile"]
    assert {r.rule for r in d.reasons} >= {"signer", "mode", "rounds", "min_sites", "privacy.svt", "budget"}


def test_signer_untrusted() -> None:
    other = SignerInfo(kind="provisioned", name="admin@lead", org="lead", role="project_admin")
    assert codes(decide(policy(), job(), other)) == ["signer_untrusted"]


def test_listed_name_with_member_role_is_untrusted() -> None:
    member = SignerInfo(kind="provisioned", name="submitter@org-1", org="org-1", role="member")
    assert codes(decide(policy(), job(), member)) == ["signer_untrusted"]


def test_unverified_signer() -> None:
    assert codes(decide(policy(), job(), None)) == ["signer_unverified"]


def test_sigstore_signer() -> None:
    assert decide(policy(), job(), SignerInfo(kind="sigstore", name=CI_ID, issuer=GHA)).accept
    wrong_issuer = SignerInfo(kind="sigstore", name=CI_ID, issuer="https://accounts.google.com")
    assert codes(decide(policy(), job(), wrong_issuer)) == ["signer_untrusted"]


def test_mode_not_allowed() -> None:
    assert codes(decide(policy(), job(mode="plain"), LEAD)) == ["mode_not_allowed"]


def test_too_many_rounds() -> None:
    assert "too_many_rounds" in codes(decide(policy(), job(rounds=11), LEAD))


def test_too_few_sites() -> None:
    assert codes(decide(policy(), job(min_sites=2), LEAD)) == ["too_few_sites"]


def test_mask_threshold() -> None:
    assert codes(decide(policy(), job(mode="mask"), LEAD)) == ["mask_settings_missing"]
    low = job(mode="mask", mask={"threshold": 2})
    assert codes(decide(policy(), low, LEAD)) == ["mask_threshold_too_low"]
    assert decide(policy(), job(mode="mask", mask={"threshold": 3}), LEAD).accept


@pytest.mark.parametrize(
    ("requested", "needle"),
    [
        ({**SVT, "epsilon": 0.2}, "epsilon 0.2 is above the site's 0.1"),
        ({**SVT, "fraction": 0.5}, "fraction 0.5 is above"),
        ({**SVT, "noise_var": 0.01}, "noise_var 0.01 is below"),
        ({"name": "percentile", "percentile": 50}, "percentile 50.0 is above the site's 25.0"),
    ],
)
def test_weaker_job_request_refused(requested: dict, needle: str) -> None:
    d = decide(policy(), job(privacy=[requested]), LEAD)
    assert codes(d) == ["privacy_weaker"]
    assert needle in next(r.text for r in d.reasons if not r.ok)


def test_other_filters_weaker() -> None:
    p = policy(
        privacy={
            "required": [
                {"name": "gaussian", "clip": 1.0, "noise_multiplier": 1.0},
                {"name": "exclude", "tensors": ["bn.*", "head.weight"]},
                {"name": "percentile", "percentile": 25, "gamma": 0.1},
            ]
        }
    )
    d = decide(
        p,
        job(
            privacy=[
                {"name": "gaussian", "clip": 2.0, "noise_multiplier": 0.5},
                {"name": "exclude", "tensors": ["bn.*"]},
                {"name": "percentile", "percentile": 10},
            ]
        ),
        LEAD,
    )
    assert codes(d) == ["privacy_weaker"] * 3
    text = " ".join(r.text for r in d.reasons)
    assert "clip 2.0 is above" in text and "noise_multiplier 0.5 is below" in text
    assert "does not exclude head.weight" in text and "gamma unset (site requires 0.1)" in text


def test_stronger_job_request_accepted_and_used() -> None:
    strict = {**SVT, "epsilon": 0.05, "fraction": 0.1}
    d = decide(policy(), job(privacy=[strict]), LEAD)
    assert d.accept
    assert d.effective_privacy[0].epsilon == 0.05  # type: ignore[union-attr]


def test_dpsgd_cannot_be_added_by_site() -> None:
    dp = {"name": "dpsgd", "target_epsilon": 0.1, "target_delta": 1e-7, "max_grad_norm": 1.0}
    p = policy(privacy={"required": [dp], "budget": {"epsilon": 1.0, "delta": 1e-5}})
    assert codes(decide(p, job(), LEAD)) == ["required_filter_missing"]
    assert decide(p, job(privacy=[dp]), LEAD).accept


def test_budget_exceeded() -> None:
    # 5 rounds of the site's SVT at 0.1 fit the budget of 1.0; 10 rounds of a job's 0.15 do not
    assert decide(policy(), job(rounds=10), LEAD).accept
    d = decide(policy(), job(rounds=10, privacy=[{**SVT, "epsilon": 0.1}, {**SVT, "epsilon": 0.05}]), LEAD)
    assert codes(d) == ["budget_exceeded"]


def test_worst_case_spend_gaussian() -> None:
    from secagg.jobs.filters import GaussianFilter

    g = GaussianFilter(name="gaussian", clip=1.0, noise_multiplier=2.0)
    eps, delta, _ = worst_case_spend([g], rounds=4, delta_budget=1e-5)
    assert eps == pytest.approx(4 * math.sqrt(2 * math.log(1.25 / 2.5e-6)) / 2.0)
    assert delta == pytest.approx(1e-5)
    assert worst_case_spend([g], rounds=4, delta_budget=0.0)[0] == math.inf


def test_tee_needs_attestation() -> None:
    assert decide(policy(), job(mode="tee"), LEAD).accept
    assert codes(decide(policy(attestation=None), job(mode="tee"), LEAD)) == ["attestation_missing"]


def test_every_rule_is_evaluated() -> None:
    d = decide(policy(), job(mode="plain", rounds=50, min_sites=1, privacy=[{**SVT, "epsilon": 0.5}]), None)
    assert codes(d) == [
        "signer_unverified",
        "mode_not_allowed",
        "too_many_rounds",
        "too_few_sites",
        "privacy_weaker",
        "budget_exceeded",
    ]
    with pytest.raises(PolicyRefusal) as info:
        d.raise_if_refused()
    assert info.value.code == "signer_unverified"

"""``decide``: every rule, each refusal with its reason code, and all rules evaluated together."""

from __future__ import annotations

import math
from typing import Any

import pytest

from secagg.errors import PolicyRefusal
from secagg.jobs import JobSpec, SignerInfo
from secagg.policy import Decision, SitePolicy, worst_case_spend
from secagg.policy import decide as _decide

LEAD = SignerInfo(kind="provisioned", name="submitter@org-1", org="org-1", role="lead")
CI_ID = "https://github.com/x/y/.github/workflows/release.yml@refs/heads/main"
GHA = "https://token.actions.githubusercontent.com"
SVT = {"name": "svt", "fraction": 0.25, "epsilon": 0.01, "noise_var": 0.01, "gamma": 1e-5, "tau": 1e-6}
#: a 100-parameter model: SVT at 25 % shares c = 25 entries a round, which costs
#: 0.01 + 0.01 * 50^(2/3) + 25 * 0.01 = 0.3957 (5 rounds: 1.98, 10 rounds: 3.96; the budget is 3.0)
N = 100


def decide(p: SitePolicy, j: JobSpec, s: Any, **kw: Any) -> Decision:
    return _decide(p, j, s, **{"n_params": N, **kw})


def policy(**over: Any) -> SitePolicy:
    base: dict[str, Any] = {
        "version": 1,
        "signers": {"submitters": ["submitter@org-1"], "sigstore": [{"identity": CI_ID, "issuer": GHA}]},
        "modes": ["he", "mask", "tee"],
        "privacy": {
            "required": [SVT, {"name": "percentile", "percentile": 25}],
            "budget": {"epsilon": 3.0, "delta": 1e-5},
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
        ({**SVT, "epsilon": 0.2}, "epsilon 0.2 is above the site's 0.01"),
        ({**SVT, "fraction": 0.5}, "fraction 0.5 is above"),
        # noise_var is a per-entry epsilon: larger means less noise, so it is the weaker direction
        ({**SVT, "noise_var": 0.1}, "noise_var 0.1 is above the site's 0.01"),
        ({"name": "percentile", "percentile": 50}, "percentile 50.0 is above the site's 25.0"),
    ],
)
def test_weaker_job_request_refused(requested: dict, needle: str) -> None:
    d = decide(policy(), job(privacy=[requested]), LEAD)
    # a weaker SVT also costs more, so it may break the budget too; the weakness is reported first
    assert codes(d)[0] == "privacy_weaker" and set(codes(d)) <= {"privacy_weaker", "budget_exceeded"}
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
    strict = {**SVT, "epsilon": 0.005, "fraction": 0.1, "noise_var": 0.001}
    d = decide(policy(), job(privacy=[strict]), LEAD)
    assert d.accept
    assert d.effective_privacy[0].epsilon == 0.005  # type: ignore[union-attr]


def test_dpsgd_is_added_by_the_site_and_a_job_may_ask_for_more_epochs() -> None:
    dp = {"name": "dpsgd", "target_epsilon": 0.1, "target_delta": 1e-7, "max_grad_norm": 1.0}
    p = policy(privacy={"required": [dp], "budget": {"epsilon": 1.0, "delta": 1e-5}})
    added = decide(p, job(), LEAD)
    assert added.accept
    assert [(f.name, f.epochs) for f in added.effective_privacy] == [("dpsgd", 1)]  # type: ignore[union-attr]
    own = decide(p, job(privacy=[{**dp, "epochs": 3}]), LEAD)
    assert own.accept and own.effective_privacy[0].epochs == 3  # type: ignore[union-attr]
    assert codes(decide(p, job(privacy=[{**dp, "target_epsilon": 0.2}]), LEAD)) == ["privacy_weaker"]


def test_budget_exceeded() -> None:
    # 5 rounds of the site's SVT on 100 parameters cost 1.98 and fit the budget of 3.0; 10 cost 3.96
    ok = decide(policy(), job(rounds=5), LEAD)
    assert (
        ok.accept and ok.worst_case is not None and ok.worst_case.epsilon == pytest.approx(1.9784, abs=1e-3)
    )
    d = decide(policy(), job(rounds=10), LEAD)
    assert codes(d) == ["budget_exceeded"]
    text = next(r.text for r in d.reasons if r.rule == "budget")
    assert "100-parameter update" in text and "more than the budget (epsilon 3.0" in text


def test_svt_cost_grows_with_the_model() -> None:
    # the same job and policy: fits on a small model, refused on a large one (c * noise_var dominates)
    assert decide(policy(), job(rounds=5), LEAD, n_params=50).accept
    assert codes(decide(policy(), job(rounds=5), LEAD, n_params=1000)) == ["budget_exceeded"]


def test_model_size_unknown_is_refused() -> None:
    d = _decide(policy(), job(), LEAD)
    assert codes(d) == ["model_size_unknown"]
    assert "grows with the number of entries" in next(r.text for r in d.reasons if not r.ok)
    # no size-dependent filter in the chain: nothing to count, the budget is checked without it
    dp = {"name": "dpsgd", "target_epsilon": 0.1, "target_delta": 1e-7, "max_grad_norm": 1.0}
    p = policy(privacy={"required": [dp], "budget": {"epsilon": 1.0, "delta": 1e-5}})
    assert _decide(p, job(privacy=[dp]), LEAD).accept


def test_non_finite_spend_is_refused_not_raised() -> None:
    huge = {**SVT, "noise_var": 1e308, "fraction": 0.01}
    p = policy(privacy={"required": [], "budget": {"epsilon": 1.0, "delta": 1e-5}})
    d = decide(p, job(privacy=[huge]), LEAD, n_params=1000)
    assert codes(d) == ["budget_exceeded"] and "not a finite number" in d.failed[0].text


def test_worst_case_spend_gaussian_is_rdp() -> None:
    from secagg.jobs.filters import GaussianFilter
    from secagg.privacy import rdp_epsilon

    g = GaussianFilter(name="gaussian", clip=1.0, noise_multiplier=2.0)
    c = worst_case_spend([g], rounds=4, n_params=N, budget_delta=1e-5)
    assert c.epsilon == pytest.approx(rdp_epsilon([(2.0, 1.0, 4)], 1e-5)) and c.delta == 1e-5
    assert "RDP" in c.method and c.n_rdp == 4
    assert worst_case_spend([g], rounds=4, n_params=N, budget_delta=0.0).epsilon == math.inf


def test_tee_needs_attestation() -> None:
    assert decide(policy(), job(mode="tee"), LEAD).accept
    assert codes(decide(policy(attestation=None), job(mode="tee"), LEAD)) == ["attestation_missing"]


def test_every_rule_is_evaluated() -> None:
    d = decide(policy(), job(mode="plain", rounds=50, min_sites=1, privacy=[{**SVT, "epsilon": 0.5}]), None)
    assert d.worst_case is not None and d.to_dict()["worst_case"] == {
        "epsilon": d.worst_case.epsilon,
        "delta": 0.0,
        "n_params": N,
    }
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

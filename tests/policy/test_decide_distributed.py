"""Admission of ``distributed_gaussian``: only where no party sees one update, never over fewer sites
than its noise is split across, and its worst case computed with the ledger's own functions."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from secagg.jobs import JobSpec, SignerInfo
from secagg.policy import SitePolicy
from secagg.policy import decide as _decide
from secagg.privacy.accounting import compose, rdp_epsilon
from secagg.privacy.distributed import effective_noise_multiplier
from secagg.privacy.specs import worst_case_spends
from secagg.reasons import Reason

LEAD = SignerInfo(kind="provisioned", name="submitter@org-1", org="org-1", role="lead")
DDG = {"name": "distributed_gaussian", "clip": 1.0, "noise_multiplier": 1.0, "min_honest_sites": 3}
N = 1000


def policy(**over: Any) -> SitePolicy:
    base: dict[str, Any] = {
        "version": 1,
        "signers": {"submitters": ["submitter@org-1"]},
        "modes": ["he", "mask", "tee", "plain"],
        "privacy": {"required": [DDG], "budget": {"epsilon": 100.0, "delta": 1e-5}},
        "attestation": {"types": ["dev-tee"], "allow_insecure_dev_tee": True},
    }
    base.update(over)
    return SitePolicy.model_validate(base)


def job(**over: Any) -> JobSpec:
    base: dict[str, Any] = {
        "name": "j",
        "rounds": 10,
        "min_sites": 3,
        "mode": "mask",
        "mask": {"threshold": 3},
        "model": "m",
        "entry": "t.py",
    }
    base.update(over)
    return JobSpec.model_validate(base)


def codes(d) -> list[str]:
    return [r.code for r in d.failed]


@pytest.mark.parametrize("mode", ["he", "plain"])
def test_modes_where_one_update_is_visible_are_refused(mode: str) -> None:
    d = _decide(policy(), job(mode=mode, mask=None), LEAD, n_params=N)
    assert not d.accept
    assert codes(d) == [Reason.DISTRIBUTED_DP_MODE]
    assert Reason.DISTRIBUTED_DP_MODE == "distributed_dp_mode"


def test_a_job_asking_for_it_in_he_is_refused_too() -> None:
    p = policy(privacy={"required": [], "budget": {"epsilon": 100.0, "delta": 1e-5}})
    d = _decide(p, job(mode="he", mask=None, privacy=[DDG]), LEAD, n_params=N)
    assert codes(d) == [Reason.DISTRIBUTED_DP_MODE]


@pytest.mark.parametrize("mode", ["mask", "tee-mask", "tee"])
def test_share_summing_modes_accept_with_the_ledger_worst_case(mode: str) -> None:
    # tee-mask: the enclave sums masked integer shares as mask's server does, so no party sees one
    # update; tee: the shares are sealed to the attested enclave, which sums them in Z_2^32 as mask
    # does. Either way the Skellam sum stays exact and the ledger's worst case is the same
    masked = mode != "tee"
    d = _decide(
        policy(modes=["mask", "tee-mask", "tee"]),
        job(mode=mode, mask={"threshold": 3} if masked else None),
        LEAD,
        n_params=N,
    )
    assert d.accept, [r.text for r in d.failed]
    expected = compose(worst_case_spends([DDG], N, 10), 1e-5)
    assert d.worst_case is not None and d.worst_case.epsilon == expected.epsilon
    z_eff = effective_noise_multiplier(1.0, 1.0, 16, N)
    assert d.worst_case.epsilon == rdp_epsilon([(z_eff, 1.0, 1)] * 10, 1e-5)
    assert [s.mechanism for s in d.spends] == ["distributed_gaussian"] * 10


def test_fewer_sites_than_the_honest_minimum_is_refused() -> None:
    d = _decide(policy(), job(min_sites=2, mask={"threshold": 2}), LEAD, n_params=N)
    assert Reason.DISTRIBUTED_DP_SITES in codes(d)
    assert "min_sites 2 and mask threshold 2" in " ".join(r.text for r in d.failed)


def test_tee_with_fewer_sites_than_the_honest_minimum_is_refused() -> None:
    # no mask threshold in tee: the job's min_sites alone bounds how few shares a sum may hold
    d = _decide(policy(), job(mode="tee", mask=None, min_sites=2), LEAD, n_params=N)
    assert codes(d) == [Reason.DISTRIBUTED_DP_SITES]
    assert "min_sites 2 would" in " ".join(r.text for r in d.failed)


def test_budget_is_checked_against_the_sum_level_epsilon() -> None:
    d = _decide(
        policy(privacy={"required": [DDG], "budget": {"epsilon": 5.0, "delta": 1e-5}}),
        job(),
        LEAD,
        n_params=N,
    )
    assert codes(d) == ["budget_exceeded"]  # 10 rounds at z = 1: epsilon about 17


def test_a_weaker_job_request_is_refused() -> None:
    d = _decide(policy(), job(privacy=[{**DDG, "min_honest_sites": 2}]), LEAD, n_params=N)
    assert "privacy_weaker" in codes(d)


def test_example_policy_is_explained_in_words() -> None:
    from pathlib import Path

    from secagg.policy.explain import describe_policy

    doc = yaml.safe_load((Path(__file__).parents[2] / "policies" / "distributed-dp.yaml").read_text())
    text = "\n".join(describe_policy(SitePolicy.model_validate(doc)))
    assert "Skellam" in text and "any 3 honest sites" in text and "noise multiplier 1.1" in text

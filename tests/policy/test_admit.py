"""``admit_job``: the policy's size limit and signers reach verification; the decision comes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secagg.errors import PolicyRefusal
from secagg.jobs import JobRejected, sign_job
from secagg.policy import SitePolicy, admit_job
from secagg.provision.kit import load_kit


def make_policy(**limits) -> SitePolicy:
    return SitePolicy.model_validate(
        {"version": 1, "signers": {"submitters": ["submitter@org-1"]}, "modes": ["he"], "limits": limits}
    )


@pytest.fixture
def job(tmp_path: Path, workspace: Path) -> Path:
    root = tmp_path / "job"
    root.mkdir()
    (root / "job.yaml").write_text("name: j\nrounds: 2\nmin_sites: 2\nmode: he\nmodel: m.bin\nentry: t.py\n")
    (root / "m.bin").write_bytes(b"\1" * 2000)
    (root / "t.py").write_text("pass\n")
    sign_job(root, load_kit(workspace / "submitter@org-1"))
    return root


def test_admit_accepts(job: Path, workspace: Path, tmp_path: Path) -> None:
    verified, decision = admit_job(
        job, make_policy(), load_kit(workspace / "site-1").ca_cert, dest=tmp_path / "run"
    )
    assert decision.accept and verified.root == tmp_path / "run"
    data = decision.to_dict()
    assert data["accept"] is True and data["codes"] == []
    assert json.loads(json.dumps(data))["reasons"][0]["rule"] == "signer"


def test_admit_uses_policy_size_limit(job: Path, workspace: Path) -> None:
    with pytest.raises(JobRejected, match="over the limit of 1000"):
        admit_job(job, make_policy(max_package_bytes=1000), load_kit(workspace / "site-1").ca_cert)


def test_admit_refusal_is_a_decision(job: Path, workspace: Path) -> None:
    _, decision = admit_job(job, make_policy(min_sites_per_round=3), load_kit(workspace / "site-1").ca_cert)
    assert not decision.accept and decision.to_dict()["codes"] == ["too_few_sites"]
    with pytest.raises(PolicyRefusal) as info:
        decision.raise_if_refused()
    assert info.value.code == "too_few_sites"

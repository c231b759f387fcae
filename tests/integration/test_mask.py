"""mask mode end to end over gRPC/mTLS: the aggregator sees only masked vectors, and a site that
drops out mid-round is recovered from its neighbours' shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secagg.agent.site import SimulatedDropout
from tests.integration.harness import TEST_POLICY, expected_global, make_tiny_job, start, write_policies

pytestmark = pytest.mark.slow

MASK_POLICY = TEST_POLICY.replace("modes: [plain, he]", "modes: [plain, he, mask]")
MASK_JOB = {"mask": {"threshold": 2, "clip": 1.0}}


def _policies(tmp: Path) -> dict[str, Path]:
    return write_policies(tmp, MASK_POLICY)


def test_mask_federation_matches_weighted_fedavg(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="mask", rounds=2, extra=MASK_JOB)
    run = start(tmp_path, workspace, job, policies=_policies(tmp_path))
    try:
        run.join()
        assert not run.errors, run.errors
        want = expected_global(2, ["site-1", "site-2", "site-3"])
        got = run.final("site-1")
        # quantisation: 2^-29 fixed point over 3 sites, two rounds
        assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-6
    finally:
        run.stop()
    audit = [
        json.loads(x) for x in (tmp_path / "state" / "aggregator" / "audit.jsonl").read_text().splitlines()
    ]
    phases = [r["phase"] for r in audit if r["event"] == "mask_phase"]
    assert phases[:4] == ["mask-keys", "mask-shares", "upload", "mask-unmask"]


def test_site_dropping_after_share_distribution_is_recovered(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(
        tmp_path / "job", workspace, mode="mask", rounds=2, min_sites=2, round_timeout=20, extra=MASK_JOB
    )
    run = start(tmp_path, workspace, job, policies=_policies(tmp_path))
    run.agents["site-3"].simulate_dropout = (1, "upload")  # vanishes after sharing its keys, before uploading
    try:
        run.join(timeout=120)
        assert set(run.errors) == {"site-3"}, run.errors
        assert isinstance(run.errors["site-3"], SimulatedDropout)
        want = expected_global(2, ["site-1", "site-2"])
        got = run.final("site-2")
        assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-6
        fed = run.server.fed
        assert [r.participants for r in fed.store.rounds(fed.job.job_id)] == [["site-1", "site-2"]] * 2  # type: ignore[union-attr]
    finally:
        run.stop()

"""An aborted job: no site uploads after the abort, no privacy budget is spent for a round that was
not uploaded, and the aggregator stays up."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from secagg.privacy.ledger import Ledger
from secagg.transport.generated import secagg_pb2 as pb
from tests.integration.harness import TEST_POLICY, make_tiny_job, start, write_policies

pytestmark = pytest.mark.slow

POLICY = TEST_POLICY + yaml.safe_dump(
    {
        "privacy": {
            "required": [{"name": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}],
            "budget": {"epsilon": 100.0, "delta": 1e-3},
        }
    }
)


def test_abort_leaves_no_upload_and_no_spent_budget(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="plain", rounds=4)
    pols = write_policies(tmp_path, POLICY)
    run = start(tmp_path, workspace, job, policies=pols)
    fed = run.server.fed
    job_id = fed.job.job_id  # type: ignore[union-attr]

    def abort_after_round_1(record: dict) -> None:
        if record["event"] == "round_completed" and record.get("round") == 1:
            threading.Thread(target=fed.abort, args=(job_id, "admin@lead"), daemon=True).start()

    fed.audit.listeners.append(abort_after_round_1)
    try:
        run.join(timeout=120)
        assert not run.errors, run.errors
        assert [r.round for r in fed.store.rounds(job_id)] == [1]
        assert fed.store.job(job_id).state == "aborted"  # type: ignore[union-attr]
        # the aggregator stays up
        agent = run.agents["site-1"]
        assert agent.stub.Heartbeat(pb.HeartbeatRequest(), timeout=10).job_state == "aborted"
    finally:
        run.stop()
    for site in ("site-1", "site-2", "site-3"):
        audit = [json.loads(x) for x in (tmp_path / "state" / site / "audit.jsonl").read_text().splitlines()]
        uploads = [r for r in audit if r["event"] == "uploaded"]
        assert [r["round"] for r in uploads] == [1], (site, uploads)
        ledger = Ledger(tmp_path / "state" / site / "privacy-ledger.sqlite", site)
        # one debit per uploaded round, none for the aborted round 2
        assert [(e.job, e.round) for e in ledger.entries()] == [(job_id, 1)], site

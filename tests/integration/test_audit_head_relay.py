"""Each site relays its signed audit head to the aggregator at the end of a job (issue #18): the
aggregator checks it against the site's mTLS certificate and records it, so its own log anchors how
far each site's log reached, and a site log cut short later no longer matches what the aggregator
recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secagg.aggregator.federation import Federation
from secagg.auditlog import AuditLog, head_path, verify_audit
from secagg.errors import IntegrityError, UpdateRejected
from secagg.provision.kit import load_kit
from tests.integration.harness import make_tiny_job, start

SITES = ["site-1", "site-2", "site-3"]


def _events(path: Path, event: str) -> list[dict[str, object]]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


@pytest.mark.slow
def test_every_site_relays_its_final_head_and_the_aggregator_records_it(
    tmp_path: Path, workspace: Path
) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="plain", rounds=1)
    run = start(tmp_path, workspace, job)
    try:
        run.join()
        assert not run.errors, run.errors
    finally:
        run.stop()
    agg_log = tmp_path / "state" / "aggregator" / "audit.jsonl"
    verify_audit(agg_log, cert=load_kit(tmp_path / "ws" / "aggregator").cert)
    recorded = {str(r["site"]): r for r in _events(agg_log, "site_audit_head")}
    assert sorted(recorded) == SITES
    for site in SITES:
        log = tmp_path / "state" / site / "audit.jsonl"
        report = verify_audit(log, cert=load_kit(tmp_path / "ws" / site).cert)
        head = json.loads(head_path(log).read_text())
        assert report.head == "signed" and not report.behind
        # the relayed head is the site's last one: nothing after the job's end went unanchored
        assert (recorded[site]["head_seq"], recorded[site]["head_hash"]) == (head["seq"], head["hash"])
        assert _events(log, "job_done")[-1]["seq"] == head["seq"]


def _fed(tmp: Path, workspace: Path) -> tuple[Federation, str]:
    fed = Federation(load_kit(workspace / "aggregator"), tmp / "agg")
    fed.store.add_job("job-1", "tiny", "submitter@org-1", "{}", str(tmp))
    return fed, "job-1"


def test_aggregator_records_a_head_signed_by_the_calling_site(tmp_path: Path, workspace: Path) -> None:
    fed, job = _fed(tmp_path, workspace)
    kit = load_kit(workspace / "site-1")
    log = AuditLog(tmp_path / "s1" / "audit.jsonl", key=kit.private_key, node=kit.name)
    log.append("job_done", job=job)
    fed.accept_audit_head(kit.identity, job, json.dumps(log.head()).encode())
    (rec,) = _events(fed.audit.path, "site_audit_head")
    assert rec["site"] == "site-1" and rec["head_seq"] == 1 and rec["head_hash"] == log.head()["hash"]


def test_aggregator_refuses_a_head_not_signed_by_the_caller(tmp_path: Path, workspace: Path) -> None:
    fed, job = _fed(tmp_path, workspace)
    k1, k2 = load_kit(workspace / "site-1"), load_kit(workspace / "site-2")
    log = AuditLog(tmp_path / "s1" / "audit.jsonl", key=k1.private_key, node=k1.name)
    log.append("job_done", job=job)
    payload = json.dumps(log.head()).encode()
    with pytest.raises(IntegrityError, match="audit head of site-2: head was signed by another key"):
        fed.accept_audit_head(k2.identity, job, payload)  # site-2 relaying site-1's head
    unsigned = AuditLog(tmp_path / "s0" / "audit.jsonl")
    unsigned.append("job_done", job=job)
    with pytest.raises(IntegrityError, match="unsigned"):
        fed.accept_audit_head(k1.identity, job, json.dumps(unsigned.head()).encode())
    with pytest.raises(IntegrityError, match="not JSON"):
        fed.accept_audit_head(k1.identity, job, b"\xff")
    with pytest.raises(UpdateRejected, match="no such job"):
        fed.accept_audit_head(k1.identity, "job-2", payload)
    assert not fed.audit.path.exists() or _events(fed.audit.path, "site_audit_head") == []

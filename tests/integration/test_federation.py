from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from secagg.auditlog import verify_log
from tests.integration.harness import expected_global, make_tiny_job, start

pytestmark = pytest.mark.slow


def test_plain_federation_three_sites_matches_weighted_fedavg(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="plain", rounds=2)
    run = start(tmp_path, workspace, job)
    try:
        run.join()
        assert not run.errors, run.errors
        want = expected_global(2, ["site-1", "site-2", "site-3"])
        for site in run.agents:
            got = run.final(site)
            assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-6
        rounds = run.server.fed.store.rounds(run.server.fed.job.job_id)  # type: ignore[union-attr]
        assert [r.round for r in rounds] == [1, 2]
        assert all(r.participants == ["site-1", "site-2", "site-3"] for r in rounds)
        assert run.server.fed.job.state == "finished"  # type: ignore[union-attr]
        from prometheus_client import generate_latest

        site_metrics = generate_latest(run.agents["site-1"].metrics.registry).decode()
        job_id = run.server.fed.job.job_id  # type: ignore[union-attr]
        assert f'secagg_site_rounds_completed_total{{job="{job_id}",mode="plain"}} 2.0' in site_metrics
    finally:
        run.stop()
    n = verify_log(tmp_path / "state" / "aggregator" / "audit.jsonl")
    assert n > 10


def test_he_federation_equals_plain_fedavg_and_aggregator_holds_no_secret(
    tmp_path: Path, workspace: Path
) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="he", rounds=2)
    run = start(tmp_path, workspace, job)
    try:
        run.join(timeout=60)
        assert not run.errors, run.errors
        want = expected_global(2, ["site-1", "site-2", "site-3"])
        finals = [run.final(s) for s in run.agents]
        for got in finals:
            assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-4
        # every site holds the bit-identical global model
        for got in finals[1:]:
            assert all(np.array_equal(got[k], finals[0][k]) for k in got)
        # invariant 2: the aggregator's state holds only the public context and sealed envelopes
        from secagg.he.context import load_public_context, load_secret_context
        from secagg.he.custody import KeyRelease

        blob = run.server.fed.store.get_blob("he-key-release")
        assert blob is not None
        release = KeyRelease.from_bytes(blob)
        public = load_public_context(release.public_context)
        assert public is not None
        with pytest.raises(Exception):
            load_secret_context(release.public_context)
        agg_files = b"".join(
            p.read_bytes() for p in (tmp_path / "state" / "aggregator").rglob("*") if p.is_file()
        )
        secret = (tmp_path / "state" / "site-1" / "he-secret.ctx").read_bytes()
        assert secret[-4096:] not in agg_files
    finally:
        run.stop()


def test_restarted_aggregator_resumes_at_the_round_it_was_in(tmp_path: Path, workspace: Path) -> None:
    import time

    from secagg.aggregator.service import AggregatorServer
    from secagg.provision.kit import load_kit

    job = make_tiny_job(tmp_path / "job", workspace, mode="plain", rounds=3)
    run = start(tmp_path, workspace, job)
    try:
        fed = run.server.fed
        job_id = fed.job.job_id  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while not fed.store.rounds(job_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        port = run.server.port
        run.server.stop(grace=0)  # the aggregator dies mid-job
        restarted = AggregatorServer(
            load_kit(tmp_path / "ws" / "aggregator"),
            tmp_path / "state" / "aggregator",
            port=port,
            host="127.0.0.1",
        )
        assert restarted.fed.job is not None and restarted.fed.job.job_id == job_id
        assert restarted.fed.job.completed >= 1
        restarted.start()
        run.server = restarted
        run.join(timeout=120)
        assert not run.errors, run.errors
        want = expected_global(3, ["site-1", "site-2", "site-3"])
        got = run.final("site-2")
        assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-6
        assert [r.round for r in restarted.fed.store.rounds(job_id)] == [1, 2, 3]
    finally:
        run.stop()
    audit = (tmp_path / "state" / "aggregator" / "audit.jsonl").read_text()
    assert '"event":"job_resumed"' in audit
    verify_log(tmp_path / "state" / "aggregator" / "audit.jsonl")

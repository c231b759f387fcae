"""RELIABILITY.md F7 (b): once too few sites are left that have not refused a job (a reason no retry
can fix: ``tee_key_changed``, a policy refusal), the job fails with their reason, audited, and
``admin list`` shows it failed (tests/admin/test_console.py), instead of retrying the round every
10 s for ever."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from secagg.aggregator.federation import Federation
from secagg.aggregator.rounds import JobState, SitesRefused, refused_for_good
from secagg.events import Event


def _audit(fed: Federation) -> list[dict[str, Any]]:
    return [json.loads(line) for line in fed.audit.path.read_text().splitlines()]


def _drive(fed: Federation, steps: int = 4) -> None:
    for _ in range(steps):
        job = fed.job
        if job is None or job.state.terminal:
            return
        if job.current is not None:
            job.current.not_before = 0.0  # the test stands in for the backoff's wait
        fed.step()


def test_a_job_every_site_refuses_for_good_fails_with_their_reason(
    make_fed: Callable[..., Federation],
) -> None:
    fed = make_fed(min_sites=2)
    job = fed.job
    assert job is not None and job.current is not None
    for site in fed.sites:  # what every site does when a restarted enclave shows other keys
        fed.decline(site, job.job_id, 2, "tee_key_changed", "key_pin: aggregator keys changed within job")
    _drive(fed)
    assert job.state == JobState.FAILED
    row = fed.store.job(job.job_id)
    assert row is not None and row.state == JobState.FAILED
    assert row.reason is not None and "tee_key_changed" in row.reason and "a retry cannot" in row.reason
    lines = _audit(fed)
    failed = [r for r in lines if r["event"] == Event.JOB_FAILED]
    assert len(failed) == 1 and failed[0]["code"] == "tee_key_changed"
    assert not any(r["event"] == Event.ROUND_RETRY for r in lines)  # failed instead of retried
    assert fed._task_for("site-1", 0, 0, 0)["kind"] == "stop"  # noqa: SLF001 - sites are told to stop


def test_different_reasons_fail_the_job_as_sites_refused(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed(min_sites=2)
    job = fed.job
    assert job is not None
    codes = ["tee_key_changed", "budget_exhausted", "tee_key_changed"]
    for site, code in zip(fed.sites, codes, strict=False):
        fed.decline(site, job.job_id, 1, code, "no")
    _drive(fed)
    failed = [r for r in _audit(fed) if r["event"] == Event.JOB_FAILED]
    assert job.state == JobState.FAILED and failed[0]["code"] == "sites_refused"


def test_a_refusal_that_leaves_enough_sites_is_retried_as_before(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed(min_sites=2)
    job = fed.job
    assert job is not None and job.current is not None
    fed.decline("site-3", job.job_id, 1, "tee_key_changed", "no")
    assert refused_for_good(job, fed.sites, 1) is None
    # the other two sit this round out (their training failed): a retry can fix that, so a retry
    for site in ("site-1", "site-2"):
        fed.decline(site, job.job_id, 1, "training_failed", "x", round_only=True)
    _drive(fed, 2)
    assert job.state == JobState.RUNNING and job.current is not None and job.current.attempt == 2
    assert any(r["event"] == Event.ROUND_RETRY for r in _audit(fed))


def test_refused_for_good_counts_against_min_sites(make_fed: Callable[..., Federation]) -> None:
    fed = make_fed(min_sites=3)
    job = fed.job
    assert job is not None
    job.declined, job.refusals = {"site-2"}, {"site-2": "policy"}
    why = refused_for_good(job, fed.sites, 4)
    assert isinstance(why, SitesRefused) and why.code == "policy"
    assert "1 of 3 sites refused the job (site-2 policy); 2 left, the job needs 3" in str(why)

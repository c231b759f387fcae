"""Metric objects: one registry each, loopback by default, the site's budget gauges, refusals counted
from audit events."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from secagg.aggregator.federation import Federation
from secagg.metrics import AggregatorMetrics, SiteMetrics
from secagg.provision.kit import load_kit


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
        return resp.read().decode()


def test_site_metrics_serve_on_loopback_with_their_own_registry() -> None:
    a, b = SiteMetrics(), SiteMetrics()  # a shared global registry would refuse the second
    try:
        port = a.serve(0)
        assert port is not None
        assert a._server.server_address[0] == "127.0.0.1"
        a.round_done("job-1", "he", 2.5)
        a.sent("job-1", "he", 1000)
        a.received("job-1", "he", 4000)
        a.refused("job-1", "budget_exhausted")
        a.budget(epsilon_spent=1.5, epsilon_left=6.5, delta_spent=1e-6, delta_left=9e-6)
        b.round_done("job-1", "he", 1.0)
        text = _get(port)
    finally:
        a.close()
    assert 'secagg_site_rounds_completed_total{job="job-1",mode="he"} 1.0' in text
    assert 'secagg_site_bytes_sent_total{job="job-1",mode="he"} 1000.0' in text
    assert 'secagg_site_refusals_total{code="budget_exhausted",job="job-1"} 1.0' in text
    assert 'secagg_privacy_budget_spent{quantity="epsilon"} 1.5' in text
    assert 'secagg_privacy_budget_left{quantity="epsilon"} 6.5' in text
    one = {"job": "job-1", "mode": "he"}
    assert b.registry.get_sample_value("secagg_site_rounds_completed_total", one) == 1.0
    assert a.registry.get_sample_value("secagg_site_rounds_completed_total", one) == 1.0


def test_two_jobs_at_a_site_are_two_series() -> None:
    """Jobs running at once at one site never add to one another's rounds, bytes or round times."""
    m = SiteMetrics()
    m.round_done("job-a", "he", 2.0)
    m.round_done("job-b", "mask", 7.0)
    m.round_done("job-b", "mask", 9.0)
    m.sent("job-a", "he", 100)
    m.sent("job-b", "mask", 30)
    m.received("job-b", "mask", 5)
    m.refused("job-b", "budget_exhausted")
    m.refused("", "tee_dev_not_allowed")  # no job's: the aggregator's attestation
    get = m.registry.get_sample_value
    a, b = {"job": "job-a", "mode": "he"}, {"job": "job-b", "mode": "mask"}
    assert get("secagg_site_rounds_completed_total", a) == 1
    assert get("secagg_site_rounds_completed_total", b) == 2
    assert (get("secagg_site_round_seconds_sum", a), get("secagg_site_round_seconds_sum", b)) == (2.0, 16.0)
    assert (get("secagg_site_bytes_sent_total", a), get("secagg_site_bytes_sent_total", b)) == (100, 30)
    assert get("secagg_site_bytes_received_total", a) is None
    assert get("secagg_site_bytes_received_total", b) == 5
    assert get("secagg_site_refusals_total", {"job": "job-b", "code": "budget_exhausted"}) == 1
    assert get("secagg_site_refusals_total", {"job": "", "code": "tee_dev_not_allowed"}) == 1
    assert get("secagg_site_rounds_completed_total", {"job": "job-a", "mode": "mask"}) is None


def test_metrics_host_can_be_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECAGG_METRICS_HOST", "0.0.0.0")  # noqa: S104
    m = SiteMetrics()
    try:
        m.serve(0)
        assert m._server.server_address[0] == "0.0.0.0"  # noqa: S104
    finally:
        m.close()


def test_aggregator_counts_refusals_and_heartbeats_from_its_audit_log(
    tmp_path: Path, workspace: Path
) -> None:
    fed = Federation(load_kit(workspace / "aggregator"), tmp_path / "state")
    try:
        m = AggregatorMetrics(fed)
        fed.audit.append("refused", site="site-2", code="duplicate_upload", reason="x")
        fed.audit.append(
            "task_declined", job="j", round=1, site="site-3", code="mode_not_allowed", reason="y"
        )
        fed.audit.append("admin_refused", admin="member@org-2", code="forbidden", reason="z")
        fed.audit.append("refused", site="site-2", code="duplicate_upload", reason="x")
        fed.heartbeat("site-1")
        fed.heartbeat("site-2")
        r = m.registry
        assert (
            r.get_sample_value("secagg_refusals_total", {"code": "duplicate_upload", "event": "refused"}) == 2
        )
        assert (
            r.get_sample_value("secagg_refusals_total", {"code": "forbidden", "event": "admin_refused"}) == 1
        )
        assert (
            r.get_sample_value(
                "secagg_refusals_total", {"code": "mode_not_allowed", "event": "task_declined"}
            )
            == 1
        )
        assert r.get_sample_value("secagg_connected_sites") == 2
        # a second set of metrics on another federation in the same process does not collide
        assert AggregatorMetrics(fed).registry.get_sample_value("secagg_connected_sites") == 2
    finally:
        fed.store.close()


class _TwoJobs:
    """What the aggregator's metrics observe, running a he job and a mask job at once."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.heartbeats: dict[str, float] = {}
        self.modes = {"job-a": "he", "job-b": "mask"}

    @property
    def audit(self) -> _TwoJobs:
        return self

    @property
    def current_mode(self) -> str:
        return "he+mask"

    def mode_of(self, job_id: str) -> str:
        return self.modes.get(job_id, "none")


def test_aggregator_counts_each_jobs_rounds_under_its_own_mode() -> None:
    m = AggregatorMetrics(_TwoJobs())
    m.observe({"event": "round_completed", "job": "job-a", "round": 1, "seconds": 3.0})
    m.observe({"event": "round_completed", "job": "job-b", "round": 1, "seconds": 5.0})
    m.observe({"event": "round_completed", "job": "job-b", "round": 2, "seconds": 5.0})
    m.observe({"event": "upload_accepted", "job": "job-a", "site": "site-1", "bytes": 70})
    get = m.registry.get_sample_value
    assert get("secagg_rounds_completed_total", {"mode": "he"}) == 1
    assert get("secagg_rounds_completed_total", {"mode": "mask"}) == 2
    assert get("secagg_round_seconds_sum", {"mode": "mask"}) == 10.0
    assert get("secagg_bytes_received_total", {"mode": "he"}) == 70
    assert get("secagg_rounds_completed_total", {"mode": "he+mask"}) is None

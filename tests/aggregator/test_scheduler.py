"""Several jobs on one aggregator: up to ``max_jobs`` run, the rest queue (persisted), ``admin list``
shows both, ``admin abort`` of one leaves the others, and a restart keeps the queue. No sites here:
the jobs' rounds do not advance, only which jobs run does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secagg.aggregator.admin_client import AdminClient, AdminError
from secagg.aggregator.rounds import JobState
from secagg.aggregator.service import AggregatorServer
from secagg.provision.kit import load_kit
from secagg.provision.project import AggregatorSpec, Project
from secagg.provision.writer import provision
from tests.conftest import make_project
from tests.integration.harness import make_tiny_job


def _eventually(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll a condition another thread makes true (a bound for a hang, not a speed check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose file says ``max_jobs: 2`` (the default, written out)."""
    base = make_project(name="sched-project", port=18600)
    project = Project(
        name=base.name,
        aggregator=AggregatorSpec(host="127.0.0.1", port=18600, max_jobs=2),
        sites=base.sites,
        admins=base.admins,
        key_holder=base.key_holder,
    )
    root = tmp_path_factory.mktemp("sched") / "ws"
    provision(project, root)
    return root


def _states(server: AggregatorServer) -> dict[str, str]:
    return {r.job_id: r.state for r in server.fed.store.jobs()}


def test_max_jobs_run_the_rest_queue_and_abort_frees_a_slot(ws: Path, tmp_path: Path) -> None:
    assert load_kit(ws / "aggregator").config.max_jobs == 2
    job = make_tiny_job(tmp_path / "job", ws, rounds=2)
    server = AggregatorServer(load_kit(ws / "aggregator"), tmp_path / "state", port=0, host="127.0.0.1")
    server.start()
    admin = AdminClient(load_kit(ws / "admin@lead"), f"127.0.0.1:{server.port}", timeout=20)
    try:
        ids = [admin.submit(job) for _ in range(4)]
        a, b, c, d = ids
        assert [_states(server)[j] for j in ids] == ["running", "running", "queued", "queued"]
        listed = {j["job_id"]: j for j in admin.list()}
        assert [listed[j]["state"] for j in ids] == ["running", "running", "queued", "queued"]
        assert (listed[c]["queue_position"], listed[d]["queue_position"]) == (1, 2)
        assert "queue_position" not in listed[a]
        # each running job has its own round state; a queued job has none yet
        assert listed[a]["round"] == listed[b]["round"] == 1 and "round" not in listed[c]

        # a queued job leaves the queue; the others do not move
        admin.abort(d)
        assert [_states(server)[j] for j in ids] == ["running", "running", "queued", "aborted"]
        # aborting one running job leaves the other running and starts the first queued
        admin.abort(a)
        assert _eventually(lambda: _states(server)[c] == "running")
        assert [_states(server)[j] for j in ids] == ["aborted", "running", "running", "aborted"]
        assert _eventually(lambda: sorted(server.fed.scheduler.driving()) == sorted([b, c]))
        with pytest.raises(AdminError) as err:
            admin.abort(a)
        assert err.value.code == "not_queued"
        events = [json.loads(x) for x in server.fed.audit.path.read_text().splitlines()]
        assert [e["job"] for e in events if e["event"] == "job_queued"] == [c, d]
        started = [e["job"] for e in events if e["event"] == "job_started"]
        assert started == [a, b, c]
    finally:
        admin.close()
        server.stop(grace=0.1)


def test_the_queue_survives_a_restart(ws: Path, tmp_path: Path) -> None:
    job = make_tiny_job(tmp_path / "job", ws, rounds=2)
    kit = load_kit(ws / "aggregator")
    first = AggregatorServer(kit, tmp_path / "state", port=0, host="127.0.0.1")
    ids = [first.fed.submit(job, "admin@lead (project_admin of lead)") for _ in range(3)]
    assert [_states(first)[j] for j in ids] == ["running", "running", "queued"]
    first.stop(grace=0.1)

    again = AggregatorServer(kit, tmp_path / "state", port=0, host="127.0.0.1")
    try:
        assert sorted(j.job_id for j in again.fed.running()) == sorted(ids[:2])  # both resumed
        assert [r.job_id for r in again.fed.scheduler.queued()] == [ids[2]]
        again.start()
        again.fed.abort(ids[0], by="test")
        assert _eventually(lambda: again.fed.live_job(ids[2]) is not None)
        assert _states(again)[ids[2]] == "running"
        assert again.fed.live_job(ids[1]) is not None and again.fed.live_job(ids[1]).state == JobState.RUNNING  # type: ignore[union-attr]
    finally:
        again.stop(grace=0.1)


def test_a_site_never_sees_nothing_running_while_a_queued_job_starts(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued job being started is out of the queue and not running yet: the jobs listing a site
    polls waits for that start instead of saying "nothing runs, nothing waits" (a site that has served
    a job leaves on that answer, and would miss the job that was about to start)."""
    import threading

    from secagg.aggregator.federation import Federation

    job = make_tiny_job(tmp_path / "job", ws, rounds=2)
    server = AggregatorServer(load_kit(ws / "aggregator"), tmp_path / "state", port=0, host="127.0.0.1")
    hub = server.fed
    hub.scheduler.max_jobs = 1
    first, second = (hub.submit(job, "admin@lead (project_admin of lead)") for _ in range(2))
    reached, go = threading.Event(), threading.Event()
    real = Federation._activate

    def paused(self: Federation, *a: Any, **k: Any) -> None:
        reached.set()  # the store says running already; the job is not the scheduler's yet
        assert go.wait(30), "the test never let the start go"
        real(self, *a, **k)

    monkeypatch.setattr(Federation, "_activate", paused)
    server.start()
    try:
        hub.abort(first, by="test")  # its driver ends, and starts the queued job: paused inside
        assert reached.wait(30)
        seen: list[dict[str, object]] = []
        poll = threading.Thread(target=lambda: seen.append(hub.jobs_for("site-1")), daemon=True)
        poll.start()
        poll.join(1.0)  # a chance to answer in the middle of the start (what the lock prevents)
        go.set()
        poll.join(30)
        assert len(seen) == 1
        listed = [j["job_id"] for j in seen[0]["jobs"]]  # type: ignore[attr-defined]
        assert listed == [second] or seen[0]["queued"] == 1, seen
    finally:
        go.set()
        server.stop(grace=0.1)


def test_exit_when_done_waits_for_the_queue(ws: Path, tmp_path: Path) -> None:
    """``aggregator serve --exit-when-done`` stops once every job has ended and none waits: a job that
    ended while another waits in the queue is not the end."""
    from secagg.aggregator.hub import FederationHub
    from secagg.commands.aggregator import all_ended

    job = make_tiny_job(tmp_path / "job", ws, rounds=2)
    hub = FederationHub(load_kit(ws / "aggregator"), tmp_path / "state", max_jobs=1)
    try:
        assert all_ended(hub) is None  # nothing ran yet
        first, second = (hub.submit(job, "admin@lead (project_admin of lead)") for _ in range(2))
        assert all_ended(hub) is None  # one runs, one waits
        hub.abort(first, by="test")  # no drivers here: the queued job stays queued
        assert _states_of(hub) == {first: "aborted", second: "queued"}
        assert all_ended(hub) is None
        hub.abort(second, by="test")  # out of the queue: nothing runs, nothing waits
        ended = all_ended(hub)
        assert ended is not None and ended.job_id == first
    finally:
        hub.stop()
        hub.store.close()


def _states_of(hub: Any) -> dict[str, str]:
    return {r.job_id: r.state for r in hub.store.jobs()}

"""A site without its aggregator writes one ``connection_lost`` line when the outage starts and one
``connection_restored`` line (how long, how many failed tries) when the aggregator answers again, for
its job loop and for each job's thread; it still tries once a second (RELIABILITY.md, "Partitions in
every mode": before, a line per failed try, twice a second)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from secagg.agent import site as site_module
from secagg.agent.site import SiteAgent
from secagg.reasons import METADATA_KEY
from tests.agent.bare_agent import bare_agent


class _Down(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses"


class _Full(_Down):
    """The aggregator answered, refusing for now: its disk is full."""

    def details(self) -> str:
        return "storage_full: the aggregator's state disk is full"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((METADATA_KEY, "storage_full"),)


class _Relay:
    """An aggregator that does not answer the first ``down`` calls (of any kind), then does: it
    lists no job, and tells a job's thread to stop. With ``full`` it answers every call, refusing
    the first ``down`` fetches of a task (``storage_full``)."""

    def __init__(self, down: int, *, full: bool = False) -> None:
        self.down = down
        self.full = full
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down > 0 and (not self.full or name == "fetch_task"):
            self.down -= 1
            raise _Full() if self.full else _Down()

    def jobs(self) -> dict[str, Any]:
        self._call("jobs")
        return {"jobs": [], "queued": 0}

    def job_state(self, job_id: str, round_: int) -> str:
        self._call("job_state")
        return "running"

    def fetch_task_to(self, job_id: str, progress: dict[str, Any], dest: Path) -> dict[str, Any]:
        self._call("fetch_task")
        return {"kind": "stop", "job_id": job_id, "reason": "job finished"}

    def audit_head(self, job_id: str, head: dict[str, Any]) -> None:
        return None


@pytest.fixture
def agent(tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    a: Any = bare_agent(tmp_path, workspace)
    a.slept = []
    # the agent's pace, recorded instead of slept (only the site module's clock is replaced)
    monkeypatch.setattr(
        site_module, "time", SimpleNamespace(sleep=a.slept.append, monotonic=site_module.time.monotonic)
    )
    monkeypatch.setattr(a, "register", lambda wait_s=60.0: None)
    yield a
    a.close()


def _lines(agent: SiteAgent, event: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, agent.audit.path.read_text().splitlines()) if r["event"] == event]


def test_the_job_loop_writes_one_line_when_the_aggregator_goes_and_one_when_it_is_back(agent: Any) -> None:
    agent.relay = _Relay(down=6)
    agent.run(max_idle_s=0, stop_after_job=False)
    assert agent.relay.calls == ["jobs"] * 7  # tried every time: the pace is kept
    assert agent.slept.count(1.0) == 6  # once a second
    lost, back = _lines(agent, "connection_lost"), _lines(agent, "connection_restored")
    assert len(lost) == 1 and lost[0]["code"] == "StatusCode.UNAVAILABLE" and "job" not in lost[0]
    assert len(back) == 1 and back[0]["failed_tries"] == 6 and back[0]["outage_s"] >= 0
    assert back[0]["seq"] > lost[0]["seq"]


def test_a_jobs_thread_writes_one_line_each_way_and_probes_the_aggregator_once_a_second(agent: Any) -> None:
    agent.relay = _Relay(down=4)
    agent._serve_job("job-1", reconnect_s=300.0)
    # the first try fetches a task; in the outage it asks for the job's state (answered at once),
    # then fetches its task again
    assert agent.relay.calls == ["fetch_task", *["job_state"] * 4, "fetch_task"]
    assert agent.slept.count(1.0) == 4
    lost, back = _lines(agent, "connection_lost"), _lines(agent, "connection_restored")
    assert [r["job"] for r in lost] == ["job-1"] and [r["job"] for r in back] == ["job-1"]
    assert back[0]["failed_tries"] == 4
    assert _lines(agent, "job_stopped")  # and the job went on once the aggregator answered


def test_each_outage_has_its_own_pair_of_lines(agent: Any) -> None:
    relay = _Relay(down=2)
    agent.relay = relay
    agent.run(max_idle_s=0, stop_after_job=False)
    relay.down = 3
    agent.run(max_idle_s=0, stop_after_job=False)
    assert len(_lines(agent, "connection_lost")) == 2
    assert [r["failed_tries"] for r in _lines(agent, "connection_restored")] == [2, 3]


def test_an_aggregator_refusing_for_a_full_disk_is_one_outage_until_a_try_gets_through(agent: Any) -> None:
    agent.relay = _Relay(down=5, full=True)
    agent._serve_job("job-1", reconnect_s=300.0)
    # it answers: no call of the job's state proves anything; the task is tried again each second
    assert agent.relay.calls == ["fetch_task"] * 6
    assert agent.slept.count(1.0) == 5
    lost, back = _lines(agent, "connection_lost"), _lines(agent, "connection_restored")
    assert len(lost) == 1 and "storage_full" in lost[0]["detail"]
    assert len(back) == 1 and back[0]["failed_tries"] == 5

"""A site agent that serves several jobs at once, talking to an aggregator from before them: one clear
line on stderr (``aggregator_too_old``), exit code 1, no traceback, nothing of any job done.

The older aggregator is this one with what it lacked taken out: it refuses the ``jobs`` listing as an
unknown topic (its answer to any topic it does not know), or it lists a job but hands out a task
without a job id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secagg import cli
from secagg.agent.relay import Relay
from secagg.aggregator import service
from secagg.errors import UpdateRejected
from secagg.reasons import Reason
from secagg.topics import Topic
from tests.integration.harness import TEST_POLICY, make_tiny_job, start, write_policies

pytestmark = pytest.mark.slow


def _agent_cli(tmp: Path, port: int) -> int:
    data = tmp / "data" / "site-1"
    data.mkdir(parents=True, exist_ok=True)
    (data / "n.txt").write_text("10")
    policy = write_policies(tmp, TEST_POLICY, ["site-1"])["site-1"]
    return cli.main(
        [
            "agent",
            "run",
            "--kit",
            str(tmp / "ws" / "site-1"),
            "--data",
            str(data),
            "--policy",
            str(policy),
            "--state",
            str(tmp / "state" / "site-1"),
            "--target",
            f"127.0.0.1:{port}",
        ]
    )


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("secagg:")]
    assert len(lines) == 1, err
    return lines[0]


def _agent_against_it(tmp_path: Path, workspace: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``secagg agent run`` against the (patched) aggregator of a one-round job: its exit code and
    the one line it printed."""
    job = make_tiny_job(tmp_path / "job", workspace, rounds=1)
    run = start(tmp_path, workspace, job, sites=[])
    try:
        rc = _agent_cli(tmp_path, run.server.port)
    finally:
        run.stop()
    return rc, _one_line(capsys.readouterr().err)


def test_an_aggregator_without_the_jobs_listing(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = service.FederationService._collect

    def before_multijob(self: Any, request: Any, site: Any, wait: float) -> Iterator[Any]:
        if request.topic == Topic.JOBS:  # as the aggregator answers any topic it does not know
            raise UpdateRejected(f"unknown topic {request.topic!r}", code=Reason.MALFORMED)
        yield from real(self, request, site, wait)

    monkeypatch.setattr(service.FederationService, "_collect", before_multijob)
    rc, line = _agent_against_it(tmp_path, workspace, capsys)
    assert rc == 1
    assert line.startswith("secagg: aggregator_too_old: the aggregator predates several jobs at once")
    assert "upgrade it" in line
    assert not (tmp_path / "state" / "site-1" / "jobs").exists()  # no job was fetched, let alone run


def test_a_task_without_a_job_id(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def old_header(self: Relay, job_id: str, progress: dict[str, Any], dest: Path) -> dict[str, Any]:
        dest.write_bytes(b"")
        return {"kind": "train", "round": 1, "attempt": 1}

    monkeypatch.setattr(Relay, "fetch_task_to", old_header)
    rc, line = _agent_against_it(tmp_path, workspace, capsys)
    assert rc == 1
    assert line.startswith("secagg: aggregator_too_old:") and "'train' task without a job id" in line

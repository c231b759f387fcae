"""``kill -9`` of the aggregator while it runs two jobs at once, restarted on the same state.

The aggregator is a process of its own (``secagg aggregator serve`` through the chaos launcher), killed
in round 2 of whichever job gets there first: ``agg-combine`` (the round being summed) or
``agg-publish`` (its result written, not yet committed). Restarted on the same state it resumes both
jobs; the three sites (agents in this process, each with a budget and the Gaussian filter) reconnect
and redo what the aggregator lost. Both jobs finish; each round of each job is completed once; every
site's ledger holds exactly one released debit per (job, round) (a redone round re-sends the kept
release, it is never debited again), within its budget; every site holds each job's model.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from secagg.agent.site import SiteAgent
from secagg.aggregator.admin_client import AdminClient
from secagg.bundle import from_safetensors
from secagg.privacy.ledger import Ledger
from secagg.provision.kit import load_kit
from tests.integration.harness import (
    SAMPLES,
    TEST_POLICY,
    audit_lines,
    killable,
    make_tiny_job,
    wait_or_kill,
    write_policies,
)

pytestmark = pytest.mark.slow

SITES = ["site-1", "site-2", "site-3"]
JOBS = {"job-a": 2, "job-b": 3}
POLICY = TEST_POLICY + (
    "privacy:\n"
    "  required: [{name: gaussian, clip: 1.0, noise_multiplier: 1.0}]\n"
    "  budget: {epsilon: 100.0, delta: 1.0e-3}\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _aggregator(tmp: Path, port: int, job: Path, n: int, kill: str | None) -> subprocess.Popen[bytes]:
    argv = [
        "aggregator",
        "serve",
        "--kit",
        str(tmp / "ws" / "aggregator"),
        "--state",
        str(tmp / "state" / "aggregator"),
        "--job",
        str(job),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--exit-when-done",
    ]
    return killable(tmp, argv, tmp / f"aggregator.{n}.log", kill)


def _wait(proc: subprocess.Popen[bytes], timeout: float, tmp: Path, n: int) -> int:
    return wait_or_kill(proc, timeout, tmp / f"aggregator.{n}.log", f"the aggregator (run {n})")


def _submit(tmp: Path, port: int, job: Path) -> str:
    """Submit through the admin console once the aggregator answers (a bound for a hang)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with AdminClient(load_kit(tmp / "ws" / "admin@lead"), f"127.0.0.1:{port}", timeout=20) as admin:
                return admin.submit(job)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.parametrize("point", ["agg-combine", "agg-publish"])
def test_kill_9_of_the_aggregator_with_two_jobs_running(tmp_path: Path, workspace: Path, point: str) -> None:
    shutil.copytree(workspace, tmp_path / "ws")
    jobs = {
        name: make_tiny_job(
            tmp_path / name,
            workspace,
            rounds=rounds,
            round_timeout=20,
            script="salted_train.py",
            extra={"name": name, "params": {"salt": name}},
        )
        for name, rounds in JOBS.items()
    }
    pols = write_policies(tmp_path, POLICY)
    port = _free_port()
    procs = [_aggregator(tmp_path, port, jobs["job-a"], 0, kill=f"{point}@2")]
    agents: dict[str, SiteAgent] = {}
    errors: dict[str, BaseException] = {}
    threads: list[threading.Thread] = []
    try:
        _submit(tmp_path, port, jobs["job-b"])
        for s in SITES:
            data = tmp_path / "data" / s
            data.mkdir(parents=True)
            (data / "n.txt").write_text(str(SAMPLES[s]))
            agents[s] = SiteAgent(
                load_kit(tmp_path / "ws" / s),
                data,
                tmp_path / "state" / s,
                policy_path=pols[s],
                target=f"127.0.0.1:{port}",
            )

            def go(a: SiteAgent = agents[s], name: str = s) -> None:
                try:
                    a.run(reconnect_s=240)
                except BaseException as exc:  # recorded for the test to assert on
                    errors[name] = exc

            threads.append(threading.Thread(target=go, name=s, daemon=True))
            threads[-1].start()
        assert _wait(procs[0], 240, tmp_path, 0) == -signal.SIGKILL
        assert (tmp_path / "kills.txt").read_text() == f"{point} 2\n"
        procs.append(_aggregator(tmp_path, port, jobs["job-a"], 1, kill=None))
        assert _wait(procs[1], 300, tmp_path, 1) == 0
        for t in threads:
            t.join(120)
        assert not [t.name for t in threads if t.is_alive()]
        assert not errors, errors
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
        for a in agents.values():
            a.close()

    events = audit_lines(tmp_path / "state" / "aggregator" / "audit.jsonl")
    ids = {e["job"].rsplit("-", 1)[0]: e["job"] for e in events if e["event"] == "job_started"}
    assert sorted(ids) == sorted(JOBS)
    resumed = Counter(e["job"] for e in events if e["event"] == "job_resumed")
    assert resumed == Counter(ids.values())  # both jobs were running at the kill, both taken up again
    for name, job_id in ids.items():
        mine = [e for e in events if e.get("job") == job_id]
        assert [e["round"] for e in mine if e["event"] == "round_completed"] == list(range(1, JOBS[name] + 1))
        assert [e["event"] for e in mine].count("job_finished") == 1
    want = sorted((ids[n], r, "released") for n, rounds in JOBS.items() for r in range(1, rounds + 1))
    for site in SITES:
        with Ledger(tmp_path / "state" / site / "privacy-ledger.sqlite", site) as led:
            assert sorted((e.job, e.round, e.status) for e in led.entries()) == want, site
            assert led.reservations() == []
            eps, _, _ = led.total()
            assert eps <= led.budget_epsilon
    for job_id in ids.values():
        finals = [
            from_safetensors((tmp_path / "state" / s / "jobs" / job_id / "final.safetensors").read_bytes())
            for s in SITES
        ]
        for other in finals[1:]:
            assert all(np.array_equal(other[k], finals[0][k]) for k in finals[0])

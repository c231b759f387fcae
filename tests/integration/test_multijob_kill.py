"""``kill -9`` of a site agent serving two jobs at once on one data set, restarted on the same state
(plain and mask).

Site 3 runs as a process of its own (``secagg agent run`` through the chaos launcher), SIGKILLed in
round 2 at one of two points of whichever of its job threads gets there first: ``site-debit`` (that
round debited, nothing uploaded) or ``site-uploaded`` (the upload accepted by the aggregator, not yet
recorded by the site). Its budget is exactly both jobs' declared worst cases together, so a second
debit of any round, or a re-admission after the restart that counted a debited round again, is
refused. Restarted on the same state it re-admits both jobs and either re-sends the killed round's
kept release under the round's new attempt or finds the round done: both jobs finish with all three
sites in every round, the ledger holds exactly one debit per (job, round), each for a round the
aggregator has site 3's upload of, the total stays within the budget, and every site holds each job's
model.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from secagg.bundle import from_safetensors
from secagg.commands._jobs import submit_verified
from secagg.privacy.accounting import compose
from secagg.privacy.ledger import Ledger
from secagg.privacy.specs import GaussianSpec, worst_case_spends
from secagg.provision.kit import load_kit
from tests.integration.harness import (
    INIT,
    SAMPLES,
    TEST_POLICY,
    audit_lines,
    killable,
    make_tiny_job,
    start,
    wait_or_kill,
    write_policies,
)

pytestmark = pytest.mark.slow

SITES = ["site-1", "site-2", "site-3"]
JOBS = {"job-a": 2, "job-b": 3}
GAUSS = GaussianSpec(clip=1.0, noise_multiplier=1.0)
DELTA = 1e-3
N_PARAMS = sum(v.size for v in INIT.values())
#: both jobs' worst cases together, and not a round more
BUDGET = compose(worst_case_spends([GAUSS], N_PARAMS, sum(JOBS.values())), DELTA).epsilon * 1.0001
KILLED_POLICY = TEST_POLICY + (
    "privacy:\n"
    "  required: [{name: gaussian, clip: 1.0, noise_multiplier: 1.0}]\n"
    f"  budget: {{epsilon: {BUDGET!r}, delta: {DELTA!r}}}\n"
)


#: mask: the killed site's round is not summed without it (the job's min_sites is 3, t is 2)
MASK = {"mask": {"threshold": 2, "clip": 8.0}}


def _modes(policy: str) -> str:
    return policy.replace("modes: [plain, he]", "modes: [plain, he, mask]")


def _agent(tmp: Path, port: int, policy: Path, n: int, kill: str | None) -> subprocess.Popen[bytes]:
    argv = [
        "agent",
        "run",
        "--kit",
        str(tmp / "ws" / "site-3"),
        "--data",
        str(tmp / "data" / "site-3"),
        "--state",
        str(tmp / "state" / "site-3"),
        "--policy",
        str(policy),
        "--target",
        f"127.0.0.1:{port}",
    ]
    return killable(tmp, argv, tmp / f"site-3.{n}.log", kill)


def _wait(proc: subprocess.Popen[bytes], timeout: float, tmp: Path, n: int) -> int:
    return wait_or_kill(proc, timeout, tmp / f"site-3.{n}.log", f"site-3 (run {n})")


@pytest.mark.parametrize("mode", ["plain", "mask"])
@pytest.mark.parametrize("point", ["site-debit", "site-uploaded"])
def test_kill_9_with_two_jobs_on_one_data_set(tmp_path: Path, workspace: Path, point: str, mode: str) -> None:
    jobs = [
        make_tiny_job(
            tmp_path / name,
            workspace,
            rounds=rounds,
            round_timeout=40,  # site-3 is in every round: its restart under load must fit in one
            mode=mode,
            script="salted_train.py",
            extra={"name": name, "params": {"salt": name}, **(MASK if mode == "mask" else {})},
        )
        for name, rounds in JOBS.items()
    ]
    pols = write_policies(
        tmp_path,
        {"site-1": _modes(TEST_POLICY), "site-2": _modes(TEST_POLICY), "site-3": _modes(KILLED_POLICY)},
    )
    run = start(tmp_path, workspace, jobs[0], sites=["site-1", "site-2"], policies=pols)
    fed = run.server.fed
    submit_verified(fed, jobs[1], load_kit(tmp_path / "ws" / "aggregator"))
    data = tmp_path / "data" / "site-3"
    data.mkdir(parents=True)
    (data / "n.txt").write_text(str(SAMPLES["site-3"]))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_agent(tmp_path, run.server.port, pols["site-3"], 0, kill=f"{point}@2"))
        assert _wait(procs[0], 240, tmp_path, 0) == -signal.SIGKILL
        assert (tmp_path / "kills.txt").read_text() == f"{point} 2\n"
        procs.append(_agent(tmp_path, run.server.port, pols["site-3"], 1, kill=None))
        assert _wait(procs[1], 300, tmp_path, 1) == 0
        run.join(timeout=120)
        assert not run.errors, run.errors
        rows = {r.job_id.rsplit("-", 1)[0]: r for r in fed.store.jobs()}
        assert {n: r.state for n, r in rows.items()} == {n: "finished" for n in JOBS}
        ids = {n: r.job_id for n, r in rows.items()}
        # every round of both jobs summed all three sites (site 3 came back for the killed round)
        for name, job_id in ids.items():
            parts = [r.participants for r in fed.store.rounds(job_id)]
            assert parts == [SITES] * JOBS[name], (name, parts)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
        run.stop()

    audit = audit_lines(tmp_path / "state" / "site-3" / "audit.jsonl")
    assert Counter(e["event"] for e in audit)["job_admitted"] == 4  # both jobs, before and after the kill
    assert not [e for e in audit if e["event"] in ("job_refused", "round_declined")]
    want = sorted((ids[n], r) for n, rounds in JOBS.items() for r in range(1, rounds + 1))
    uploads = [(e["job"], e["round"]) for e in audit if e["event"] == "uploaded" and e.get("accepted")]
    reused = [(e["job"], e["round"]) for e in audit if e["event"] == "release_reused"]
    with Ledger(tmp_path / "state" / "site-3" / "privacy-ledger.sqlite", "site-3") as led:
        entries = led.entries()
        assert sorted((e.job, e.round) for e in entries) == want  # one debit per round, none twice
        assert led.reservations() == []
        eps, _, _ = led.total()
        assert eps <= led.budget_epsilon
    unsettled = sorted((e.job, e.round) for e in entries if e.status != "released")
    if point == "site-debit":
        # the killed round (and any other debited, not uploaded, at the kill) was re-sent, not re-debited
        assert sorted(uploads) == want
        assert reused and all(r == 2 for _, r in reused), reused
        assert unsettled == []
    else:
        # the aggregator had the killed round: it is not sent again, and its debit stays counted
        # (marked released only by the site's record of the upload, which the kill cut off)
        assert unsettled and all(r == 2 for _, r in unsettled), unsettled
        assert sorted(uploads + unsettled) == want
    for job_id in ids.values():
        finals = [
            from_safetensors((tmp_path / "state" / s / "jobs" / job_id / "final.safetensors").read_bytes())
            for s in SITES
        ]
        for other in finals[1:]:
            assert all(np.array_equal(other[k], finals[0][k]) for k in finals[0])

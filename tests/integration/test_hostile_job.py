"""Invariant 8 in a real federation: a hostile job at one site is confined, costs only the rounds it
misbehaves in, and nothing it produces in those rounds reaches the aggregator.

site-3's copy of the job (the same signed package; the script picks its behaviour by site and round)
tries, from inside its worker: reading the HE secret key, the kit's key.pem, the privacy ledger, the
audit log and another job's folder; writing outside its I/O folder; connecting to the aggregator's
port and to another local port; binding a port; a UDP socket; a signal to the agent; more processes
than the limit; more memory than the limit; more CPU time than the limit. The other sites train
normally, and in the last round site-3 does too."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.harness import TEST_POLICY, start, write_policies
from tests.integration.test_strategies import fast_job

pytestmark = pytest.mark.slow

SANDBOX = """\
sandbox:
  memory_bytes: 1073741824
  processes: 64
  cpu_seconds: 6
"""

HOSTILE = """\
import json, os, signal, socket, time
from collections import OrderedDict
from pathlib import Path

from secagg import client
from tinyjob_train import delta

P = client.params
g = client.receive_numpy()
n = int((client.data_dir / "n.txt").read_text())
io = Path(os.environ[client.IO_ENV])


def attempt(name, fn):
    try:
        fn()
        return "ALLOWED"
    except (OSError, MemoryError) as exc:
        return type(exc).__name__


def forks():
    pids = []
    try:
        for _ in range(200):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            pids.append(pid)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def tcp(port):
    def go():
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.close()
    return go


def bind():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()


def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("127.0.0.1", P["other_port"]))


if client.site == "site-3" and client.task == "train" and client.round < 4:
    state = Path.cwd().parents[2]  # STATE/jobs/JOB/pkg
    if client.round == 1:
        outcome = {
            "he_secret": attempt("he", lambda: (state / "he-secret.ctx").read_bytes()),
            "kit_key": attempt("key", lambda: Path(P["kit"], "key.pem").read_bytes()),
            "audit": attempt("audit", lambda: (state / "audit.jsonl").read_bytes()),
            "other_job": attempt("other", lambda: (state / "jobs" / "other-job" / "secret.txt").read_bytes()),
            "write_state": attempt("w", lambda: (state / "planted").write_text("x")),
            "write_pkg": attempt("w2", lambda: (Path.cwd() / "planted").write_text("x")),
            "connect_aggregator": attempt("agg", tcp(P["agg_port"])),
            "connect_other": attempt("other", tcp(P["other_port"])),
            "bind": attempt("bind", bind),
            "udp": attempt("udp", udp),
            "signal_agent": attempt("sig", lambda: os.kill(os.getppid(), 0)),
            "fork_bomb": attempt("fork", forks),
            "scratch_ok": attempt("scratch", lambda: Path(os.environ["TMPDIR"], "t").write_text("x")),
            "data_ok": attempt("data", lambda: (client.data_dir / "n.txt").read_text()),
        }
        (io / "attempts.json").write_text(json.dumps(outcome))
        raise RuntimeError("hostile round 1 done")
    if client.round == 2:
        blob = bytearray(2 * 2**30)  # past the 1 GiB limit
    if client.round == 3:
        while True:  # past the CPU limit
            pass
metrics = {"val_auc": 0.5 + 0.01 * client.round}
if client.task == "evaluate":
    client.send(metrics=metrics)
else:
    d = delta(client.site, client.round, {k: v.shape for k, v in g.items()})
    client.send(OrderedDict((k, v + d[k]) for k, v in g.items()), num_samples=n, metrics=metrics)
"""


def _audit(tmp: Path, who: str) -> list[dict[str, Any]]:
    path = tmp / "state" / who / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_a_hostile_job_is_confined_and_costs_only_its_own_rounds(tmp_path: Path, workspace: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    other_port = listener.getsockname()[1]
    other_job = tmp_path / "state" / "site-3" / "jobs" / "other-job"
    other_job.mkdir(parents=True)
    (other_job / "secret.txt").write_text("another job's data")
    policy = TEST_POLICY + SANDBOX
    with socket.socket() as probe:  # a free port for the aggregator, known to the job's params
        probe.bind(("127.0.0.1", 0))
        agg_port = probe.getsockname()[1]
    job = fast_job(
        tmp_path / "job",
        workspace,
        mode="he",
        rounds=4,
        min_sites=2,
        round_timeout=15,
        extra={
            "params": {"kit": str(tmp_path / "ws" / "site-3"), "agg_port": agg_port, "other_port": other_port}
        },
        train=HOSTILE,
    )
    run = start(tmp_path, workspace, job, policies=write_policies(tmp_path, policy), port=agg_port)
    try:
        run.join(timeout=400)
        assert not run.errors, run.errors  # the agent of site-3 never died
        attempts = json.loads(
            (tmp_path / "state/site-3/jobs" / run.server.fed.job.job_id / "io/attempts.json").read_text()  # type: ignore[union-attr]
        )
        # each refused by the sandbox (EACCES/EPERM), not by a missing file or port; forks hit the limit
        want = {k: "PermissionError" for k in attempts} | {
            "fork_bomb": "BlockingIOError",
            "scratch_ok": "ALLOWED",
            "data_ok": "ALLOWED",
        }
        assert attempts == want, attempts
        assert (tmp_path / "state/site-3/he-secret.ctx").is_file()  # the key really was there to steal
        assert not (tmp_path / "state/site-3/planted").exists()
        events = _audit(tmp_path, "site-3")
        declined = {r["round"]: r["code"] for r in events if r["event"] == "round_declined"}
        assert declined == {1: "training_failed", 2: "training_limit_exceeded", 3: "training_limit_exceeded"}
        assert [r["round"] for r in events if r["event"] == "uploaded"] == [4]
        for site in ("site-1", "site-2"):
            assert [r["round"] for r in _audit(tmp_path, site) if r["event"] == "uploaded"] == [1, 2, 3, 4]
        agg = _audit(tmp_path, "aggregator")
        from_3 = [r["round"] for r in agg if r["event"] == "upload_accepted" and r.get("site") == "site-3"]
        assert from_3 == [4]
        assert [r.round for r in run.server.fed.store.rounds(run.server.fed.job.job_id)] == [1, 2, 3, 4]  # type: ignore[union-attr]
        final = run.final("site-1")
        assert all(np.isfinite(v).all() for v in final.values())
    finally:
        run.stop()
        listener.close()

"""Run a real federation in one test: the aggregator's gRPC server in this process, each site agent
in a thread (training scripts still run as subprocesses), all over mTLS on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from secagg.agent.site import SiteAgent
from secagg.aggregator.service import AggregatorServer
from secagg.bundle import from_safetensors, to_safetensors
from secagg.chaos.shim import ENV_KILL, ENV_MARK
from secagg.commands._jobs import submit_verified
from secagg.jobs.sign import sign_job
from secagg.provision.kit import load_kit
from tests.integration.tinyjob_train import delta

HERE = Path(__file__).parent
SAMPLES = {"site-1": 100, "site-2": 50, "site-3": 250}
TEST_POLICY = """\
version: 1
signers:
  submitters: [submitter@org-1, admin@lead]
modes: [plain, he]
limits:
  max_rounds: 50
  min_sites_per_round: 2
"""


def write_policies(tmp: Path, text: str | dict[str, str], sites: list[str] | None = None) -> dict[str, Path]:
    """One policy file per site (the same ``text`` for all, or per site), for ``start(policies=...)``."""
    texts = text if isinstance(text, dict) else {s: text for s in (sites or list(SAMPLES))}
    out = {}
    for site, body in texts.items():
        p = tmp / "policies" / f"{site}.yaml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
        out[site] = p
    return out


INIT = OrderedDict(
    [
        ("layer.weight", np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)),
        ("layer.bias", np.zeros(4, dtype=np.float32)),
        ("head", np.full((3,), 0.5, dtype=np.float32)),
    ]
)


def make_tiny_job(
    folder: Path,
    workspace: Path,
    *,
    mode: str = "plain",
    rounds: int = 2,
    min_sites: int = 3,
    round_timeout: float = 30,
    signer: str = "submitter@org-1",
    extra: dict[str, Any] | None = None,
    script: str = "tinyjob_train.py",
) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(HERE / script, folder / "train.py")
    (folder / "model.safetensors").write_bytes(to_safetensors(INIT))
    spec = {
        "name": "tiny",
        "rounds": rounds,
        "min_sites": min_sites,
        "mode": mode,
        "model": "model.safetensors",
        "entry": "train.py",
        "round_timeout": round_timeout,
    }
    spec.update(extra or {})
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    sign_job(folder, load_kit(workspace / signer))
    return folder


def expected_global(rounds: int, sites: list[str]) -> OrderedDict[str, np.ndarray]:
    shapes = {k: v.shape for k, v in INIT.items()}
    g = OrderedDict((k, v.astype(np.float64)) for k, v in INIT.items())
    total = sum(SAMPLES[s] for s in sites)
    for r in range(1, rounds + 1):
        ds = {s: delta(s, r, shapes) for s in sites}
        for k in g:
            g[k] = g[k] + sum(SAMPLES[s] / total * ds[s][k].astype(np.float64) for s in sites)
    return g


@dataclass
class Run:
    server: AggregatorServer
    agents: dict[str, SiteAgent]
    threads: dict[str, threading.Thread]
    errors: dict[str, BaseException] = field(default_factory=dict)

    def join(self, timeout: float = 120) -> None:
        for t in self.threads.values():
            t.join(timeout)
        alive = [n for n, t in self.threads.items() if t.is_alive()]
        assert not alive, f"agents did not finish: {alive}; errors: {self.errors}"

    def stop(self) -> None:
        for a in self.agents.values():
            a.close()
        self.server.stop(grace=0.5)

    def final(self, site: str) -> OrderedDict[str, Any]:
        job = self.server.fed.job
        assert job is not None
        path = self.agents[site].state.job_dir(job.job_id) / "final.safetensors"
        return from_safetensors(path.read_bytes())


def start(
    tmp: Path,
    workspace: Path,
    job: Path,
    *,
    sites: list[str] | None = None,
    policies: dict[str, Path] | None = None,
    enclave: Any = None,
    port: int = 0,
) -> Run:
    sites = sites or list(SAMPLES)
    ws = tmp / "ws"
    if not ws.exists():
        shutil.copytree(workspace, ws)
    agg_kit = load_kit(ws / "aggregator")
    server = AggregatorServer(
        agg_kit, tmp / "state" / "aggregator", port=port, host="127.0.0.1", enclave=enclave
    )
    submit_verified(server.fed, job, agg_kit)
    server.start()
    run = Run(server, {}, {})
    for s in sites:
        data = tmp / "data" / s
        data.mkdir(parents=True, exist_ok=True)
        (data / "n.txt").write_text(str(SAMPLES[s]))
        policy = policies.get(s) if policies else None
        if policy is None:
            policy = tmp / "policies" / f"{s}.yaml"
            policy.parent.mkdir(exist_ok=True)
            policy.write_text(TEST_POLICY)
        agent = SiteAgent(
            load_kit(ws / s), data, tmp / "state" / s, policy_path=policy, target=f"127.0.0.1:{server.port}"
        )
        run.agents[s] = agent

        def go(a: SiteAgent = agent, name: str = s) -> None:
            try:
                a.run()
            except BaseException as exc:  # recorded for the test to assert on
                run.errors[name] = exc

        run.threads[s] = threading.Thread(target=go, name=s, daemon=True)
        run.threads[s].start()
    return run


def killable(tmp: Path, argv: list[str], log: Path, kill: str | None) -> subprocess.Popen[bytes]:
    """``secagg ARGV`` as a process in a session of its own (so a group kill takes its workers too),
    output to ``log``; with ``kill`` (``POINT@ROUND``) under the chaos shim, which marks the point in
    ``tmp/kills.txt`` and kills itself there (secagg.chaos.shim)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop(ENV_KILL, None)
    if kill:
        env[ENV_KILL], env[ENV_MARK] = kill, str(tmp / "kills.txt")
    cmd = [sys.executable, "-m", "secagg.chaos.shim" if kill else "secagg.cli", *argv]
    out = log.open("wb")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def wait_or_kill(proc: subprocess.Popen[bytes], timeout: float, log: Path, what: str) -> int:
    """``proc``'s exit code; past ``timeout`` its whole session is killed (the process and its
    training workers) and the test fails with the tail of ``log``."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        tail = log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{what} did not finish in {timeout:.0f} s:\n{tail}") from None

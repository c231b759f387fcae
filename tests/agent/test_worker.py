"""The job's training worker (secagg.agent.worker + worker_main), unconfined (confinement=None):
rounds in one process, one-round scripts restarted, and every way a script can fail costing one round.

Each script is a few lines of numpy; the one torch case checks DP-SGD per round in one process."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.agent.runner import run_entry
from secagg.agent.worker import (
    RunResult,
    TrainingFailed,
    TrainingLimitExceeded,
    TrainingTimeout,
    TrainingWorker,
)
from secagg.bundle import from_safetensors, to_safetensors
from secagg.errors import PolicyRefusal
from tests.integration.tinyjob_train import delta

HERE = Path(__file__).resolve().parents[1] / "integration"
GLOBAL = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.zeros(2, np.float32))
GLOBAL_BYTES = to_safetensors(GLOBAL)

#: a loop-form script whose behaviour per round is chosen by the test (``ACTIONS[round]``)
LOOP = """\
import os, signal, subprocess, sys, time
from secagg import client

ACTIONS = {actions!r}
def is_socket(fd):
    try:
        return os.readlink(f"/proc/self/fd/{{fd}}").startswith("socket:")
    except OSError:
        return False
for task in client.tasks():
    act = ACTIONS.get(task.round, "ok")
    g = client.receive_numpy()
    metrics = {{"pid": float(os.getpid()), "round": float(client.round)}}
    if act == "crash":
        raise RuntimeError("boom in round %d" % task.round)
    if act == "hang":
        child = subprocess.Popen(["sleep", "60"])
        (client.data_dir / "child.pid").write_text(str(child.pid))
        time.sleep(60)
    if act == "refuse":
        class Nope(client.TrainingRefused):
            code = "dpsgd_refused"
        raise Nope("DP-SGD: a second optimizer steps the model")
    if act == "nosend":
        continue
    if act == "twice":
        client.send(metrics=metrics)
    if act == "junk":
        fd = next(int(f) for f in os.listdir("/proc/self/fd") if is_socket(f))
        os.write(fd, {junk!r})
        time.sleep(5)
    if act == "xcpu":
        os.kill(os.getpid(), signal.SIGXCPU)
    if act == "memory":
        raise MemoryError()
    if act == "exit3":
        sys.exit(3)
    if task.task == "evaluate":
        client.send(metrics=metrics)
        continue
    client.send({{k: v + 1 for k, v in g.items()}}, num_samples=7, metrics=metrics)
(task.data_dir / "loop-ended").write_text("yes")  # the last task; client.* is over
"""

#: the one-round form: no loop, module attributes
ONE_ROUND = """\
import os
from secagg import client

g = client.receive_numpy()
metrics = {"pid": float(os.getpid()), "round": float(client.round)}
if client.task == "evaluate":
    client.send(metrics=metrics)
    raise SystemExit
client.send({k: v + 1 for k, v in g.items()}, num_samples=7, metrics=metrics)
"""


class Job:
    def __init__(self, tmp: Path, script: str) -> None:
        self.root, self.data, self.io = tmp / "pkg", tmp / "data", tmp / "io"
        for d in (self.root, self.data):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "train.py").write_text(script)
        (self.data / "n.txt").write_text("7")
        self.log = tmp / "train.log"
        self.worker = TrainingWorker(self.root, "train.py", self.io, tmp / "scratch", self.log, None)

    def task(self, round_: int, kind: str = "train", **extra: Any) -> dict[str, Any]:
        base = {"task": kind, "round": round_, "site": "site-1", "data_dir": str(self.data), "params": {}}
        return base | extra

    def run(
        self, round_: int, kind: str = "train", timeout: float = 30, model: bytes = GLOBAL_BYTES, **extra: Any
    ) -> RunResult:
        return self.worker.run(self.task(round_, kind, **extra), model, timeout)


@pytest.fixture
def job(tmp_path: Path) -> Any:
    made: list[Job] = []

    def make(script: str) -> Job:
        j = Job(tmp_path / f"job{len(made)}", script)
        made.append(j)
        return j

    yield make
    for j in made:
        j.worker.close(grace=1)


def loop(**actions: str) -> str:
    junk = actions.pop("junk_bytes", "")
    return LOOP.format(actions={int(k[1:]): v for k, v in actions.items()}, junk=junk.encode("latin-1"))


def _pid(r: RunResult) -> int:
    return int(r.metrics["pid"])


def _gone(pid: int, within: float = 5.0) -> bool:
    """SIGKILL to a process group is delivered asynchronously: a member on another CPU (or not scheduled
    on a loaded machine) may still show for a moment after the leader was reaped."""
    deadline = time.monotonic() + within
    while not _gone_now(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _gone_now(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # killed but not yet reaped by whoever inherited it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _check_update(r: RunResult) -> None:
    assert r.local is not None and r.num_samples == 7
    for k, v in GLOBAL.items():
        np.testing.assert_array_equal(r.local[k], v + 1)


# ---------------------------------------------------------------------- the two forms


def test_loop_form_serves_every_round_in_one_process(job: Callable[[str], Job]) -> None:
    j = job(loop())
    results = [j.run(1), j.run(2), j.run(3, "evaluate")]
    assert len({_pid(r) for r in results}) == 1  # one process served all three
    assert [r.metrics["round"] for r in results] == [1.0, 2.0, 3.0]  # module attributes follow the task
    _check_update(results[0])
    _check_update(results[1])
    assert results[2].local is None and results[2].num_samples is None
    assert j.worker.alive and j.worker.pid == _pid(results[0])
    j.worker.close()
    assert not j.worker.alive and _gone(_pid(results[0]))
    assert (j.data / "loop-ended").read_text() == "yes"  # closing the channel ended the loop cleanly


def test_tinyjob_loop_form_matches_the_one_round_form(tmp_path: Path, job: Callable[[str], Job]) -> None:
    j = job("")
    shutil.copy(HERE / "tinyjob_train.py", j.root / "tinyjob_train.py")
    shutil.copy(HERE / "tinyjob_loop_train.py", j.root / "train.py")
    one = TrainingWorker(j.root, "tinyjob_train.py", tmp_path / "io1", tmp_path / "s1", j.log, None)
    with one:
        for r in (1, 2):
            a, b = j.run(r), one.run(j.task(r), GLOBAL_BYTES, 30)
            expected = delta("site-1", r, {k: v.shape for k, v in GLOBAL.items()})
            assert a.local is not None and b.local is not None
            for k in GLOBAL:
                np.testing.assert_array_equal(a.local[k], b.local[k])
                np.testing.assert_allclose(a.local[k], GLOBAL[k] + expected[k])
            assert a.metrics["val_auc"] == b.metrics["val_auc"] == 0.5 + 0.01 * r
    assert j.worker.alive


def test_one_round_script_is_restarted_per_round(job: Callable[[str], Job]) -> None:
    j = job(ONE_ROUND)
    results = [j.run(1), j.run(2), j.run(3, "evaluate")]
    assert len({_pid(r) for r in results}) == 3  # a fresh process each round
    _check_update(results[0])
    _check_update(results[1])
    assert [r.metrics["round"] for r in results] == [1.0, 2.0, 3.0]
    assert not j.worker.alive  # it exited after answering


def test_run_entry_still_runs_one_task(tmp_path: Path) -> None:
    j = Job(tmp_path, ONE_ROUND)
    j.io.mkdir()
    (j.io / "global.safetensors").write_bytes(GLOBAL_BYTES)
    r = run_entry(j.root, "train.py", j.io, task=j.task(1), timeout=30, log=j.log)
    _check_update(r)
    assert _gone(_pid(r))


def test_entry_outside_the_package_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    with pytest.raises(TrainingFailed, match="outside the job package"):
        TrainingWorker(tmp_path / "pkg", "../evil.py", tmp_path / "io", tmp_path / "s", tmp_path / "l", None)


# ---------------------------------------------------------------------- failures cost one round


def test_crash_costs_one_round_and_the_next_gets_a_fresh_worker(job: Callable[[str], Job]) -> None:
    j = job(loop(r2="crash"))
    first = j.run(1)
    with pytest.raises(TrainingFailed, match="training script exited with 1; see .*train.log") as err:
        j.run(2)
    assert err.value.code == "training_failed"
    assert _gone(_pid(first)) and not j.worker.alive
    assert "RuntimeError: boom in round 2" in j.log.read_text()
    third = j.run(3)
    _check_update(third)
    assert _pid(third) != _pid(first)


def test_hang_past_the_timeout_kills_the_whole_process_group(job: Callable[[str], Job]) -> None:
    j = job(loop(r2="hang"))
    first = j.run(1)
    start = time.monotonic()
    with pytest.raises(TrainingTimeout, match="ran past 1 s") as err:
        j.run(2, timeout=1.0)
    assert time.monotonic() - start < 5
    assert isinstance(err.value, TrainingFailed) and err.value.code == "training_timeout"
    child = int((j.data / "child.pid").read_text())
    assert _gone(_pid(first)) and _gone(child)  # the script's own child went with it
    _check_update(j.run(3))


def test_a_script_that_never_sends(job: Callable[[str], Job]) -> None:
    j = job("from secagg import client\nprint(client.round)\n")
    with pytest.raises(TrainingFailed, match=r"finished without calling client.send\(\)"):
        j.run(1)
    k = job(loop(r2="nosend"))
    k.run(1)
    with pytest.raises(TrainingFailed, match=r"asked for its next task without calling client.send\(\)"):
        k.run(2)
    assert "without calling client.send() for round 2" in k.log.read_text()
    _check_update(k.run(3))


def test_send_twice_in_one_task_fails_the_round(job: Callable[[str], Job]) -> None:
    j = job(loop(r1="twice"))
    with pytest.raises(TrainingFailed, match="exited with 1"):
        j.run(1, "evaluate")
    assert "client.send() was already called for this task (round 1)" in j.log.read_text()
    _check_update(j.run(2))


def test_refusal_becomes_a_policy_refusal_and_the_next_round_works(job: Callable[[str], Job]) -> None:
    j = job(loop(r2="refuse"))
    first = j.run(1)
    with pytest.raises(PolicyRefusal, match="a second optimizer steps the model") as err:
        j.run(2)
    assert err.value.code == "dpsgd_refused"
    assert _gone(_pid(first))
    _check_update(j.run(3))


@pytest.mark.parametrize(
    ("junk", "why"),
    [
        ("\x00\x00\x00\x05hello", "not UTF-8 JSON"),
        ("\xff\xff\xff\xff", "header of 4294967295 bytes is over"),
        ('\x00\x00\x00\x02{}\x00\x00\x00\x00\x00\x10\x00\x00', "payload of 1048576 bytes is over the 0-byte"),
    ],
)
def test_a_malformed_frame_from_the_script_is_refused(job: Callable[[str], Job], junk: str, why: str) -> None:
    j = job(loop(r2="junk", junk_bytes=junk))
    first = j.run(1)
    with pytest.raises(TrainingFailed, match=f"malformed frame .*{why}"):
        j.run(2)
    assert _gone(_pid(first))
    _check_update(j.run(3))


def test_a_forged_answer_for_another_round_is_refused(job: Callable[[str], Job]) -> None:
    forge = """\
import os, json, struct
from secagg import client
def is_socket(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    except OSError:
        return False
fd = next(int(f) for f in os.listdir("/proc/self/fd") if is_socket(f))
h = json.dumps({"type": "done", "round": 99, "task": "train", "result": {"metrics": {}}}).encode()
os.write(fd, struct.pack(">I", len(h)) + h + struct.pack(">Q", 0))
import time; time.sleep(5)
"""
    j = job(forge)
    with pytest.raises(TrainingFailed, match="another task than round 1"):
        j.run(1)


def test_resource_limits_are_reported_as_such(job: Callable[[str], Job]) -> None:
    j = job(loop(r1="xcpu", r2="memory"))
    with pytest.raises(TrainingLimitExceeded, match="killed by SIGXCPU") as err:
        j.run(1)
    assert err.value.code == "training_limit_exceeded"
    with pytest.raises(TrainingLimitExceeded, match="MemoryError"):
        j.run(2)
    _check_update(j.run(3))


def test_sys_exit_with_a_status_fails_the_round(job: Callable[[str], Job]) -> None:
    j = job(loop(r1="exit3"))
    with pytest.raises(TrainingFailed, match="exited with 3"):
        j.run(1)


def test_a_worker_killed_between_rounds_is_replaced(job: Callable[[str], Job]) -> None:
    j = job(loop())
    first = j.run(1)
    os.kill(_pid(first), signal.SIGKILL)
    time.sleep(0.1)
    second = j.run(2)
    _check_update(second)
    assert _pid(second) != _pid(first)


def test_stale_outputs_are_removed_before_each_task(job: Callable[[str], Job]) -> None:
    j = job(loop())
    j.run(1)
    assert (j.io / "local.safetensors").is_file()
    (j.io / "result.json").write_text("{}")
    r = j.run(2, "evaluate")
    assert r.local is None
    assert not (j.io / "local.safetensors").exists() and not (j.io / "result.json").exists()
    assert from_safetensors((j.io / "global.safetensors").read_bytes()).keys() == GLOBAL.keys()


def test_the_agent_survives_a_hostile_sequence(job: Callable[[str], Job]) -> None:
    me = os.getpid()
    j = job(loop(r1="crash", r2="refuse", r3="xcpu", r4="nosend", r5="junk", junk_bytes="\x00\x00\x00\x01x"))
    for r in range(1, 6):
        with pytest.raises((TrainingFailed, PolicyRefusal)):
            j.run(r)
    _check_update(j.run(6))
    assert os.getpid() == me


def test_closed_worker_refuses_to_run(job: Callable[[str], Job]) -> None:
    j = job(loop())
    j.worker.close()
    with pytest.raises(TrainingFailed, match="closed"):
        j.run(1)


# ---------------------------------------------------------------------- DP-SGD in a long-lived worker

DP = {"target_epsilon": 2.0, "target_delta": 1e-5, "max_grad_norm": 1.0, "epochs": 1}
TORCH_LOOP = """\
import os
import torch
from torch.utils.data import DataLoader, TensorDataset
from secagg import client

torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(3, 2))
gen = torch.Generator().manual_seed(1)
x = torch.randn(64, 3, generator=gen)
y = (x.sum(1) > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)   # 4 batches, made once
for task in client.tasks():
    model.load_state_dict(client.receive())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for xb, yb in loader:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        if task.params.get("second_optimizer"):
            torch.optim.SGD(model.parameters(), lr=0.1).step()
    client.send(model.state_dict(), num_samples=64, metrics={"pid": float(os.getpid())})
"""


def test_dpsgd_gets_a_fresh_run_each_round_in_one_process(job: Callable[[str], Job]) -> None:
    j = job(TORCH_LOOP)
    model = to_safetensors(
        OrderedDict([("0.weight", np.full((2, 3), 0.1, np.float32)), ("0.bias", np.zeros(2, np.float32))])
    )
    kw: dict[str, Any] = {"timeout": 240, "model": model}
    rounds = [j.run(1, dpsgd=DP, **kw), j.run(2, dpsgd=DP, **kw)]
    plain = j.run(3, dpsgd=None, **kw)  # the policy dropped DP-SGD: no runtime this round
    with pytest.raises(PolicyRefusal, match="second optimizer") as err:
        j.run(4, dpsgd=DP, params={"second_optimizer": True}, **kw)
    assert err.value.code == "dpsgd_refused"
    after = j.run(5, dpsgd=DP, **kw)  # a fresh worker, a fresh run
    assert _pid(rounds[0]) == _pid(rounds[1]) == _pid(plain) != _pid(after)
    for r in (*rounds, after):
        [spend] = r.training_spends
        assert spend["steps"] == 4 and spend["sample_rate"] == pytest.approx(1 / 4)  # this round's only
    assert rounds[0].training_spends == rounds[1].training_spends  # same calibration, fresh accountant
    assert plain.training_spends == ()


# ---------------------------------------------------------------------- confined before any job code

PEEK = """\
import os
from secagg import client

PEEK = "SECRET"

for task in client.tasks():
    try:
        open(PEEK).read()
        outside = 1.0
    except OSError:
        outside = 0.0
    metrics = {"outside": outside, "pid": float(os.getpid())}
    client.send(client.receive_numpy(), num_samples=1, metrics=metrics)
"""


def test_confined_worker_serves_rounds_and_cannot_read_outside(tmp_path: Path) -> None:
    from secagg.agent import sandbox
    from secagg.policy.model import SandboxSettings

    lacking = {k: v for k, v in sandbox.available().missing().items() if k in sandbox.DEFAULT_REQUIRED}
    if lacking:
        pytest.skip(f"this host cannot confine: {lacking}")
    secret = tmp_path / "agent-secret.txt"
    secret.write_text("key")
    j = Job(tmp_path / "job", PEEK.replace("SECRET", str(secret)))
    for d in (j.io, tmp_path / "job" / "scratch"):
        d.mkdir()
    scratch = tmp_path / "job" / "scratch"
    settings = SandboxSettings()
    c = sandbox.plan(job_root=j.root, data_dir=j.data, io_dir=j.io, scratch_dir=scratch, settings=settings)
    with TrainingWorker(j.root, "train.py", j.io, scratch, j.log, c) as w:
        first, second = (w.run(j.task(r), GLOBAL_BYTES, 30) for r in (1, 2))
        assert first.metrics["outside"] == second.metrics["outside"] == 0.0
        assert _pid(first) == _pid(second)
        assert w.sandbox is not None and set(sandbox.DEFAULT_REQUIRED) <= set(w.sandbox["applied"])
    assert "sandbox applied:" in j.log.read_text()
    assert secret.read_text() == "key"  # the agent itself still can


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_outputs_planted_as_links_or_fifos_are_not_followed(
    tmp_path: Path, job: Callable[[str], Job], plant: str
) -> None:
    target = tmp_path / "agent-owned.safetensors"
    planted = OrderedDict(w=np.full((2, 3), 9, np.float32), b=np.ones(2, np.float32))
    target.write_bytes(to_safetensors(planted))
    script = f"""\
import os
from secagg import client
for task in client.tasks():
    client.send(client.receive_numpy(), num_samples=1)
    out = client._io() / "local.safetensors"
    os.unlink(out)
    if {plant!r} == "symlink":
        os.symlink({str(target)!r}, out)
    elif {plant!r} == "hardlink":
        os.link({str(target)!r}, out)
    else:
        os.mkfifo(out)
    client._current.local_bytes = {len(target.read_bytes())}
"""
    j = job(script)
    with pytest.raises(TrainingFailed, match="local.safetensors is missing or not what it sent"):
        j.run(1, timeout=10)
    (j.io / "global.safetensors").unlink()
    os.symlink(target, j.io / ".global.safetensors.tmp")  # a planted tmp name is not written through
    with pytest.raises(TrainingFailed):
        j.run(2, timeout=10)
    assert from_safetensors(target.read_bytes())["w"][0, 0] == 9


def test_two_threads_reaping_one_worker_close_its_pidfd_once() -> None:
    """The job's thread ending its job and the agent's close reap the same worker at once (seen in
    tests/integration/test_consistency.py as ``OSError: [Errno 9] Bad file descriptor`` from the
    second ``os.close`` of the pidfd); before the lock about a quarter of these rounds failed."""
    import subprocess
    import threading

    from secagg.agent.worker import _Proc

    class _Chan:
        def close(self) -> None:
            pass

    for _ in range(30):
        proc = _Proc(subprocess.Popen(["sleep", "0.05"], start_new_session=True), _Chan())  # type: ignore[arg-type]  # noqa: S607
        both = threading.Barrier(2)
        errors: list[BaseException] = []

        def reap(p: _Proc = proc, b: threading.Barrier = both, errs: list[BaseException] = errors) -> None:
            b.wait()
            try:
                p.reap(grace=2)
            except BaseException as exc:  # noqa: BLE001 - handed to the assertion
                errs.append(exc)

        threads = [threading.Thread(target=reap) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors and proc.pidfd is None and proc.popen.returncode is not None

"""Invariant 8 in a real child process: a worker confined by ``plan()`` + ``confine()`` tries what a
hostile job would, and every attempt fails inside it, while ordinary job work (its package, the data,
numpy, a torch training step) keeps working.

Each test starts ``sandbox_probe.py`` (the stand-in worker) over a fake site laid out in tmp_path:
``state/`` (he-secret.ctx, ledger, audit log, jobs/JOB/{pkg,io,scratch}, jobs/OTHER), ``kit/key.pem``
and ``data/``. The secrets are readable by the test's uid, so every denial below is the sandbox's.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secagg.agent.sandbox import Confinement, landlock, limits, plan, scratch_env, seccomp
from secagg.policy.model import SandboxSettings

PROBE = Path(__file__).with_name("sandbox_probe.py")
NOBODY = 65534
_MAX_USERNS = Path("/proc/sys/user/max_user_namespaces")
USERNS_ALLOWED = _MAX_USERNS.exists() and _MAX_USERNS.read_text().strip() != "0"

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64", reason="Linux x86_64 only"),
    pytest.mark.skipif(landlock.abi_version() < 6, reason="needs Landlock ABI 6 (Linux 6.12+)"),
    pytest.mark.skipif(not seccomp.available(), reason="needs seccomp and libseccomp.so.2"),
]


@dataclass
class Site:
    root: Path
    job: Path

    @property
    def secrets(self) -> list[Path]:
        s = self.root / "state"
        return [
            s / "he-secret.ctx",
            s / "privacy-ledger.sqlite",
            s / "audit.jsonl",
            self.root / "kit/key.pem",
        ]

    def confinement(self, **settings: Any) -> Confinement:
        return plan(
            job_root=self.job / "pkg",
            data_dir=self.root / "data",
            io_dir=self.job / "io",
            scratch_dir=self.job / "scratch",
            settings=SandboxSettings(**settings),
        )


def make_site(root: Path, owner: int | None = None) -> Site:
    job = root / "state/jobs/job-1"
    for d in ("kit", "data", "state/jobs/job-2/pkg", "state/jobs/job-2/io"):
        (root / d).mkdir(parents=True)
    for d in ("pkg", "io", "scratch"):
        (job / d).mkdir(parents=True)
    files = {
        "state/he-secret.ctx": "CKKS secret",
        "state/privacy-ledger.sqlite": "ledger",
        "state/audit.jsonl": "{}\n",
        "kit/key.pem": "-----BEGIN PRIVATE KEY-----",
        "data/train.csv": "1,2,3\n",
        "state/jobs/job-1/pkg/train.py": "print('hi')\n",
        "state/jobs/job-2/pkg/train.py": "other job\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
        (root / name).chmod(0o644)  # readable by anyone: a denial is the sandbox's, not the file mode's
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    if owner is not None:
        for d in (job / "io", job / "scratch"):
            os.chown(d, owner, owner)
    return Site(root, job)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


def run_probe(
    c: Confinement,
    attempts: list[list[Any]],
    *,
    layer: str = "all",
    uid: int | None = None,
    pass_fds: tuple[int, ...] = (),
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    spec = {"confinement": c.to_json(), "attempts": attempts, "layer": layer, "uid": uid}
    return subprocess.run(
        [sys.executable, str(PROBE), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        pass_fds=pass_fds,
        env=env,
        check=False,
    )


def outcomes(c: Confinement, attempts: list[list[Any]], **kw: Any) -> tuple[dict[str, Any], dict[str, str]]:
    p = run_probe(c, attempts, **kw)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return out["applied"], {f"{k} {a}": r for (k, a), r in zip(attempts, out["results"], strict=True)}


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A TCP listener (the aggregator's port), a UDP socket, a pathname and an abstract UNIX listener."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix_path = str(tmp_path / "agent.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    abstract_name = f"secagg-test-{os.getpid()}-{id(unix)}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    yield {
        "tcp": tcp,
        "tcp_port": tcp.getsockname()[1],
        "udp": udp,
        "udp_port": udp.getsockname()[1],
        "unix": unix,
        "unix_path": unix_path,
        "abstract": abstract,
        "abstract_name": abstract_name,
        "free_port": free_port,
    }
    for s in (tcp, udp, unix, abstract):
        s.close()


def nothing_arrived(*socks: socket.socket) -> bool:
    for s in socks:
        s.setblocking(False)
        try:
            if s.type == socket.SOCK_DGRAM:
                s.recv(16)
            else:
                s.accept()
            return False
        except BlockingIOError:
            pass
    return True


# --- one hostile worker, many attempts ---------------------------------------------------------------


def test_hostile_worker_is_refused_everything(site: Site, listeners: dict[str, Any]) -> None:
    c = site.confinement(processes=8, memory_bytes=1 << 30)
    chan_agent, chan_worker = socket.socketpair()  # the agent's channel, inherited by the worker
    L = listeners
    attempts: list[list[Any]] = [
        *[["read", str(p)] for p in site.secrets],
        ["read", str(site.root / "state/jobs/job-2/pkg/train.py")],
        ["listdir", str(site.root / "state")],
        ["listdir", str(site.root / "state/jobs")],
        ["read", str(site.job / "pkg/train.py")],
        ["read", str(site.root / "data/train.csv")],
        ["listdir", str(site.job / "pkg")],
        ["write", str(site.job / "io/update.safetensors")],
        ["write", str(site.job / "scratch/tmp.bin")],
        ["mkdir", str(site.job / "scratch/cache")],
        ["write", str(site.job / "pkg/train.py")],
        ["write", str(site.root / "data/train.csv")],
        ["write", str(site.root / "state/audit.jsonl")],
        ["write", str(site.root / "state/jobs/job-2/io/update.safetensors")],
        ["write", str(Path(tempfile.gettempdir()) / f"secagg-escape-{os.getpid()}")],
        ["write", "/dev/null"],
        ["chmod", str(site.root / "kit/key.pem")],
        ["fchmod", str(site.root / "data/train.csv")],
        ["chown", str(site.job / "io")],
        ["setxattr", str(site.job / "io")],
        ["link", [str(site.secrets[0]), str(site.job / "scratch/linked")]],
        ["symlink_read", [str(site.secrets[0]), str(site.job / "scratch/symlinked")]],
        ["read", f"/proc/self/root{site.secrets[0]}"],
        ["tcp_connect", L["tcp_port"]],
        ["held_tcp_connect", L["tcp_port"]],
        ["tcp_bind", L["free_port"]],
        ["udp", L["udp_port"]],
        ["unix_connect", L["unix_path"]],
        ["abstract_connect", L["abstract_name"]],
        ["socketpair", 0],
        ["held_unix_send", chan_worker.fileno()],
        ["kill", os.getpid()],
        ["ptrace", os.getpid()],
        ["unshare", 0],
        ["mount", 0],
        ["clone_newuser", 0],
        ["caps", 0],
        ["no_new_privs", 0],
        ["forks", 20],
        ["alloc", 2 << 30],
        ["alloc", 16 << 20],
    ]
    worker_fd = chan_worker.fileno()
    applied, r = outcomes(c, attempts, pass_fds=(worker_fd,))
    chan_worker.close()

    assert {
        "landlock-fs",
        "landlock-net",
        "landlock-scope",
        "seccomp",
        "no-new-privs",
        "capabilities",
        "limits",
    } <= set(applied["applied"]), applied
    # the agent's files and other jobs: not readable, not even listable
    for p in site.secrets:
        assert r[f"read {p}"] == "PermissionError:EACCES", p
    assert r[f"read {site.root / 'state/jobs/job-2/pkg/train.py'}"] == "PermissionError:EACCES"
    assert r[f"listdir {site.root / 'state'}"] == "PermissionError:EACCES"
    assert r[f"listdir {site.root / 'state/jobs'}"] == "PermissionError:EACCES"
    # its own package and the data: readable
    assert r[f"read {site.job / 'pkg/train.py'}"] == "ok"
    assert r[f"read {site.root / 'data/train.csv'}"] == "ok"
    assert r[f"listdir {site.job / 'pkg'}"] == "ok"
    # writes: only io and scratch
    assert r[f"write {site.job / 'io/update.safetensors'}"] == "ok"
    assert r[f"write {site.job / 'scratch/tmp.bin'}"] == "ok"
    assert r[f"mkdir {site.job / 'scratch/cache'}"] == "ok"
    assert (site.job / "io/update.safetensors").read_bytes() == b"x"
    assert r[f"write {site.job / 'pkg/train.py'}"] == "PermissionError:EACCES"
    assert (site.job / "pkg/train.py").read_text() == "print('hi')\n"
    assert r[f"write {site.root / 'data/train.csv'}"] == "PermissionError:EACCES"
    assert r[f"write {site.root / 'state/audit.jsonl'}"] == "PermissionError:EACCES"
    assert r[f"write {site.root / 'state/jobs/job-2/io/update.safetensors'}"] == "PermissionError:EACCES"
    escape = Path(tempfile.gettempdir()) / f"secagg-escape-{os.getpid()}"
    assert r[f"write {escape}"] == "PermissionError:EACCES" and not escape.exists()
    assert r["write /dev/null"] == "ok"
    # no metadata writes (chmod the key world-readable, a data file opened read-only), no way round
    # the rules through links or /proc/self/root
    assert r[f"chmod {site.root / 'kit/key.pem'}"] == "PermissionError:EPERM"
    assert r[f"fchmod {site.root / 'data/train.csv'}"] == "PermissionError:EPERM"
    assert (site.root / "kit/key.pem").stat().st_mode & 0o777 == 0o644
    assert (site.root / "data/train.csv").stat().st_mode & 0o777 == 0o644
    assert r[f"chown {site.job / 'io'}"] == r[f"setxattr {site.job / 'io'}"] == "PermissionError:EPERM"
    link = [str(site.secrets[0]), str(site.job / "scratch/linked")]
    assert r[f"link {link}"] == "OSError:EXDEV" and not (site.job / "scratch/linked").exists()
    assert r[f"symlink_read {[str(site.secrets[0]), str(site.job / 'scratch/symlinked')]}"] == (
        "PermissionError:EACCES"
    )
    assert r[f"read /proc/self/root{site.secrets[0]}"] == "PermissionError:EACCES"
    # network: no socket of any kind, and a TCP socket made before confining cannot connect either
    assert r[f"tcp_connect {L['tcp_port']}"] == "PermissionError:EACCES"
    assert r[f"held_tcp_connect {L['tcp_port']}"].startswith(("PermissionError", "OSError"))
    assert r[f"tcp_bind {L['free_port']}"] == "PermissionError:EACCES"
    assert r[f"udp {L['udp_port']}"] == "PermissionError:EACCES"
    assert r[f"unix_connect {L['unix_path']}"] == "PermissionError:EACCES"
    assert r[f"abstract_connect {L['abstract_name']}"] == "PermissionError:EACCES"
    assert nothing_arrived(L["tcp"], L["udp"], L["unix"], L["abstract"])
    # ... while socketpair and the inherited channel still work
    assert r["socketpair 0"] == "ok:x"
    assert r[f"held_unix_send {worker_fd}"] == "ok"
    chan_agent.settimeout(5)
    assert chan_agent.recv(5) == b"hello"
    chan_agent.close()
    # no signals to, no ptrace of the agent; no namespaces, mounts, privileges
    assert r[f"kill {os.getpid()}"] == "PermissionError:EPERM"
    assert r[f"ptrace {os.getpid()}"] == "OSError:EPERM"
    assert r["unshare 0"] == r["mount 0"] == r["clone_newuser 0"] == "OSError:EPERM"
    caps = json.loads(r["caps 0"].removeprefix("ok:"))
    assert caps == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0} or os.getuid() != 0
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapAmb"] == 0
    assert r["no_new_privs 0"] == "ok:True"
    # limits: 8 tasks in all, so at most 7 children next to the worker; memory past 1 GiB refused
    kind, _, forked = r["forks 20"].rpartition(":")
    assert kind == "BlockingIOError:EAGAIN" and 0 < int(forked) <= 7, r["forks 20"]
    assert applied["process_limit"] in {
        "cgroup-v2-pids",
        "cgroup-v1-pids",
        "rlimit-nproc-userns",
        "rlimit-nproc-shared",
    }
    assert r[f"alloc {2 << 30}"] == "MemoryError"
    assert r[f"alloc {16 << 20}"] == "ok"


def test_cpu_limit_kills_a_busy_loop(site: Site) -> None:
    p = run_probe(site.confinement(cpu_seconds=1), [["cpu_burn", 0]], timeout=30)
    assert p.returncode in (-signal.SIGXCPU, -signal.SIGKILL), (p.returncode, p.stderr)


def test_file_size_limit(site: Site) -> None:
    c = site.confinement(file_size_bytes=4096)
    _, r = outcomes(c, [["write", str(site.job / "io/small")]])
    assert r[f"write {site.job / 'io/small'}"] == "ok"
    code = (
        "import sys\n"
        "from secagg.agent.sandbox import Confinement, confine\n"
        "confine(Confinement.from_json(sys.argv[1]))\n"
        "try:\n    with open(sys.argv[2], 'wb') as f:\n        f.write(b'x' * 8192)\n    print('ok')\n"
        "except OSError as e:\n    print(type(e).__name__, e.errno)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, c.to_json(), str(site.job / "io/big")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.stdout.strip() == "OSError 27", out.stderr  # EFBIG
    assert (site.job / "io/big").stat().st_size == 4096


def test_other_system_call_tables_are_killed(site: Site) -> None:
    """An x32 socket(2) on x86_64 does not sidestep the filter: libseccomp kills the process."""
    p = run_probe(site.confinement(), [["x32_socket", 0]], timeout=30)
    # killed by the filter (SIGSYS); on a kernel built without x32 the call cannot exist at all
    assert p.returncode == -signal.SIGSYS or '"OSError:ENOSYS"' in p.stdout, (p.returncode, p.stdout)


def test_numpy_and_a_torch_training_step_work_inside(site: Site) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **scratch_env(site.job / "scratch"),
        "OMP_NUM_THREADS": "2",
    }
    applied, r = outcomes(site.confinement(), [["torch", 0]], env=env, timeout=120)
    assert r["torch 0"] == "ok:True"
    assert "seccomp" in applied["applied"] and "landlock-fs" in applied["applied"]


# --- the Landlock layer alone ------------------------------------------------------------------------


def test_landlock_layer_alone_denies_tcp_signals_and_abstract_sockets(
    site: Site, listeners: dict[str, Any]
) -> None:
    """Without seccomp and netns, Landlock still refuses TCP connect/bind, signals out, abstract sockets.

    A pathname UNIX socket is outside Landlock's reach (ABI 7): that one is left to the seccomp layer,
    and this test pins the gap so that the seccomp denial above stays necessary.
    """
    L = listeners
    attempts = [
        ["tcp_connect", L["tcp_port"]],
        ["tcp_bind", L["free_port"]],
        ["abstract_connect", L["abstract_name"]],
        ["kill", os.getpid()],
        ["read", str(site.secrets[0])],
        ["unix_connect", L["unix_path"]],
    ]
    _, r = outcomes(site.confinement(), attempts, layer="landlock")
    assert r[f"tcp_connect {L['tcp_port']}"] == "PermissionError:EACCES"
    assert r[f"tcp_bind {L['free_port']}"] == "PermissionError:EACCES"
    assert r[f"abstract_connect {L['abstract_name']}"] == "PermissionError:EPERM"
    assert r[f"kill {os.getpid()}"] == "PermissionError:EPERM"
    assert r[f"read {site.secrets[0]}"] == "PermissionError:EACCES"
    assert r[f"unix_connect {L['unix_path']}"] == "ok"  # the gap seccomp closes


# --- unprivileged, as production agents run ----------------------------------------------------------


@pytest.fixture
def public_site() -> Iterator[Site]:
    """A site that uid 65534 can traverse (tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="secagg-sbx-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield make_site(root / "site", owner=NOBODY)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.getuid() != 0, reason="drops to uid 65534 from root")
def test_unprivileged_worker_is_confined_the_same(public_site: Site) -> None:
    site = public_site
    sibling = subprocess.Popen(["sleep", "60"], user=NOBODY, group=NOBODY)  # same uid as the worker
    try:
        attempts = [
            *[["read", str(p)] for p in site.secrets],
            ["read", str(site.job / "pkg/train.py")],
            ["write", str(site.job / "io/out")],
            ["write", str(site.root / "state/jobs/job-2/io/x")],
            ["kill", sibling.pid],
            ["tcp_connect", 9],
            ["forks", 20],
            ["caps", 0],
        ]
        applied, r = outcomes(site.confinement(processes=8), attempts, uid=NOBODY)
        assert sibling.poll() is None, "the worker signalled a process outside its sandbox"
    finally:
        sibling.kill()
        sibling.wait()
    must = {
        "landlock-fs",
        "landlock-net",
        "landlock-scope",
        "seccomp",
        "no-new-privs",
        "capabilities",
        "limits",
    }
    assert must <= set(applied["applied"]), applied
    if USERNS_ALLOWED:  # the network namespace comes with a user namespace, and a per-sandbox task count
        assert "netns" in applied["applied"] and applied["userns"] is True
        assert applied["process_limit"] == "rlimit-nproc-userns"
        max_children = 7
    else:  # RLIMIT_NPROC over the uid's tasks (the sibling and the worker) plus the limit
        assert applied["process_limit"] == "rlimit-nproc-shared"
        max_children = 8
    for p in site.secrets:  # mode 0644: the file mode would allow it
        assert r[f"read {p}"] == "PermissionError:EACCES", p
    assert r[f"read {site.job / 'pkg/train.py'}"] == "ok"
    assert r[f"write {site.job / 'io/out'}"] == "ok"
    assert r[f"write {site.root / 'state/jobs/job-2/io/x'}"] == "PermissionError:EACCES"
    assert r[f"kill {sibling.pid}"] == "PermissionError:EPERM"
    assert r["tcp_connect 9"] == "PermissionError:EACCES"
    kind, _, forked = r["forks 20"].rpartition(":")
    assert kind == "BlockingIOError:EAGAIN" and 0 < int(forked) <= max_children, r["forks 20"]
    assert json.loads(r["caps 0"].removeprefix("ok:"))["CapEff"] == 0


# --- refusing rather than running unconfined ---------------------------------------------------------

_REFUSAL = """
import json, sys, threading, time
from secagg.agent.sandbox import Confinement, SandboxUnavailable, confine, landlock
c = Confinement.from_json(sys.argv[1])
how = sys.argv[2]
if how == "landlock-broken":
    def broken(*a, **k):
        raise landlock.LandlockError(38, "Landlock is not available in this kernel")
    landlock.restrict_self = broken
elif how == "threaded":
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
try:
    a = confine(c)
    print(json.dumps({"applied": a.applied, "missing": sorted(a.missing)}))
except SandboxUnavailable as e:
    print(json.dumps({"refused": e.code, "missing": list(e.missing), "message": str(e)}))
"""


def _refusal_run(c: Confinement, how: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _REFUSAL, c.to_json(), how],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_confine_raises_when_a_required_protection_fails(site: Site) -> None:
    got = _refusal_run(site.confinement(), "landlock-broken")
    assert got["refused"] == "sandbox_unavailable"
    assert set(got["missing"]) == {"landlock-fs", "landlock-net", "landlock-scope"}
    assert "Landlock is not available" in got["message"] and "insecure_unconfined" in got["message"]


def test_insecure_unconfined_applies_what_it_can_and_never_raises(site: Site) -> None:
    got = _refusal_run(site.confinement(insecure_unconfined=True), "landlock-broken")
    assert "refused" not in got
    assert "seccomp" in got["applied"] and "landlock-fs" in got["missing"]


def test_confine_refuses_a_process_that_already_has_threads(site: Site) -> None:
    got = _refusal_run(site.confinement(), "threaded")
    assert got["refused"] == "sandbox_unavailable" and "2 threads" in got["message"]


@pytest.mark.skipif(limits.cgroup_mechanism() is None, reason="no writable pids cgroup here")
def test_sandbox_cgroups_are_reaped_after_the_worker_exits(site: Site) -> None:
    applied, _ = outcomes(site.confinement(processes=8), [])
    leaf = Path(applied["cgroup"])
    assert applied["process_limit"].startswith("cgroup-") and (leaf / "pids.max").read_text().strip() == "8"
    limits.reap_stale_cgroups()
    assert not leaf.exists()

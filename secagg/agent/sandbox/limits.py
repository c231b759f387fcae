"""Resource limits of the worker: rlimits, and a process limit that actually holds.

``setrlimit(2)`` covers memory (RLIMIT_AS: address space, so it also counts memory that is mapped but
never touched), open files, file size (a write past it fails with EFBIG: Python ignores SIGXFSZ), CPU
seconds (SIGXCPU at the soft limit, SIGKILL two seconds later at the hard one) and core dumps (0).

The number of processes is the hard one. RLIMIT_NPROC counts every task (process *or thread*) of the
real uid, and the kernel never applies it to uid 0 (INIT_USER), capabilities or not. So the process
limit is the first of these that applies:

``cgroup-v2-pids``
    a leaf cgroup of our own with ``pids.max``, in a cgroup v2 hierarchy delegated to the agent (the
    agent's cgroup, or its parent, has ``pids`` in ``cgroup.subtree_control`` and is writable);
``cgroup-v1-pids``
    the same in a writable cgroup v1 ``pids`` hierarchy (as root, typically);
``rlimit-nproc-userns``
    RLIMIT_NPROC in the user namespace the network isolation created: since Linux 5.14 the count is
    kept per user namespace, so it counts only the sandbox's own tasks (unprivileged uid only);
``rlimit-nproc-shared``
    RLIMIT_NPROC on a uid shared with the agent: set to the uid's task count plus the limit, so it
    bounds a fork bomb but the agent's own threads eat into the job's allowance (unprivileged uid only).

Every mechanism counts threads as well as processes (torch starts one per core). Each sandbox cgroup
is named after the pid that created it; :func:`reap_stale_cgroups` removes the empty ones whose creator
has gone (the next :func:`join_pids_cgroup` does that too).
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
from dataclasses import dataclass
from pathlib import Path

#: grace between the CPU soft limit (SIGXCPU) and the hard one (SIGKILL)
CPU_GRACE_S = 2
CGROUP_V1_GROUP = "secagg-sandbox"
_LEAF_PREFIX = "secagg-w"


@dataclass(frozen=True)
class ResourceLimits:
    """The values to apply; None leaves a limit as inherited."""

    memory_bytes: int | None
    processes: int | None
    open_files: int | None
    file_size_bytes: int | None
    cpu_seconds: int | None


def _lower(which: int, soft: int, hard: int | None = None) -> None:
    """Lower ``which`` to ``soft``/``hard`` (never above the inherited hard limit)."""
    _cur_soft, cur_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def apply_rlimits(lim: ResourceLimits) -> dict[str, int]:
    """Apply every rlimit except the process limit; returns what was set (name -> soft value)."""
    done: dict[str, int] = {}
    _lower(resource.RLIMIT_CORE, 0)
    done["core"] = 0
    if lim.memory_bytes is not None:
        _lower(resource.RLIMIT_AS, lim.memory_bytes)
        done["memory_bytes"] = lim.memory_bytes
    if lim.open_files is not None:
        _lower(resource.RLIMIT_NOFILE, lim.open_files)
        done["open_files"] = lim.open_files
    if lim.file_size_bytes is not None:
        _lower(resource.RLIMIT_FSIZE, lim.file_size_bytes)
        done["file_size_bytes"] = lim.file_size_bytes
    if lim.cpu_seconds is not None:
        _lower(resource.RLIMIT_CPU, lim.cpu_seconds, lim.cpu_seconds + CPU_GRACE_S)
        done["cpu_seconds"] = lim.cpu_seconds
    return done


# --- cgroups -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hierarchy:
    version: int
    #: the directory of this process's cgroup in that hierarchy
    own: Path


def _hierarchies() -> list[_Hierarchy]:
    """This process's cgroup directory in the cgroup v2 hierarchy and the v1 ``pids`` one, if mounted."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        membership = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    paths: dict[str, str] = {}  # "v2" or "pids" -> path in the hierarchy
    for line in membership:
        _id, controllers, path = line.split(":", 2)
        if controllers == "":
            paths["v2"] = path
        elif "pids" in controllers.split(","):
            paths["pids"] = path
    found: list[_Hierarchy] = []
    for line in mountinfo:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, mountpoint, fstype, options = fields[3], fields[4], rfields[0], rfields[2]
        key = (
            "v2"
            if fstype == "cgroup2"
            else "pids"
            if fstype == "cgroup" and "pids" in options.split(",")
            else ""
        )
        if not key or key not in paths:
            continue
        path = paths.pop(key)
        rel = path[len(root) :] if root != "/" and path.startswith(root) else path
        found.append(_Hierarchy(2 if key == "v2" else 1, Path(mountpoint) / rel.lstrip("/")))
    found.sort(key=lambda h: -h.version)  # v2 first
    return found


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _reap(parent: Path) -> None:
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            name = child.name
            if not name.startswith(_LEAF_PREFIX):
                continue
            pid = name[len(_LEAF_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):  # EBUSY while tasks remain: left for later
                    child.rmdir()


def _candidates(h: _Hierarchy) -> list[Path]:
    """Directories under which a leaf for the worker could be made in hierarchy ``h``."""
    if h.version == 1:
        return [h.own / CGROUP_V1_GROUP]
    out = []
    for parent in (h.own, h.own.parent):
        try:
            if "pids" in (parent / "cgroup.subtree_control").read_text().split():
                out.append(parent)
        except OSError:
            continue
    return out


def _usable(parent: Path, version: int) -> bool:
    if version == 1:
        base = parent.parent
        return os.access(parent if parent.is_dir() else base, os.W_OK) and (base / "cgroup.procs").exists()
    return os.access(parent, os.W_OK) and os.access(parent / "cgroup.procs", os.W_OK)


def cgroup_mechanism() -> str | None:
    """Which cgroup process limit :func:`join_pids_cgroup` would use here, by a look only (no writes)."""
    for h in _hierarchies():
        if any(_usable(p, h.version) for p in _candidates(h)):
            return f"cgroup-v{h.version}-pids"
    return None


def join_pids_cgroup(max_tasks: int) -> tuple[str, str] | None:
    """Move this process into a fresh cgroup limited to ``max_tasks`` tasks; (mechanism, directory)."""
    for h in _hierarchies():
        for parent in _candidates(h):
            if not _usable(parent, h.version):
                continue
            try:
                if h.version == 1:
                    parent.mkdir(exist_ok=True)
                _reap(parent)
                leaf = parent / f"{_LEAF_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
                leaf.mkdir()
            except OSError:
                continue
            try:
                (leaf / "pids.max").write_text(str(max_tasks))
                (leaf / "cgroup.procs").write_text(str(os.getpid()))
            except OSError:
                with contextlib.suppress(OSError):
                    leaf.rmdir()
                continue
            return f"cgroup-v{h.version}-pids", str(leaf)
    return None


def reap_stale_cgroups() -> None:
    """Remove the sandbox cgroups whose worker has exited (the agent may call this after a worker ends)."""
    for h in _hierarchies():
        for parent in _candidates(h):
            _reap(parent)


# --- RLIMIT_NPROC ------------------------------------------------------------------------------------


def _uid_tasks(uid: int) -> int:
    """Tasks (threads included) whose real uid is ``uid``: what RLIMIT_NPROC counts."""
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            n += int(fields.get("Threads", "1"))
    return n


def apply_nproc(max_tasks: int, *, own_user_namespace: bool) -> str | None:
    """Set RLIMIT_NPROC; the mechanism name when it really limits this process, else None (uid 0)."""
    uid = os.getuid()
    if uid == 0 and not own_user_namespace:
        # never counted for INIT_USER, but harmless and it keeps a later uid change bounded
        _lower(resource.RLIMIT_NPROC, max_tasks)
        return None
    if own_user_namespace:
        _lower(resource.RLIMIT_NPROC, max_tasks)
        return None if uid == 0 else "rlimit-nproc-userns"
    _lower(resource.RLIMIT_NPROC, _uid_tasks(uid) + max_tasks)
    return "rlimit-nproc-shared"

"""Kernel confinement of a job's training worker (DESIGN.md invariant 8).

The agent plans a :class:`Confinement` for a job (:func:`plan`: which folders the job may read and
write, its resource limits, which protections must hold), checks at admission that this kernel can
give them (:func:`require_available`), and hands the plan to the job's worker process as JSON; the
worker calls :func:`confine` on itself before any job code is imported. Everything is the kernel's
own unprivileged machinery, one module per mechanism:

=====================  ==============================================================================
protection             mechanism
=====================  ==============================================================================
``landlock-fs``        :mod:`.landlock`: only the planned paths, read-only or read-write
``landlock-net``       :mod:`.landlock` (ABI 4): TCP bind and connect denied on every port
``landlock-scope``     :mod:`.landlock` (ABI 6): no signals to, no abstract UNIX sockets of, processes
                       outside the sandbox
``seccomp``            :mod:`.seccomp`: no socket(2) of any family, no io_uring, namespaces, ptrace,
                       mount, modules, bpf, perf, keyrings, ...
``no-new-privs``       :mod:`.privs`: execve can never grant privileges
``capabilities``       :mod:`.privs`: every capability dropped (root in the sandbox is powerless)
``limits``             :mod:`.limits`: memory, open files, file size, CPU seconds, no core dumps, and a
                       process limit that holds (a pids cgroup, or RLIMIT_NPROC where the kernel
                       applies it)
``netns``              :mod:`.netns`: a fresh, empty network namespace (optional unless the policy
                       says ``require_netns``)
=====================  ==============================================================================
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secagg.agent.sandbox import landlock, limits, netns, privs, seccomp
from secagg.errors import PolicyRefusal
from secagg.reasons import Reason

if TYPE_CHECKING:
    from secagg.policy.model import SandboxSettings

__all__ = [
    "PROTECTIONS",
    "Applied",
    "Availability",
    "Confinement",
    "Limits",
    "SandboxUnavailable",
    "available",
    "confine",
    "describe",
    "plan",
    "require_available",
    "scratch_env",
]

#: every protection :func:`confine` knows, in the order it applies them
PROTECTIONS = (
    "limits",
    "netns",
    "no-new-privs",
    "capabilities",
    "landlock-fs",
    "landlock-net",
    "landlock-scope",
    "seccomp",
)
#: what :func:`plan` requires unless the policy asks for more (``require_netns``)
DEFAULT_REQUIRED = tuple(p for p in PROTECTIONS if p != "netns")

#: system files and folders every Python / numpy / torch process needs to read
SYSTEM_READ_ONLY = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl/openssl.cnf",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
    "/sys/devices/system/cpu",
    "/sys/devices/system/node",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    # resolved by the worker itself when it confines: its own /proc/PID (glibc reads maps for a thread's
    # stack, MKL reads environ); processes it starts later do not see their own /proc entry
    "/proc/self",
)
#: system files the worker may write: /dev/null is opened read-write by subprocess and friends
SYSTEM_READ_WRITE = ("/dev/null",)
#: NVIDIA device files a GPU job needs read-write with ioctl (``sandbox.allow_gpu``)
GPU_DEVICE_GLOBS = ("nvidia*", "nvidia-caps/*", "dri/*")
GPU_READ_ONLY = ("/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices")


class SandboxUnavailable(PolicyRefusal):
    """A protection the policy requires cannot be applied on this host (or failed to apply)."""

    code: str = Reason.SANDBOX_UNAVAILABLE

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message, code=Reason.SANDBOX_UNAVAILABLE)
        #: names of the protections that are missing, from :data:`PROTECTIONS`
        self.missing = missing


@dataclass(frozen=True)
class Limits:
    """Resource limits of the worker; None leaves that resource unlimited (as inherited)."""

    memory_bytes: int | None
    processes: int | None
    open_files: int | None
    file_size_bytes: int | None
    cpu_seconds: int | None


_LIMIT_FIELDS = ("memory_bytes", "processes", "open_files", "file_size_bytes", "cpu_seconds")
_CONFINEMENT_FIELDS = ("read_only", "read_write", "limits", "required", "insecure_unconfined")


@dataclass(frozen=True)
class Confinement:
    """What a job's worker may do; planned by the agent, applied by the worker to itself."""

    read_only: tuple[str, ...]
    read_write: tuple[str, ...]
    limits: Limits
    #: protections that must apply, from :data:`PROTECTIONS`
    required: tuple[str, ...]
    #: from the policy: apply what can be applied, never refuse
    insecure_unconfined: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        data["read_only"], data["read_write"] = list(self.read_only), list(self.read_write)
        data["required"] = list(self.required)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Confinement:
        """Parse strictly: exactly the known keys, the right types, absolute paths, known protections."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"confinement is not JSON: {exc}") from None
        _keys(data, _CONFINEMENT_FIELDS, "confinement")
        lim = data["limits"]
        _keys(lim, _LIMIT_FIELDS, "confinement.limits")
        for name in _LIMIT_FIELDS:
            v = lim[name]
            if v is not None and (type(v) is not int or v < 1):
                raise ValueError(f"confinement.limits.{name} must be a positive integer or null")
        if type(data["insecure_unconfined"]) is not bool:
            raise ValueError("confinement.insecure_unconfined must be a boolean")
        required = _strings(data["required"], "confinement.required")
        unknown = [r for r in required if r not in PROTECTIONS]
        if unknown:
            raise ValueError(f"confinement.required names unknown protections: {', '.join(unknown)}")
        return cls(
            read_only=_paths(data["read_only"], "confinement.read_only"),
            read_write=_paths(data["read_write"], "confinement.read_write"),
            limits=Limits(**{k: lim[k] for k in _LIMIT_FIELDS}),
            required=required,
            insecure_unconfined=data["insecure_unconfined"],
        )


def _keys(data: Any, expected: tuple[str, ...], what: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be an object")
    if set(data) != set(expected):
        extra, lacking = sorted(set(data) - set(expected)), sorted(set(expected) - set(data))
        raise ValueError(f"{what}: unknown keys {extra}, missing keys {lacking}")


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(value)


def _paths(value: Any, what: str) -> tuple[str, ...]:
    paths = _strings(value, what)
    for p in paths:
        if not p.startswith("/") or "\0" in p or os.path.normpath(p) != p or p == "/":
            raise ValueError(f"{what}: {p!r} is not a normalised absolute path below /")
    return paths


# --- planning ----------------------------------------------------------------------------------------


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def python_paths() -> list[str]:
    """The Python installation this interpreter runs from, and nothing else that happens to be on sys.path.

    The prefixes (the venv and the base installation), every site-packages or dist-packages folder on
    sys.path (the user's, the system's), the interpreter itself, and the folders of the ``secagg`` and
    ``attestation`` packages. Not a repository root on sys.path (an editable install, the current
    folder): that may hold a site's state (``demo-out``).
    """
    prefixes = {
        Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    }
    out = sorted(prefixes)
    for entry in sys.path:
        if not entry:
            continue
        p = Path(entry).resolve()
        if not p.exists() or _under(p, out):
            continue
        if p.name in ("site-packages", "dist-packages") or (p.is_file() and p.suffix == ".zip"):
            out.append(p)
    exe = Path(sys.executable).resolve()
    if not _under(exe, out):
        out.append(exe)
    import importlib.util

    for pkg in ("secagg", "attestation"):
        spec = importlib.util.find_spec(pkg)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            p = Path(loc).resolve()
            if not _under(p, out):
                out.append(p)
    return [str(p) for p in out]


def _dedupe(paths: list[Path]) -> tuple[str, ...]:
    """Resolved, existing, without paths already beneath another one in the list."""
    resolved = []
    for p in paths:
        try:
            r = p.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if r != Path("/") and r not in resolved:
            resolved.append(r)
    keep = [p for p in resolved if not any(q != p and q in p.parents for q in resolved)]
    return tuple(str(p) for p in keep)


def _gpu_devices() -> list[Path]:
    dev = Path("/dev")
    return sorted({p for g in GPU_DEVICE_GLOBS for p in dev.glob(g)})


def plan(
    *, job_root: Path, data_dir: Path, io_dir: Path, scratch_dir: Path, settings: SandboxSettings
) -> Confinement:
    """The confinement of one job's worker, from the site policy's ``sandbox`` settings.

    Read-only: the job package, the site's data folder, the Python installation
    (:func:`python_paths`), and the system files in :data:`SYSTEM_READ_ONLY`. Read-write: the job's
    I/O folder, its private scratch folder (the worker's TMPDIR and HOME, see :func:`scratch_env`),
    /dev/null, and with ``allow_gpu`` the NVIDIA device files. Nothing else: not the kit, the state
    folder, the ledger, the audit log or another job's folder.
    """
    for name, p in (
        ("job_root", job_root),
        ("data_dir", data_dir),
        ("io_dir", io_dir),
        ("scratch_dir", scratch_dir),
    ):
        if not Path(p).is_dir():
            raise ValueError(f"sandbox plan: {name} {p} is not a folder")
        if Path(p).resolve() == Path("/"):
            raise ValueError(f"sandbox plan: {name} may not be /")
    ro = [Path(job_root), Path(data_dir), *map(Path, python_paths())]
    ro += [Path(p) for p in SYSTEM_READ_ONLY if p != "/proc/self"]
    rw = [Path(io_dir), Path(scratch_dir), *map(Path, SYSTEM_READ_WRITE)]
    if settings.allow_gpu:
        ro += [Path(p) for p in GPU_READ_ONLY]
        rw += _gpu_devices()
    required = list(DEFAULT_REQUIRED)
    if settings.require_netns:
        required.append("netns")
    return Confinement(
        read_only=(*_dedupe(ro), "/proc/self"),
        read_write=_dedupe(rw),
        limits=Limits(
            memory_bytes=settings.memory_bytes,
            processes=settings.processes,
            open_files=settings.open_files,
            file_size_bytes=settings.file_size_bytes,
            cpu_seconds=settings.cpu_seconds,
        ),
        required=tuple(p for p in PROTECTIONS if p in required),
        insecure_unconfined=settings.insecure_unconfined,
    )


def scratch_env(scratch_dir: Path) -> dict[str, str]:
    """Environment variables that point the worker's temporary and cache files into its scratch folder.

    USER and LOGNAME are set too: the sandbox does not let the worker read /etc/passwd, where
    ``getpass.getuser()`` (torch's compile caches) would otherwise look the name up.
    """
    s = str(scratch_dir)
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {
        "TMPDIR": s,
        "TEMP": s,
        "TMP": s,
        "HOME": s,
        "XDG_CACHE_HOME": f"{s}/.cache",
        "MPLCONFIGDIR": f"{s}/.matplotlib",
        "USER": user,
        "LOGNAME": user,
    }


# --- availability ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Availability:
    """What this kernel and host can give a worker (a probe: nothing of this process changes)."""

    landlock_abi: int
    seccomp: bool
    netns: bool
    #: how the network namespace is made: CLONE_NEWNET, CLONE_NEWUSER|CLONE_NEWNET, or why not
    netns_detail: str
    #: the process-limit mechanism confine would use (see :mod:`.limits`), None when there is none
    process_limit: str | None
    no_new_privs: bool

    def missing(self) -> dict[str, str]:
        """Each protection this host cannot give, with the reason."""
        out: dict[str, str] = {}
        abi = self.landlock_abi
        if abi < 1:
            out["landlock-fs"] = "the kernel has no Landlock (or it is not enabled in lsm=)"
        if abi < 4:
            out["landlock-net"] = f"Landlock ABI {abi} < 4 has no TCP bind/connect control (Linux 6.7)"
        if abi < 6:
            out["landlock-scope"] = f"Landlock ABI {abi} < 6 cannot scope signals and abstract sockets (6.12)"
        if not self.seccomp:
            out["seccomp"] = "no seccomp filter support (kernel or libseccomp.so.2 missing)"
        if not self.no_new_privs:
            out["no-new-privs"] = "prctl(PR_SET_NO_NEW_PRIVS) is not supported"
        if not self.netns:
            out["netns"] = f"no new network namespace: {self.netns_detail}"
        if self.process_limit is None:
            out["limits"] = (
                "no process limit holds here: running as root (RLIMIT_NPROC never applies to uid 0) "
                "without a writable pids cgroup"
            )
        return out


def available() -> Availability:
    """Probe this host: Landlock ABI, seccomp, network namespaces (in a short-lived child), process limit."""
    abi = landlock.abi_version()
    ok_netns, needs_userns, detail = netns.probe()
    mech = limits.cgroup_mechanism()
    if mech is None and os.getuid() != 0:
        mech = "rlimit-nproc-userns" if ok_netns and needs_userns else "rlimit-nproc-shared"
    try:
        privs.no_new_privs()
        nnp = True
    except OSError:
        nnp = False
    return Availability(
        landlock_abi=abi,
        seccomp=seccomp.available(),
        netns=ok_netns,
        netns_detail=detail,
        process_limit=mech,
        no_new_privs=nnp,
    )


def _required_by(settings: SandboxSettings) -> tuple[str, ...]:
    req = [*DEFAULT_REQUIRED, *(["netns"] if settings.require_netns else [])]
    return tuple(p for p in PROTECTIONS if p in req)


def _refusal(missing: dict[str, str]) -> SandboxUnavailable:
    names = tuple(missing)
    text = "; ".join(f"{k}: {v}" for k, v in missing.items())
    return SandboxUnavailable(
        f"the job's worker cannot be confined as the policy requires, missing {', '.join(names)} ({text}); "
        "run it on a host that has them, or set sandbox.insecure_unconfined in the site policy",
        missing=names,
    )


def require_available(settings: SandboxSettings) -> None:
    """At admission: raise :class:`SandboxUnavailable` naming every required protection this host lacks.

    With ``settings.insecure_unconfined`` it never raises (the worker then runs with what applies).
    """
    if settings.insecure_unconfined:
        return
    gaps = available().missing()
    if settings.processes is None:
        gaps.pop("limits", None)
    wanted = {k: v for k, v in gaps.items() if k in _required_by(settings)}
    if wanted:
        raise _refusal(wanted)


# --- confining ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """What :func:`confine` put in force in this process."""

    #: protections in force, from :data:`PROTECTIONS`
    applied: tuple[str, ...]
    #: protections that failed or are not supported here, with the reason
    missing: dict[str, str] = field(default_factory=dict)
    landlock_abi: int = 0
    #: process-limit mechanism in force (see :mod:`.limits`), None when none holds
    process_limit: str | None = None
    cgroup: str | None = None
    #: True when a fresh network namespace was entered (with a user namespace when ``userns``)
    netns: bool = False
    userns: bool = False
    rlimits: dict[str, int] = field(default_factory=dict)
    #: planned paths that did not exist when confining (left out of the rules)
    skipped_paths: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"sandbox applied: {', '.join(self.applied) or 'nothing'}"]
        out += [f"sandbox MISSING {k}: {v}" for k, v in self.missing.items()]
        if self.process_limit:
            out.append(f"process limit enforced by {self.process_limit}")
        return out


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def confine(c: Confinement) -> Applied:
    """Invariant 8: the job's code runs confined.

    The worker calls this on itself, single-threaded, before it imports any job code: afterwards it
    can read only ``c.read_only``, write only ``c.read_write`` (so not the agent's kit, keys, state,
    HE secret, ledger, audit log, or another job's folder), create no socket and bind or connect no TCP
    port, signal or reach no process outside the sandbox, gain no privilege, and it runs under
    ``c.limits``. Irreversible, and inherited by every process the worker starts.

    Order matters: the pids cgroup and the network namespace need privileges (or a user namespace)
    and /proc and /sys writes that the later layers forbid; then no_new_privs, capabilities, Landlock,
    rlimits, and the seccomp filter last (it denies ``unshare``). Raises :class:`SandboxUnavailable`
    when a protection in ``c.required`` did not apply, unless ``c.insecure_unconfined``; either way
    the caller must not run job code after an exception.
    """
    applied: list[str] = []
    missing: dict[str, str] = {}
    n = _threads()
    if n != 1 and not c.insecure_unconfined:
        why = f"confine() must run before any thread starts; this process has {n} threads"
        raise _refusal({p: why for p in c.required})
    lim = c.limits
    process_limit = cgroup = None
    cgroup_note = ""
    # 1. process limit by cgroup (writes to /sys/fs/cgroup: before Landlock and the capability drop)
    if lim.processes is not None:
        try:
            joined = limits.join_pids_cgroup(lim.processes)
        except OSError as exc:
            joined, cgroup_note = None, f"pids cgroup: {exc}; "
        if joined:
            process_limit, cgroup = joined
    # 2. network namespace (needs CAP_SYS_ADMIN or a fresh user namespace: before seccomp and caps)
    userns = in_netns = False
    try:
        userns = netns.enter()
        in_netns = True
        applied.append("netns")
    except OSError as exc:
        missing["netns"] = str(exc)
    # 3. RLIMIT_NPROC where it holds (counted per user namespace since Linux 5.14)
    if lim.processes is not None:
        try:
            mech = limits.apply_nproc(lim.processes, own_user_namespace=userns)
            process_limit = process_limit or mech
        except (OSError, ValueError) as exc:
            cgroup_note += f"RLIMIT_NPROC: {exc}; "
        if process_limit is None:
            missing["limits"] = cgroup_note + "no process limit holds (uid 0 without a writable pids cgroup)"
    # 4. no_new_privs, 5. capabilities
    try:
        privs.set_no_new_privs()
        applied.append("no-new-privs")
    except OSError as exc:
        missing["no-new-privs"] = str(exc)
    try:
        privs.drop_capabilities()
        applied.append("capabilities")
    except OSError as exc:
        missing["capabilities"] = str(exc)
    # 6. Landlock: file system, TCP, scopes
    abi = 0
    skipped: tuple[str, ...] = ()
    try:
        r = landlock.restrict_self(c.read_only, c.read_write, net=True, scope=True)
        abi, skipped = r.abi, r.skipped
        applied.append("landlock-fs")
        if r.net:
            applied.append("landlock-net")
        else:
            missing["landlock-net"] = f"Landlock ABI {r.abi} < 4"
        if set(r.scoped) == {"abstract-unix-socket", "signal"}:
            applied.append("landlock-scope")
        else:
            missing["landlock-scope"] = f"Landlock ABI {r.abi} < 6"
    except OSError as exc:
        for p in ("landlock-fs", "landlock-net", "landlock-scope"):
            missing[p] = str(exc)
    # 7. rlimits (after Landlock, whose rule fds count against RLIMIT_NOFILE)
    rl: dict[str, int] = {}
    try:
        rl = limits.apply_rlimits(
            limits.ResourceLimits(
                lim.memory_bytes, lim.processes, lim.open_files, lim.file_size_bytes, lim.cpu_seconds
            )
        )
        if "limits" not in missing:
            applied.append("limits")
    except (OSError, ValueError) as exc:
        missing["limits"] = f"setrlimit: {exc}"
    # 8. seccomp, last
    try:
        seccomp.install()
        applied.append("seccomp")
    except OSError as exc:
        missing["seccomp"] = str(exc)
    done = Applied(
        applied=tuple(p for p in PROTECTIONS if p in applied),
        missing={k: v for k, v in missing.items() if k not in applied},
        landlock_abi=abi,
        process_limit=process_limit,
        cgroup=cgroup,
        netns=in_netns,
        userns=userns,
        rlimits=rl,
        skipped_paths=skipped,
    )
    lacking = {k: v for k, v in done.missing.items() if k in c.required}
    if lacking and not c.insecure_unconfined:
        raise _refusal(lacking)
    return done


# --- describing --------------------------------------------------------------------------------------


def _size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} bytes"


def _limit_line(lim: Limits, mechanism: str | None) -> str:
    procs = "unlimited" if lim.processes is None else f"{lim.processes} (threads count)"
    if lim.processes is not None:
        procs += f", enforced by {mechanism}" if mechanism else ", NOT ENFORCEABLE on this host"
    cpu = "unlimited" if lim.cpu_seconds is None else f"{lim.cpu_seconds} s"
    files = "unlimited" if lim.open_files is None else str(lim.open_files)
    return (
        f"limits: memory (address space) {_size(lim.memory_bytes)}; processes {procs}; open files {files}; "
        f"file size {_size(lim.file_size_bytes)}; CPU time {cpu}; no core dumps"
    )


def describe(c: Confinement | SandboxSettings) -> list[str]:
    """Human lines: what the worker may read and write, network: none, limits; loud when insecure."""
    if not isinstance(c, Confinement):
        from secagg.policy.explain import describe_sandbox

        return describe_sandbox(c)
    mech = limits.cgroup_mechanism()
    if mech is None and os.getuid() != 0:
        mech = "RLIMIT_NPROC"
    lines = ["Job worker sandbox (Landlock, seccomp, no_new_privs, rlimits):", "  may read (read-only):"]
    lines += [f"    {p}" for p in c.read_only]
    lines.append("  may read and write:")
    lines += [f"    {p}" for p in c.read_write]
    lines += [
        "  everything else is denied: the agent's kit and keys, its state, HE secret, ledger, audit log "
        "and other jobs",
        "  network: none (no socket of any family can be created; TCP bind and connect denied; a fresh "
        "network namespace " + ("required)" if "netns" in c.required else "where the kernel allows)"),
        "  signals and abstract UNIX sockets: only within the sandbox; no privileges (no_new_privs, "
        "no capabilities, no ptrace, mount, modules, bpf, namespaces; no chmod, chown or xattrs)",
        "  " + _limit_line(c.limits, mech),
        f"  required protections: {', '.join(c.required) or 'none'}",
    ]
    if c.insecure_unconfined:
        lines.append(
            "  WARNING: insecure_unconfined: the job runs even where these protections cannot be applied"
        )
    return lines

"""The worker's seccomp filter: no new sockets, no namespaces, no kernel-facing administration.

Built with ``pyseccomp`` (ctypes over the system's libseccomp.so.2). The filter allows every system
call by default and denies a short list, so ordinary Python, numpy and torch code is unaffected:

* ``socket(2)`` of every address family fails with EACCES: no TCP, UDP, raw, netlink, or UNIX socket
  can be created, so nothing can connect to the agent's or anyone's socket. ``socketpair(2)`` stays
  allowed (torch and multiprocessing use it; it can only connect the process to itself), and sockets
  inherited from the agent keep working.
* io_uring is denied (it can create and connect sockets without calling ``socket(2)``).
* namespaces: ``unshare``, ``setns``, and ``clone`` with any ``CLONE_NEW*`` flag fail with EPERM;
  ``clone3`` fails with ENOSYS (its flags live in memory a filter cannot read), so the C library falls
  back to ``clone``, whose flags the filter checks.
* file metadata: chmod, chown and setting or removing extended attributes fail with EPERM, in every
  form (Landlock does not govern them, and the worker has the agent's uid). Timestamps (utime) are
  not filtered.
* process inspection and kernel administration: ptrace, process_vm_readv/writev, mount and the new
  mount API, pivot_root, chroot, module loading, kexec, bpf, perf_event_open, the keyrings, userfaultfd,
  personality changes, reboot, swapon/off, clock setting, acct, quotactl, open_by_handle_at and the
  like fail with EPERM.

A non-native architecture (32-bit ``int 0x80`` calls on x86_64, x32) is killed by libseccomp's
bad-arch default, so the denials cannot be sidestepped through another system call table.
"""

from __future__ import annotations

import errno
import importlib
from dataclasses import dataclass
from typing import Any

_pyseccomp: Any
try:
    _pyseccomp = importlib.import_module("pyseccomp")
except (ImportError, OSError, RuntimeError):  # no libseccomp.so.2 on this host
    _pyseccomp = None

_CLONE_NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

#: system calls denied with EPERM (absent ones on this architecture are skipped)
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "iopl",
    "ioperm",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "nfsservctl",
    "vhangup",
    "fanotify_init",
    "kcmp",
    "pidfd_getfd",
    # file metadata: Landlock (ABI 7) does not govern mode, owner or extended attributes, and the
    # worker runs as the agent's uid, so it could chmod the kit's key.pem world-readable, or a data
    # file it opened read-only; neither a path nor an fd form is allowed
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "setxattrat",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "removexattrat",
)

#: personality(2)'s query argument: reading the persona stays allowed, changing it does not
_PERSONALITY_QUERY = 0xFFFFFFFF


def available() -> bool:
    """Whether a seccomp filter can be loaded here: libseccomp present and the kernel's filter mode on."""
    if _pyseccomp is None:
        return False
    try:
        return int(_pyseccomp.get_api()) >= 1
    except (NotImplementedError, OSError):
        return False


@dataclass(frozen=True)
class Filtered:
    """What :func:`install` put in force."""

    denied: tuple[str, ...]
    #: names in :data:`DENIED` that this architecture does not have
    absent: tuple[str, ...]


def _nr(name: str) -> int | None:
    nr = int(_pyseccomp.resolve_syscall(_pyseccomp.Arch.NATIVE, name))
    return nr if nr >= 0 else None


def build() -> Any:
    """The filter as a ``pyseccomp.SyscallFilter``, not loaded (tests export it as text)."""
    if _pyseccomp is None:
        raise OSError(errno.ENOSYS, "libseccomp is not installed")
    sc = _pyseccomp
    f = sc.SyscallFilter(sc.ALLOW)
    f.add_rule(sc.ERRNO(errno.EACCES), "socket")
    for name in DENIED:
        if _nr(name) is not None:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in _CLONE_NEW_FLAGS.values():
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    if _nr("clone3") is not None:
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(sc.ERRNO(errno.EPERM), "personality", sc.Arg(0, sc.NE, _PERSONALITY_QUERY))
    return f


def install() -> Filtered:
    """Load the filter into this process (after ``no_new_privs``); irreversible."""
    f = build()
    f.load()
    absent = tuple(n for n in DENIED if _nr(n) is None)
    denied = ("socket", *(n for n in DENIED if n not in absent), "clone(CLONE_NEW*)", "clone3", "personality")
    return Filtered(denied=denied, absent=absent)

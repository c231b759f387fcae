"""A thin ctypes wrapper over the three Landlock system calls (Linux 5.13+), with per-ABI degradation.

Landlock is the kernel's unprivileged access-control layer: a process builds a *ruleset* (the access
rights it wants restricted, the "handled" rights), adds rules that allow some of those rights beneath
chosen directories or on chosen files, and then restricts itself: from then on every handled right
that no rule allows is denied (EACCES), for it and for every process it starts, irreversibly.

What each ABI version adds, and what this module handles when the kernel has it:

====  =====================================================================================
ABI   access rights / features
====  =====================================================================================
1     file system: execute, write, read, read dir, remove dir/file, make char/dir/reg/sock/fifo/
      block/sym (5.13)
2     ``REFER``: linking or renaming a file into another directory (5.19); without it such
      reparenting is always denied
3     ``TRUNCATE``: truncate(2), ftruncate(2), O_TRUNC (6.2)
4     network: ``BIND_TCP``, ``CONNECT_TCP`` (6.7); UDP and other protocols are not covered
5     ``IOCTL_DEV``: ioctl(2) on character and block devices (6.10)
6     scopes: ``ABSTRACT_UNIX_SOCKET`` (no connecting to abstract UNIX sockets created outside
      the domain) and ``SIGNAL`` (no signals to processes outside the domain) (6.12)
7     audit logging flags for landlock_restrict_self (6.15); no new access rights
====  =====================================================================================

What Landlock does not restrict (other layers of the sandbox cover these): path traversal and
stat(2) of paths (a confined process can learn that a file exists, not read it); files and sockets
opened before the restriction (inherited descriptors keep their rights); connect(2) to a *pathname*
UNIX socket; UDP, raw and other non-TCP sockets; and, before ABI 3/5, truncate and device ioctls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1

# file system access rights
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_ABI1 = (1 << 13) - 1
#: every file system right each ABI version knows
FS_BY_ABI = {1: _FS_ABI1, 2: _FS_ABI1 | FS_REFER, 3: _FS_ABI1 | FS_REFER | FS_TRUNCATE}
FS_BY_ABI[4] = FS_BY_ABI[3]
FS_BY_ABI[5] = FS_BY_ABI[4] | FS_IOCTL_DEV
#: rights that make sense on a file (the kernel refuses directory-only rights in a rule for a file)
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

#: what a read-only path grants: read files, list directories, execute (libraries, the interpreter)
READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
#: what a read-write path grants: everything except executing what was written there and making
#: device nodes or socket files
READ_WRITE = (
    FS_READ_FILE
    | FS_READ_DIR
    | FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SYM
    | FS_MAKE_FIFO
    | FS_REFER
    | FS_TRUNCATE
    | FS_IOCTL_DEV
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in <linux/landlock.h>
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class LandlockError(OSError):
    """A Landlock system call failed."""


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"{what}: {os.strerror(err)}")
    return ret


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is absent or disabled (side-effect free)."""
    ret = _libc.syscall(
        ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION)
    )
    if ret < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise LandlockError(err, f"landlock_create_ruleset(VERSION): {os.strerror(err)}")
    return int(ret)


def _handled(abi: int) -> tuple[int, int, int]:
    fs = FS_BY_ABI[min(abi, 5)]
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return fs, net, scoped


@dataclass(frozen=True)
class Restricted:
    """What :func:`restrict_self` put in force."""

    abi: int
    handled_fs: int
    #: TCP bind and connect denied on every port (ABI 4+)
    net: bool
    #: scopes in force: "abstract-unix-socket", "signal" (ABI 6+)
    scoped: tuple[str, ...]
    #: rule paths that did not exist (or this uid cannot reach) and were left out
    skipped: tuple[str, ...]


def restrict_self(
    read_only: Iterable[str], read_write: Iterable[str], *, net: bool = True, scope: bool = True
) -> Restricted:
    """Restrict this thread (and every process and thread it creates later) to the given paths.

    ``read_only`` paths get :data:`READ_ONLY`, ``read_write`` paths :data:`READ_WRITE`, each masked
    to the rights the kernel's ABI knows and, for a path that is not a directory, to the rights a file
    can carry. Every other handled right is denied everywhere. With ``net``, TCP bind and connect are
    handled with no rule allowing any port; with ``scope``, abstract UNIX sockets and signals are
    scoped to the domain. The caller must have set ``no_new_privs`` (or hold CAP_SYS_ADMIN) and must
    be single-threaded, since other existing threads stay unrestricted. Irreversible.
    """
    abi = abi_version()
    if abi < 1:
        raise LandlockError(errno.EOPNOTSUPP, "Landlock is not available in this kernel")
    fs, net_rights, scoped = _handled(abi)
    attr = _RulesetAttr(fs, net_rights if net else 0, scoped if scope else 0)
    fd = _check(
        _libc.syscall(
            ctypes.c_long(SYS_CREATE_RULESET),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
            ctypes.c_uint32(0),
        ),
        "landlock_create_ruleset",
    )
    skipped: list[str] = []
    try:
        for paths, rights in ((read_only, READ_ONLY), (read_write, READ_WRITE)):
            for path in paths:
                if not _add_path(fd, path, rights & fs):
                    skipped.append(path)
        _check(
            _libc.syscall(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0)),
            "landlock_restrict_self",
        )
    finally:
        os.close(fd)
    names = (("abstract-unix-socket", SCOPE_ABSTRACT_UNIX_SOCKET), ("signal", SCOPE_SIGNAL))
    return Restricted(
        abi=abi,
        handled_fs=fs,
        net=bool(attr.handled_access_net),
        scoped=tuple(n for n, bit in names if attr.scoped & bit),
        skipped=tuple(skipped),
    )


def _add_path(ruleset_fd: int, path: str, rights: int) -> bool:
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        # absent, or out of this uid's reach anyway: leaving a rule out only ever denies more
        return False
    try:
        if not stat.S_ISDIR(os.fstat(pfd).st_mode):
            rights &= FS_FILE_RIGHTS
        rule = _PathBeneathAttr(rights, pfd)
        _check(
            _libc.syscall(
                ctypes.c_long(SYS_ADD_RULE),
                ctypes.c_int(ruleset_fd),
                ctypes.c_int(RULE_PATH_BENEATH),
                ctypes.byref(rule),
                ctypes.c_uint32(0),
            ),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(pfd)
    return True

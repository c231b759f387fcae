"""A fresh, empty network namespace for the worker (defense in depth under seccomp and Landlock).

In a new network namespace the only interface is a loopback that is down: even a socket that slipped
past the other layers (one inherited, or made by a mechanism the filter does not know) reaches no
address of the host. As root ``unshare(CLONE_NEWNET)`` suffices; an unprivileged process first needs a
user namespace of its own (``CLONE_NEWUSER | CLONE_NEWNET``), in which its uid and gid are mapped to
themselves, so file ownership looks the same inside. Both need a single-threaded caller.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_GET_DUMPABLE = 3

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter() -> bool:
    """Move this process into a new network namespace; True when a user namespace came with it."""
    if os.geteuid() == 0:
        try:
            _unshare(CLONE_NEWNET)
            return False
        except PermissionError:  # root without CAP_SYS_ADMIN (a container): try as unprivileged
            pass
    uid, gid = os.geteuid(), os.getegid()
    # a process that changed its uids is not dumpable: its /proc/self files are root's, so the uid map
    # could not be written after the unshare (and an unmapped uid cannot create files); refuse before
    if (
        _libc.prctl(ctypes.c_int(PR_GET_DUMPABLE), 0, 0, 0, 0) != 1
        or os.stat("/proc/self/uid_map").st_uid != uid
    ):
        raise OSError(errno.EPERM, "not dumpable (uids changed): cannot map uids into a new user namespace")
    _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    return True


_PROBE = (
    "import os,sys\n"
    "sys.path[:0]=[sys.argv[1]]\n"
    "import netns\n"
    "try:\n"
    "    u=netns.enter()\n"
    "except OSError as e:\n"
    "    print('no', e); sys.exit(0)\n"
    "print('userns' if u else 'net')\n"
)


def probe(timeout: float = 10.0) -> tuple[bool, bool, str]:
    """Whether :func:`enter` works here (tried in a short-lived child): (works, needs userns, detail)."""
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE, os.path.dirname(os.path.abspath(__file__))],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, False, f"probe failed: {exc}"
    if out == "net":
        return True, False, "CLONE_NEWNET"
    if out == "userns":
        return True, True, "CLONE_NEWUSER|CLONE_NEWNET"
    return False, False, out.removeprefix("no ").strip() or "probe gave no answer"

"""no_new_privs and dropping every capability.

``PR_SET_NO_NEW_PRIVS`` makes execve(2) unable to grant privileges (setuid bits and file capabilities
are ignored); Landlock and seccomp need it to be set by an unprivileged process. Root (or a process
with capabilities in its own user namespace) additionally drops all of them: the ambient set is
cleared, every capability is dropped from the bounding set (so no later execve can regain one), the
securebits that would restore them for uid 0 are set and locked, and capset(2) empties the effective,
permitted and inheritable sets. Root in the sandbox then cannot mount, ptrace, load modules, override
file permissions, change its uid, or raise its own limits.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

PR_SET_SECUREBITS = 28
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED, SECBIT_NO_CAP_AMBIENT_RAISE, each locked
_SECUREBITS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7)

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _prctl(option: int, arg2: int = 0) -> int:
    ret = int(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
    )
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return ret


def set_no_new_privs() -> None:
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise OSError("no_new_privs did not stick")


def no_new_privs() -> bool:
    return _prctl(PR_GET_NO_NEW_PRIVS) == 1


def capability_sets() -> dict[str, int]:
    """This process's capability sets from /proc/self/status: CapInh, CapPrm, CapEff, CapBnd, CapAmb."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Cap"):
            name, value = line.split(":", 1)
            out[name] = int(value.strip(), 16)
    return out


def drop_capabilities() -> dict[str, int]:
    """Drop every capability this process holds (see the module text); returns the sets afterwards.

    Raises OSError when a capability is left in the effective, permitted, inheritable or ambient set,
    or, for a process that held CAP_SETPCAP, in the bounding set.
    """
    before = capability_sets()
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    could_drop_bounding = bool(before.get("CapEff", 0) & (1 << 8))  # CAP_SETPCAP
    if could_drop_bounding:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            _prctl(PR_CAPBSET_DROP, cap)
        _prctl(PR_SET_SECUREBITS, _SECUREBITS)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    after = capability_sets()
    left = [k for k in ("CapInh", "CapPrm", "CapEff", "CapAmb") if after.get(k)]
    if could_drop_bounding and after.get("CapBnd"):
        left.append("CapBnd")
    if left:
        raise OSError(f"capabilities left after dropping: {', '.join(left)}")
    return after

"""A site behind its own network namespace and veth pair, so the harness can cut its link (``ip link
set ... down``) without touching loopback, which other processes on the machine share.

The node behind the link may be a site or the aggregator (then every site loses it at once).
``tc netem`` (delay, loss) needs the kernel's sch_netem module, often missing (``Specified qdisc kind
is unknown``; :func:`netem_available` says which): the slow, lossy link is built without it, from
nftables and a delay relay (:mod:`secagg.chaos.slow`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

#: where each slot's lock lives: a slot (its namespace, interfaces and 10.231.N.0/24) is one run's
#: while that run holds the lock; the kernel drops the lock when the run dies, however it dies
SLOT_LOCKS = Path("/run/secagg-chaos")
#: the slots: N in 10.231.N.0/24
SLOTS = range(20, 220)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)  # noqa: S603, S607


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "no ip command"
    if os.geteuid() != 0:
        return "not root"
    return None


def netem_available() -> bool:
    if shutil.which("tc") is None:
        return False
    with Link.make("chnetem") as link:
        p = subprocess.run(  # noqa: S603
            ["tc", "qdisc", "add", "dev", link.host_if, "root", "netem", "delay", "1ms"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=30,
        )
        return p.returncode == 0


@dataclass
class Link:
    """Namespace ``ns`` holding ``peer_if`` (``site_ip``), joined to ``host_if`` (``host_ip``) here."""

    ns: str
    host_if: str
    peer_if: str
    host_ip: str
    site_ip: str
    _lock: int = field(default=-1, repr=False, compare=False)

    @classmethod
    def make(cls, tag: str) -> Link:
        """A link in a free slot. Why a lock: two harness runs at once (two sessions, or a helper's
        beside the CI subset) once picked their slot from the pid alone and, finding the other's
        namespace, deleted it as a leftover. Now a namespace is a leftover only when no live run
        holds its slot's lock."""
        SLOT_LOCKS.mkdir(parents=True, exist_ok=True)
        start = os.getpid() % len(SLOTS)
        for i in range(len(SLOTS)):
            n = SLOTS[(start + i) % len(SLOTS)]
            fd = os.open(SLOT_LOCKS / f"slot-{n}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            link = cls(f"{tag}{n}", f"{tag[:6]}{n}a", f"{tag[:6]}{n}b", f"10.231.{n}.1", f"10.231.{n}.2", fd)
            try:
                link._remove()  # a leftover of an earlier killed run: no live run holds its lock
                link._build()
            except BaseException:
                link.close()
                raise
            return link
        raise RuntimeError(f"every one of the {len(SLOTS)} network slots is in use")

    def _build(self) -> None:
        link = self
        _ip("netns", "add", link.ns)
        _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.peer_if)
        _ip("link", "set", link.peer_if, "netns", link.ns)
        _ip("addr", "add", f"{link.host_ip}/24", "dev", link.host_if)
        _ip("link", "set", link.host_if, "up")
        _ip("netns", "exec", link.ns, "ip", "addr", "add", f"{link.site_ip}/24", "dev", link.peer_if)
        _ip("netns", "exec", link.ns, "ip", "link", "set", link.peer_if, "up")
        _ip("netns", "exec", link.ns, "ip", "link", "set", "lo", "up")

    def prefix(self) -> list[str]:
        """What a command is started with to run inside the namespace."""
        # nsenter, not `ip netns exec`: that remounts /sys, and the agent then finds no writable pids
        # cgroup to confine the job in (sandbox_unavailable); only the network must differ
        return ["nsenter", f"--net=/var/run/netns/{self.ns}"]

    def cut(self) -> None:
        _ip("netns", "exec", self.ns, "ip", "link", "set", self.peer_if, "down")

    def mend(self) -> None:
        _ip("netns", "exec", self.ns, "ip", "link", "set", self.peer_if, "up")
        _ip(
            "netns",
            "exec",
            self.ns,
            "ip",
            "route",
            "replace",
            f"{self.host_ip}/32",
            "dev",
            self.peer_if,
            check=False,
        )

    def _remove(self) -> None:
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.ns, check=False)

    def close(self) -> None:
        self._remove()
        if self._lock >= 0:
            os.close(self._lock)  # the slot is free again
            self._lock = -1

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

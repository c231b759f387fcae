"""Two harness runs at once must not take each other's network namespace for a leftover (the slot of
:class:`secagg.chaos.net.Link` is held by a lock the kernel drops when its run dies)."""

from __future__ import annotations

import subprocess

import pytest

from secagg.chaos import net

pytestmark = pytest.mark.skipif(net.available() is not None, reason=f"network namespaces: {net.available()}")


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout  # noqa: S607
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_a_second_link_takes_another_slot_and_leaves_the_first_alone() -> None:
    with net.Link.make("chslot") as a, net.Link.make("chslot") as b:
        assert a.ns != b.ns and a.host_ip != b.host_ip
        assert {a.ns, b.ns} <= _namespaces()
    assert not {a.ns, b.ns} & _namespaces()


def test_a_leftover_whose_run_is_gone_is_reclaimed() -> None:
    a = net.Link.make("chslot")
    ns = a.ns
    a.close()
    # what a killed run leaves: its namespace, no lock held
    subprocess.run(["ip", "netns", "add", ns], check=True)  # noqa: S607
    try:
        with net.Link.make("chslot") as again:
            assert again.ns == ns  # same slot (same pid): the leftover was removed and rebuilt
            assert ns in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # noqa: S607
    assert ns not in _namespaces()

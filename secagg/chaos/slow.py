"""A slow, lossy link (issue #18's ``tc netem delay 200ms loss 2%``) without netem: the namespace
(:class:`~secagg.chaos.net.Link`) of one site, or of the aggregator, gets a delay relay and an
nftables loss.

A site's link. Addresses: the aggregator is provisioned at the link's host address ``A`` and binds
every address (``--host 0.0.0.0``); the host side of the veth also holds a second address ``B``.
Inside the site's namespace ``A`` is put on loopback, so the site's dial to ``A:port`` lands on the relay
(:mod:`secagg.chaos.relay`), which waits ``delay`` seconds each way and forwards to ``B:port`` over
the veth, where ``percent``% of the packets each way are dropped (:mod:`secagg.chaos.loss`). The
other sites, on the host, dial ``A:port`` directly. TLS runs end to end (the site checks the name
``A``); only the delayed, lossy path differs.

The aggregator's link (every site's traffic at once, as when the aggregator's uplink is slow): the
aggregator runs in the namespace bound to its loopback only (``--host 127.0.0.1``); the relay, in the
namespace too, listens on the namespace's address ``N`` (the aggregator's provisioned name) and
forwards to loopback after the delay; the loss is on the namespace's side of the veth. Every site, on
the host, dials ``N:port``: through the lossy veth, then the delay, then the aggregator.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from secagg.chaos import loss, net


def available() -> str | None:
    """None when the slow link can be built here, else why not, in one line."""
    return net.available() or loss.available()


def relay_ip(link: net.Link) -> str:
    """The second host-side address ``B`` the relay forwards to."""
    return link.host_ip.rpartition(".")[0] + ".3"


def relay_ends(link: net.Link, port: int, behind: str) -> tuple[str, str]:
    """Where the relay listens and where it forwards (``IP:PORT`` each), for the node ``behind`` the
    link: a site (the aggregator's address on the namespace's loopback, forwarded over the veth) or
    the aggregator (the namespace's address, forwarded to the aggregator on loopback)."""
    if behind == "aggregator":
        return f"{link.site_ip}:{port}", f"127.0.0.1:{port}"
    if behind == "site":
        return f"{link.host_ip}:{port}", f"{relay_ip(link)}:{port}"
    raise ValueError(f"a slow link is a site's or the aggregator's, not {behind!r}")


@dataclass
class SlowLink:
    link: net.Link
    port: int
    delay: float
    percent: int
    folder: Path
    #: whose link this is: ``"site"`` or ``"aggregator"`` (see the module's docstring)
    behind: str = "site"
    _relay: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _loss: loss.Loss | None = field(default=None, repr=False)

    @property
    def stats(self) -> Path:
        return self.folder / "relay-accepted.txt"

    def start(self, timeout: float = 30.0) -> None:
        """Addresses, loss table, relay; returns once the relay listens."""
        link = self.link
        listen, to = relay_ends(link, self.port, self.behind)
        if self.behind == "site":
            net._ip("addr", "add", f"{relay_ip(link)}/24", "dev", link.host_if)
            net._ip("netns", "exec", link.ns, "ip", "addr", "add", f"{link.host_ip}/32", "dev", "lo")
        self._loss = loss.Loss(tuple(link.prefix()), link.peer_if, self.percent)
        self._loss.install()
        self.folder.mkdir(parents=True, exist_ok=True)
        ready = self.folder / "relay-ready.txt"
        ready.unlink(missing_ok=True)
        with (self.folder / "relay.log").open("wb") as fh:
            self._relay = subprocess.Popen(  # noqa: S603
                [
                    *link.prefix(),
                    sys.executable,
                    "-m",
                    "secagg.chaos.relay",
                    "--listen",
                    listen,
                    "--to",
                    to,
                    "--delay",
                    str(self.delay),
                    "--ready",
                    str(ready),
                    "--stats",
                    str(self.stats),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not ready.is_file():
            if self._relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the delay relay did not start (see {self.folder / 'relay.log'})")
            time.sleep(0.05)

    def accepted(self) -> int:
        text = self.stats.read_text().strip() if self.stats.is_file() else ""
        return int(text) if text.isdigit() else 0

    def counts(self) -> loss.Counts:
        return self._loss.counts() if self._loss is not None else loss.Counts()

    def stop(self) -> None:
        if self._relay is not None and self._relay.poll() is None:
            self._relay.terminate()
            try:
                self._relay.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._relay.kill()
                self._relay.wait()

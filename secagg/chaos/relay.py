"""A TCP delay line: what ``tc netem delay`` does to a link, for a kernel without ``sch_netem``.

Every chunk read on one side is written to the other ``delay`` seconds after it arrived, in order,
so a round trip through the relay takes at least ``2 * delay`` and throughput is not capped (a
delay, not a bandwidth limit). It relays bytes, not TLS: the site's mTLS session runs end to end
through it, so the aggregator's name and certificates are checked as on a direct link. A half close
(EOF) is passed on after the same delay, and a reset or a refused upstream closes both sides.

Run inside a site's network namespace (``python -m secagg.chaos.relay --listen IP:PORT --to
IP:PORT --delay S``): the harness gives the namespace's loopback the aggregator's address, so the
site's dial lands here, and the relay dials the aggregator over the namespace's veth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 16
#: a queued chunk, or None: the reading side saw EOF
_Item = tuple[float, bytes | None]


@dataclass
class Relay:
    """Listen on ``listen`` (host, port; port 0 picks one), forward each connection to ``to``."""

    listen: tuple[str, int]
    to: tuple[str, int]
    delay: float
    #: connections accepted so far (the harness's evidence that the site's traffic went through it)
    accepted: int = 0
    #: where the count is written after each accept (a relay in another process reports through it)
    stats: Path | None = None
    _server: asyncio.Server | None = field(default=None, repr=False)
    _conns: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, *self.listen)

    async def close(self) -> None:
        """Stop listening and drop every open connection (both its sides closed)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)
        if self.stats is not None:
            self.stats.write_text(f"{self.accepted}\n")
        try:
            ur, uw = await asyncio.open_connection(*self.to)
        except OSError:
            cw.close()
            return
        try:
            await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw), return_exceptions=True)
        finally:
            for w in (cw, uw):
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Read ``src`` as fast as it comes; write each chunk ``delay`` after its arrival."""
        queue: asyncio.Queue[_Item] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await src.read(CHUNK):
                    queue.put_nowait((time.monotonic() + self.delay, data))
            finally:  # EOF, or a reset: either way the other side hears of it after the delay
                queue.put_nowait((time.monotonic() + self.delay, None))

        reader = asyncio.ensure_future(read())
        try:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if data is None:
                    if dst.can_write_eof():
                        dst.write_eof()
                    await dst.drain()
                    return
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            dst.close()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await reader


class RelayThread:
    """A :class:`Relay` on its own event loop in a daemon thread (for tests in one process)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.relay.start(), self.loop).result(timeout=30)
        return self.relay

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.relay.close(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT")
    return host, int(port)


async def _main(relay: Relay, ready: Path | None) -> None:
    await relay.start()
    if ready is not None:
        ready.write_text(f"{relay.port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await relay.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m secagg.chaos.relay", description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=_addr, required=True)
    p.add_argument("--to", type=_addr, required=True)
    p.add_argument("--delay", type=float, required=True, help="seconds each way")
    p.add_argument("--ready", type=Path, help="written with the port once listening")
    p.add_argument("--stats", type=Path, help="written with the count of accepted connections")
    a = p.parse_args(argv)
    asyncio.run(_main(Relay(a.listen, a.to, a.delay, stats=a.stats), a.ready))


if __name__ == "__main__":
    main()

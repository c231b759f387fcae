"""Fuzz: the agent/worker channel frames (secagg/agent/channel.py), bytes written by a hostile worker.

Seeds: frames the channel itself sends. Each input is written to one end of a socketpair, which is
then closed, and the other end reads frames until it refuses or sees the end of the stream.
"""

from __future__ import annotations

import random
import socket
import struct

from hypothesis import example, given

from secagg.agent.channel import Channel, ChannelClosed, ChannelError
from tests.fuzz._harness import Target, inputs, nested


def _seeds() -> list[bytes]:
    a, b = socket.socketpair()
    try:
        ch = Channel(a, max_payload=64)
        ch.send({"type": "ready"})
        ch.send({"type": "done", "metrics": {"loss": 0.5}}, b"payload")
        ch.send({"type": "error", "code": "no_update", "message": "x" * 200})
        b.settimeout(1)
        out = b""
        while len(out) < 300:
            out += b.recv(65536)
        return [out]
    finally:
        a.close()
        b.close()


def _recv_all(data: bytes) -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(data)  # inputs are capped far below the socket buffer
        b.close()
        ch = Channel(a, max_payload=64, max_header=4096)
        for _ in range(1000):
            try:
                ch.recv(timeout=1.0)
            except ChannelClosed:
                return
    finally:
        a.close()


def _deep_header(rng: random.Random) -> bytes:
    head = nested(b"[", b"]", rng.choice((1000, 2000))) if rng.random() < 0.5 else nested(b'{"a":', b"}", 800)
    return struct.pack(">I", len(head)) + head + struct.pack(">Q", 0)


TARGETS = [Target("channel_frames", _recv_all, _seeds, (ChannelError,), extra=(_deep_header,))]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["channel_frames"]))
@example(struct.pack(">I", 4000) + b"[" * 2000 + b"]" * 2000 + struct.pack(">Q", 0))  # found: RecursionError
@example(struct.pack(">I", 2) + b"{}" + struct.pack(">Q", 2**64 - 1))
@example(struct.pack(">I", 2**32 - 1))
def test_channel_frames(data: bytes) -> None:
    _T["channel_frames"].check(data[:60_000])

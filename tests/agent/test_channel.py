"""Frames between the agent and its training worker (secagg.agent.channel): sizes, ends, junk."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from secagg.agent.channel import (
    MAX_HEADER,
    Channel,
    ChannelClosed,
    ChannelTimeout,
    FrameTooLarge,
    MalformedFrame,
    socketpair,
)


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    chan, raw = socketpair(max_payload=1024)
    yield chan, raw
    chan.close()
    raw.close()


def _frame(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(header)) + header + struct.pack(">Q", len(payload)) + payload


def test_round_trip_both_ways_with_and_without_payload() -> None:
    a, raw = socketpair(max_payload=16)
    b = Channel(raw, max_payload=16)
    a.send({"type": "task", "round": 3, "nested": {"x": [1, 2.5, None]}})
    a.send({"type": "blob"}, b"\x00\x01" * 8)
    first, second = b.recv(timeout=1), b.recv(timeout=1)
    assert first.header == {"type": "task", "round": 3, "nested": {"x": [1, 2.5, None]}}
    assert first.type == "task" and first.payload == b""
    assert second.payload == b"\x00\x01" * 8
    b.send({"type": "done", "text": "ünïcode"})
    assert a.recv(timeout=1).header["text"] == "ünïcode"
    a.close()
    with pytest.raises(ChannelClosed):
        b.recv(timeout=1)  # a clean end at a frame boundary
    b.close()


def test_oversize_header_is_refused_from_its_length_without_allocating(
    pair: tuple[Channel, socket.socket],
) -> None:
    chan, raw = pair
    raw.sendall(struct.pack(">I", 0xFFFFFFFF))  # claims a 4 GiB header, sends nothing more
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge, match="header of 4294967295 bytes"):
            chan.recv(timeout=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    with pytest.raises(ChannelClosed, match="out of use"):
        chan.recv(timeout=1)  # the stream is out of step: no second try


def test_oversize_payload_is_refused_before_it_is_read(pair: tuple[Channel, socket.socket]) -> None:
    chan, raw = pair
    raw.sendall(struct.pack(">I", 2) + b"{}" + struct.pack(">Q", 1 << 40))
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge, match="payload of 1099511627776 bytes is over the 1024-byte cap"):
            chan.recv(timeout=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_sender_checks_its_own_caps_and_sends_nothing() -> None:
    a, raw = socketpair(max_payload=4)
    with pytest.raises(FrameTooLarge, match="payload of 5 bytes"):
        a.send({"type": "x"}, b"12345")
    with pytest.raises(FrameTooLarge, match="header of"):
        a.send({"type": "x", "pad": "y" * MAX_HEADER})
    raw.setblocking(False)
    with pytest.raises(BlockingIOError):
        raw.recv(1)  # nothing went out
    a.close()
    raw.close()


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00",  # inside the header length
        struct.pack(">I", 10) + b'{"a":',  # inside the header
        struct.pack(">I", 2) + b"{}" + b"\x00\x00\x00",  # inside the payload length
        struct.pack(">I", 2) + b"{}" + struct.pack(">Q", 8) + b"abc",  # inside the payload
    ],
)
def test_truncated_frame_is_malformed_not_a_clean_end(data: bytes) -> None:
    chan, raw = socketpair(max_payload=1024)
    raw.sendall(data)
    raw.close()
    with pytest.raises(MalformedFrame, match="truncated frame"):
        chan.recv(timeout=1)
    chan.close()


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (b"not json at all", "not UTF-8 JSON"),
        (b"\xff\xfe\x00", "not UTF-8 JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"done"', "not a JSON object"),
        (b"NaN", "not a JSON object"),
    ],
)
def test_junk_header_is_malformed(pair: tuple[Channel, socket.socket], header: bytes, why: str) -> None:
    chan, raw = pair
    raw.sendall(_frame(header))
    with pytest.raises(MalformedFrame, match=why):
        chan.recv(timeout=1)


def test_receive_timeout_when_nothing_or_half_a_frame_comes(pair: tuple[Channel, socket.socket]) -> None:
    chan, raw = pair
    start = time.monotonic()
    with pytest.raises(ChannelTimeout):
        chan.recv(timeout=0.2)
    assert time.monotonic() - start < 2
    other, raw2 = socketpair()
    raw2.sendall(struct.pack(">I", 100) + b'{"type":')  # half a frame, then silence
    with pytest.raises(ChannelTimeout):
        other.recv(timeout=0.2)
    other.close()
    raw2.close()


def test_a_frame_sent_in_pieces_is_reassembled(pair: tuple[Channel, socket.socket]) -> None:
    chan, raw = pair
    data = _frame(json.dumps({"type": "done", "n": 7}).encode(), b"xyz")

    def dribble() -> None:
        for i in range(len(data)):
            raw.sendall(data[i : i + 1])
            time.sleep(0.001)

    t = threading.Thread(target=dribble)
    t.start()
    frame = chan.recv(timeout=5)
    t.join()
    assert frame.header == {"type": "done", "n": 7} and frame.payload == b"xyz"


def test_send_to_a_closed_peer_is_channel_closed(pair: tuple[Channel, socket.socket]) -> None:
    chan, raw = pair
    raw.close()
    assert chan.readable(0)  # the end of the stream is "readable"
    with pytest.raises(ChannelClosed):
        for _ in range(100):  # the first send may still land in the buffer
            chan.send({"type": "task"})


def test_closed_channel_refuses_use() -> None:
    chan, raw = socketpair()
    chan.close()
    with pytest.raises(ChannelClosed, match="closed"):
        chan.recv(timeout=0.1)
    with pytest.raises(ChannelClosed, match="closed"):
        chan.send({"type": "x"})
    raw.close()


def test_nan_cannot_be_sent() -> None:
    chan, raw = socketpair()
    with pytest.raises(ValueError):
        chan.send({"x": float("nan")})
    chan.close()
    raw.close()

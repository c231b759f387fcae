"""Length-prefixed frames over a stream socket: how the agent and its training worker talk.

The agent makes a ``socket.socketpair()``, keeps one end and hands the other to the worker process
(``pass_fds``). The worker runs job code, so everything it sends is untrusted input: every size is
checked against a cap *before* anything of that size is allocated or read, and a frame that breaks the
format is an error of its own type, never a guess.

A frame::

    u32 big-endian   header length H   (at most MAX_HEADER, 1 MiB)
    H bytes          header: UTF-8 JSON object
    u64 big-endian   payload length P  (at most the channel's max_payload)
    P bytes          payload

The agent and the worker pass only control frames (the task, "ready", "done", "refused", "error"); the
model itself travels by file in the worker's I/O folder, so the default payload cap is 0.

A clean end of stream at a frame boundary is :class:`ChannelClosed`; an end inside a frame is
:class:`MalformedFrame`. After any error inside a frame (truncated, oversize, timeout) the stream is out
of step and the channel refuses further use: close it and, on the agent's side, the worker with it.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from secagg.errors import SecaggError
from secagg.reasons import Reason

#: the largest header either end accepts or sends
MAX_HEADER = 1 << 20

_HEADER_LEN = struct.Struct(">I")
_PAYLOAD_LEN = struct.Struct(">Q")


class ChannelError(SecaggError):
    """The channel cannot carry on: the peer broke the frame format, went away or timed out."""

    code: str = Reason.CHANNEL_ERROR


class ChannelClosed(ChannelError):
    """The peer closed its end at a frame boundary (or the channel was closed here)."""

    code: str = Reason.CHANNEL_CLOSED


class MalformedFrame(ChannelError):
    """Bytes that are not a frame: truncated, or a header that is not a UTF-8 JSON object."""

    code: str = Reason.MALFORMED_FRAME


class FrameTooLarge(MalformedFrame):
    """A header or payload length over the cap; refused before anything of that size is read."""

    code: str = Reason.FRAME_TOO_LARGE


class ChannelTimeout(ChannelError):
    """No complete frame within the time allowed."""

    code: str = Reason.CHANNEL_TIMEOUT


@dataclass(frozen=True)
class Frame:
    header: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:
        """The header's ``type`` field, or ``""`` where it has none (or not a string)."""
        value = self.header.get("type")
        return value if isinstance(value, str) else ""


@dataclass
class Channel:
    """One end of a frame channel. ``max_payload`` caps payloads both ways (sent and received)."""

    sock: socket.socket
    max_payload: int = 0
    max_header: int = MAX_HEADER
    _broken: str | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_fd(cls, fd: int, *, max_payload: int = 0) -> Channel:
        """The end of a socketpair inherited as file descriptor ``fd`` (the worker's side)."""
        return cls(socket.socket(fileno=fd), max_payload=max_payload)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------------ send
    def send(self, header: Mapping[str, Any], payload: bytes = b"", *, timeout: float | None = None) -> None:
        """Send one frame. Raises :class:`FrameTooLarge` (nothing sent) for sizes over the caps and
        :class:`ChannelClosed` when the peer has gone."""
        self._check_usable()
        head = json.dumps(dict(header), separators=(",", ":"), allow_nan=False).encode()
        if len(head) > self.max_header:
            raise FrameTooLarge(f"frame header of {len(head)} bytes is over the {self.max_header}-byte cap")
        if len(payload) > self.max_payload:
            raise FrameTooLarge(
                f"frame payload of {len(payload)} bytes is over the {self.max_payload}-byte cap"
            )
        data = b"".join((_HEADER_LEN.pack(len(head)), head, _PAYLOAD_LEN.pack(len(payload)), payload))
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self._broken = "a send timed out"
            raise ChannelTimeout(f"could not send a frame within {timeout} s") from None
        except (BrokenPipeError, ConnectionResetError):
            self._broken = "the peer closed the channel"
            raise ChannelClosed("the peer closed the channel") from None

    # ------------------------------------------------------------------ receive
    def readable(self, timeout: float = 0.0) -> bool:
        """Whether a frame (or the end of the stream) is waiting, within ``timeout`` seconds."""
        self._check_usable()
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        return bool(ready)

    def recv(self, timeout: float | None = None) -> Frame:
        """The next frame, within ``timeout`` seconds in all (None: wait as long as it takes)."""
        self._check_usable()
        deadline = None if timeout is None else time.monotonic() + timeout
        first = self._read(_HEADER_LEN.size, deadline, at_boundary=True)
        (head_len,) = _HEADER_LEN.unpack(first)
        if head_len > self.max_header:
            raise self._fail(
                FrameTooLarge(f"frame header of {head_len} bytes is over the {self.max_header}-byte cap")
            )
        head = self._read(head_len, deadline)
        try:
            header = json.loads(head.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
            raise self._fail(MalformedFrame("frame header is not UTF-8 JSON")) from None
        if not isinstance(header, dict):
            raise self._fail(MalformedFrame("frame header is not a JSON object"))
        (payload_len,) = _PAYLOAD_LEN.unpack(self._read(_PAYLOAD_LEN.size, deadline))
        if payload_len > self.max_payload:
            raise self._fail(
                FrameTooLarge(f"frame payload of {payload_len} bytes is over the {self.max_payload}-byte cap")
            )
        payload = self._read(payload_len, deadline) if payload_len else b""
        return Frame(header, payload)

    def _read(self, n: int, deadline: float | None, *, at_boundary: bool = False) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._fail(ChannelTimeout("no complete frame within the time allowed"))
            self.sock.settimeout(remaining)
            try:
                k = self.sock.recv_into(view[got:])
            except TimeoutError:
                raise self._fail(ChannelTimeout("no complete frame within the time allowed")) from None
            except ConnectionResetError:
                k = 0
            if k == 0:
                if at_boundary and got == 0:
                    self._broken = "the peer closed the channel"
                    raise ChannelClosed("the peer closed the channel")
                raise self._fail(
                    MalformedFrame(f"truncated frame: the stream ended after {got} of {n} bytes")
                )
            got += k
        return bytes(buf)

    def _fail(self, exc: ChannelError) -> ChannelError:
        self._broken = str(exc)
        return exc

    def _check_usable(self) -> None:
        if self.closed:
            raise ChannelClosed("the channel is closed")
        if self._broken is not None:
            raise ChannelClosed(f"the channel is out of use: {self._broken}")


def socketpair(*, max_payload: int = 0) -> tuple[Channel, socket.socket]:
    """A new channel for the agent and the raw socket to hand to the worker (then close it here)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(mine, max_payload=max_payload), theirs

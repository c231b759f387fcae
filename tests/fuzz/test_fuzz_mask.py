"""Fuzz: the masking protocol's messages (secagg/mask/messages.py) on their typed wire encoding.

Seeds: one of each message as the code encodes it. Each input is parsed as every message type (a
payload of one kind must be refused as another, never crash it).
"""

from __future__ import annotations

import contextlib
import random
import struct

from hypothesis import example, given

from secagg.errors import SecaggError
from secagg.mask import messages as m
from tests.fuzz._harness import Target, inputs

_TYPES = (m.AdvertiseKeys, m.EncryptedShare, m.MaskedInput, m.UnmaskRequest, m.UnmaskResponse)


def _seeds() -> list[bytes]:
    share = (1, b"\x07" * m.SHARE_BYTES)
    return [
        m.AdvertiseKeys(
            "site-1", "job", 3, b"\1" * 32, b"\2" * 32, b"\x30\x03\x02\x01\x00", b"sig"
        ).to_bytes(),
        m.EncryptedShare("site-1", "site-2", "job", 3, b"\0" * 12, b"ct" * 40).to_bytes(),
        m.MaskedInput("site-1", "job", 3, b"\xff" * 64).to_bytes(),
        m.UnmaskRequest("job", 3, ("site-1", "site-2"), ("site-3",)).to_bytes(),
        m.UnmaskResponse("site-1", "job", 3, {"site-2": share}, {"site-3": (2, b"\x09" * 32)}).to_bytes(),
    ]


def _parse_all(data: bytes) -> None:
    for cls in _TYPES:
        with contextlib.suppress(SecaggError):
            cls.from_bytes(data)


def _huge_count(rng: random.Random) -> bytes:
    """An UnmaskRequest/UnmaskResponse claiming 2^64-1 names or shares in a tiny blob."""
    inner = b"I" + struct.pack(">Q", rng.choice((2**64 - 1, 2**32, 10**9)))
    if rng.random() < 0.5:
        return _pack_req(inner)
    return _pack_resp(inner)


def _pack_req(inner: bytes) -> bytes:
    from secagg.mask.wire import pack

    return pack(m.UnmaskRequest.TAG, "job", 3, inner, inner)


def _pack_resp(inner: bytes) -> bytes:
    from secagg.mask.wire import pack

    return pack(m.UnmaskResponse.TAG, "s", "job", 3, inner, inner)


TARGETS = [Target("mask_messages", _parse_all, _seeds, (), extra=(_huge_count,))]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["mask_messages"]))
@example(_pack_req(b"I" + struct.pack(">Q", 2**64 - 1)))
def test_mask_messages(data: bytes) -> None:
    _T["mask_messages"].check(data)


def test_seeds_parse() -> None:
    for cls, raw in zip(_TYPES, _seeds(), strict=True):
        assert cls.from_bytes(raw).to_bytes() == raw

"""Fuzz: Intel TDX DCAP quotes (v4, v5), parsed and through the front door.

Seeds: the published quotes in tests/vectors/tdx (GCP's zero-padded 8000-byte quote, Intel's v5
sample, a production SPR quote). The length fields (signature data, certification data, QE auth data,
PCK chain) are what the mutator's length blow-ups aim at.
"""

from __future__ import annotations

import datetime as dt
import random
import struct

from hypothesis import given

from attestation import tdx
from attestation.errors import ParseError
from attestation.evidence import verify_and_validate
from attestation.options import VerifyOptions
from tests.fuzz._harness import VECTORS, Target, inputs

TDX = VECTORS / "tdx" / "go-tdx-guest"
NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def _seeds() -> list[bytes]:
    names = ("cos-113-tdx-quote.dat", "quote_v5_sample.dat", "tdx_prod_quote_SPR_E4.dat")
    return [(TDX / n).read_bytes() for n in names]


def _length_at_fields(rng: random.Random) -> bytes:
    """A real quote with one of its declared lengths (at its real offset) set to an extreme."""
    q = bytearray(rng.choice(_seeds()[1:]))
    parsed = tdx.parse_quote(bytes(q), allow_trailing_garbage=True)
    sig_len_at = len(parsed.signed_bytes)
    cert_size_at = sig_len_at + 4 + 128 + 2
    auth_size_at = cert_size_at + 4 + tdx.QE_REPORT_SIZE + 64
    at, width = rng.choice(((sig_len_at, 4), (cert_size_at, 4), (auth_size_at, 2)))
    value = rng.choice((0, 1, 2 ** (8 * width) - 1, 2 ** (8 * width - 1), rng.getrandbits(8 * width)))
    q[at : at + width] = value.to_bytes(width, "little")
    if rng.random() < 0.3:
        q = q[: rng.randrange(len(q))]
    return bytes(q)


def _front_door(data: bytes) -> None:
    verify_and_validate(data, VerifyOptions(now=NOW), expected_report_data=b"\0" * 64)


TARGETS = [
    Target("tdx_quote", tdx.parse_quote, _seeds, (ParseError,), extra=(_length_at_fields,)),
    Target("tdx_verify", _front_door, _seeds, (), extra=(_length_at_fields,)),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["tdx_quote"]))
def test_tdx_quote(data: bytes) -> None:
    _T["tdx_quote"].check(data)


@given(inputs(_T["tdx_verify"]))
def test_tdx_verify(data: bytes) -> None:
    _T["tdx_verify"].check(data)


def test_seeds_parse() -> None:
    for s in _seeds():
        tdx.parse_quote(s, allow_trailing_garbage=True)
    assert struct.calcsize("<HHI") == 8

"""Paths to the real vectors (copied unchanged into tests/vectors) and a fixed evaluation time."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

VEC = Path(__file__).resolve().parent.parent / "vectors"
SNP = VEC / "sev-snp"
TDX = VEC / "tdx" / "go-tdx-guest"
# Fixed time: inside every vector certificate's validity (the v5 quote's PCK dates from 2026-01-27).
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def read(path: Path) -> bytes:
    return path.read_bytes()


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def sample_bits(n_bytes: int, k: int = 40, seed: int = 20261124) -> list[int]:
    return random.Random(seed).sample(range(n_bytes * 8), k)


@pytest.fixture(scope="session")
def snp_gsg() -> tuple[bytes, bytes]:
    """go-sev-guest: raw report (a debug guest) and its VCEK."""
    return read(SNP / "go-sev-guest" / "attestation.bin"), read(SNP / "go-sev-guest" / "vcek.testcer")


@pytest.fixture(scope="session")
def snp_virtee() -> tuple[bytes, bytes]:
    """virtee/sev: report as hex text and its VCEK."""
    return read(SNP / "virtee-sev" / "report_milan.hex"), read(SNP / "virtee-sev" / "vcek_milan.der")

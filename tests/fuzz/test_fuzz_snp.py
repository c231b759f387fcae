"""Fuzz: SEV-SNP reports (raw and hex), extended reports, GUID certificate tables, certificate blobs.

Seeds: the published reports and certificates in tests/vectors/sev-snp and a certificate table built
from them the way hosts lay it out. Allowed outcome of the parsers: :class:`ParseError`; of the front
door (:func:`verify_and_validate`): nothing at all, since it reports every failure in its result.
"""

from __future__ import annotations

import datetime as dt
import random
import struct

from hypothesis import example, given

from attestation import snp
from attestation.errors import AttestationError, ParseError
from attestation.evidence import verify_and_validate
from attestation.options import VerifyOptions
from attestation.snp_verify import load_certificates
from tests.fuzz._harness import VECTORS, Target, inputs

SNP = VECTORS / "sev-snp"
NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def _report() -> bytes:
    return (SNP / "go-sev-guest" / "attestation.bin").read_bytes()


def _vcek() -> bytes:
    return (SNP / "go-sev-guest" / "vcek.testcer").read_bytes()


def cert_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A GUID table (GHCB spec layout): entries, an all-zero entry, then the certificates."""
    head = 24 * (len(entries) + 1)
    out, body = b"", b""
    for guid, blob in entries:
        out += guid + struct.pack("<II", head + len(body), len(blob))
        body += blob
    return out + b"\0" * 24 + body


def _table_seeds() -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ask, ark = x509.load_pem_x509_certificates((SNP / "amd-kds-certs" / "ask_ark_milan.pem").read_bytes())
    der = [c.public_bytes(Encoding.DER) for c in (ask, ark)]
    return [
        cert_table([(snp.GUID_VCEK.bytes, _vcek())]),
        cert_table(
            [(snp.GUID_VCEK.bytes, _vcek()), (snp.GUID_ASK.bytes, der[0]), (snp.GUID_ARK.bytes, der[1])]
        ),
        cert_table([(snp.GUID_VCEK.bytes_le, _vcek()), (snp.GUID_CRL.bytes, b"\x30\x03\x02\x01\x00")])
        + b"\0" * 100,
    ]


def _report_seeds() -> list[bytes]:
    return [_report(), (SNP / "virtee-sev" / "report_milan.hex").read_bytes()]


def _extended_seeds() -> list[bytes]:
    return [_report() + t for t in _table_seeds()] + _report_seeds()


def _cert_blob_seeds() -> list[bytes]:
    return [
        _vcek(),
        (SNP / "virtee-sev" / "vcek_milan.der").read_bytes(),
        (SNP / "amd-kds-certs" / "ask_ark_milan.pem").read_bytes(),
        *_table_seeds(),
    ]


def _parse_any(data: bytes) -> None:
    raw = data if len(data) == snp.REPORT_SIZE else snp.decode_hex_report(data)
    snp.parse_report(raw)


def _split(data: bytes) -> None:
    raw, _table = snp.split_extended_report(data)
    snp.parse_report(raw)


def _front_door(data: bytes) -> None:
    verify_and_validate(data, VerifyOptions(certs=[_vcek()], now=NOW), expected_report_data=b"\0" * 64)


def _certs_given(data: bytes) -> None:
    """Bytes given as ``--certs`` beside a genuine report: a failure must name the certificates."""
    res = verify_and_validate(_report(), VerifyOptions(certs=[data], now=NOW))
    for e in res.errors:
        assert not e.startswith("parse:"), e


def _huge_table(rng: random.Random) -> bytes:
    """A table whose entries declare enormous lengths or offsets, or that never terminates."""
    n = rng.choice((1, 100, 40_000))
    entry = snp.GUID_VCEK.bytes + struct.pack("<II", rng.getrandbits(32), rng.getrandbits(32))
    return _report() + entry * n


TARGETS = [
    Target("snp_report", _parse_any, _report_seeds, (ParseError,)),
    Target("snp_extended_report", _split, _extended_seeds, (ParseError,), extra=(_huge_table,)),
    Target("snp_cert_table", snp.parse_cert_table, _table_seeds, (ParseError,)),
    Target("snp_cert_blobs", lambda d: load_certificates([d]), _cert_blob_seeds, (ParseError,)),
    Target("snp_verify", _front_door, _extended_seeds, (), extra=(_huge_table,)),
    Target("snp_certs_option", _certs_given, _cert_blob_seeds, ()),
]
_T = {t.name: t for t in TARGETS}


@given(inputs(_T["snp_report"]))
def test_snp_report(data: bytes) -> None:
    _T["snp_report"].check(data)


@given(inputs(_T["snp_extended_report"]))
def test_snp_extended_report(data: bytes) -> None:
    _T["snp_extended_report"].check(data)


@given(inputs(_T["snp_cert_table"]))
def test_snp_cert_table(data: bytes) -> None:
    _T["snp_cert_table"].check(data)


@given(inputs(_T["snp_cert_blobs"]))
def test_snp_cert_blobs(data: bytes) -> None:
    _T["snp_cert_blobs"].check(data)


@given(inputs(_T["snp_verify"]))
def test_snp_verify(data: bytes) -> None:
    _T["snp_verify"].check(data)


@given(inputs(_T["snp_certs_option"]))
@example(b"\x8f" * 700)  # found: random bytes as --certs were reported as a bad *report*
def test_snp_certs_option(data: bytes) -> None:
    _T["snp_certs_option"].check(data)


def test_random_certs_are_blamed_on_the_certificates() -> None:
    res = verify_and_validate(_report(), VerifyOptions(certs=[bytes(range(256)) * 3], now=NOW))
    assert res.decision == "refuse" and len(res.errors) == 1, res.errors
    assert res.errors[0].startswith("certificates: certificate file (768 bytes) is not PEM, DER"), res.errors


def test_seeds_parse() -> None:
    """The seeds are real inputs the parsers accept (else the fuzz explores only refusals)."""
    _parse_any(_report())
    _parse_any((SNP / "virtee-sev" / "report_milan.hex").read_bytes())
    for t in _table_seeds():
        assert "vcek" in snp.parse_cert_table(t)
        _split(_report() + t)
    assert load_certificates(_cert_blob_seeds())
    assert issubclass(ParseError, AttestationError)

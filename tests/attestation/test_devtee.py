"""Dev-only software TEE: round trip, explicit opt-in, tamper, pinning, strict format."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from attestation.devtee import make_dev_evidence, parse_dev_evidence, verify_dev_evidence
from attestation.errors import InsecureDevTeeRefused, ParseError, ValidationError, VerificationError
from attestation.options import ValidationOptions
from attestation.validate import validate_dev
from attestation.validate import validate_dev as validate_dev_evidence  # the wrapper devtee had

M = bytes(range(48))


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def test_round_trip_requires_explicit_opt_in(key):
    ev = parse_dev_evidence(make_dev_evidence(key, M, b"nonce", timestamp=1000))
    assert ev.measurement == M and ev.report_data == b"nonce".ljust(64, b"\0") and not ev.debug
    with pytest.raises(InsecureDevTeeRefused, match="allow_insecure_dev_tee"):
        verify_dev_evidence(ev, allow_insecure_dev_tee=False)
    checks = verify_dev_evidence(ev, allow_insecure_dev_tee=True).checks
    assert [c.field for c in checks] == ["insecure_dev_tee", "signing_key", "signature"] and all(
        c.ok for c in checks
    )


def test_ed25519_and_pinned_keys(key):
    ed = ed25519.Ed25519PrivateKey.generate()
    ev = parse_dev_evidence(make_dev_evidence(ed, M, b""))
    spki = ed.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verify_dev_evidence(ev, allow_insecure_dev_tee=True, trusted_keys=[spki])
    other = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(VerificationError, match="not among the trusted keys"):
        verify_dev_evidence(ev, allow_insecure_dev_tee=True, trusted_keys=[other])


def test_tampered_evidence_fails(key):
    raw = make_dev_evidence(key, M, b"nonce")
    tampered = raw.replace(b'"debug":false', b'"debug":true ')  # non-canonical: parse refuses
    with pytest.raises(ParseError):
        parse_dev_evidence(tampered)
    flipped = raw.replace(M.hex().encode(), (b"ff" + M.hex().encode()[2:]))
    with pytest.raises(VerificationError, match="signature"):
        verify_dev_evidence(parse_dev_evidence(flipped), allow_insecure_dev_tee=True)


def test_strict_format(key):
    raw = make_dev_evidence(key, M, b"")
    for bad in (raw + b"\n", raw + b"x", raw[:-1], b" " + raw, raw.replace(b'"tcb"', b'"tcx"')):
        with pytest.raises(ParseError):
            parse_dev_evidence(bad)
    with pytest.raises(ValueError):
        make_dev_evidence(key, M[:20], b"")
    with pytest.raises(ValueError):
        make_dev_evidence(key, M, bytes(65))


def test_validation(key):
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    ev = parse_dev_evidence(
        make_dev_evidence(key, M, b"n", debug=True, tcb={"snp": 3}, timestamp=int(now.timestamp()) - 600)
    )
    opts = ValidationOptions(measurements=["00" * 48], min_tcb={"snp": 4}, max_age_s=60)
    with pytest.raises(ValidationError) as exc:
        validate_dev(ev, opts, expected_report_data=b"m".ljust(64, b"\0"), now=now)
    assert [c.field for c in exc.value.failures] == [
        "measurement",
        "debug",
        "min_tcb.snp",
        "report_data",
        "timestamp",
    ]
    good = ValidationOptions(measurements=[M.hex()], min_tcb={"snp": 3}, max_age_s=3600, debug_allowed=True)
    assert all(
        c.ok for c in validate_dev_evidence(ev, good, expected_report_data=b"n".ljust(64, b"\0"), now=now)
    )

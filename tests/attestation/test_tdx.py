"""Intel TDX: parse, verify and validate the real v4/v5 quotes from go-tdx-guest."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import struct

import pytest

from attestation import tdx_verify
from attestation.errors import ParseError, ValidationError, VerificationError
from attestation.options import ValidationOptions
from attestation.roots import amd_chains
from attestation.tdx import MAX_QUOTE_SIZE, parse_quote
from attestation.tdx_verify import verify_quote
from attestation.validate import validate_tdx

from .conftest import NOW, TDX, flip, read, sample_bits

QUOTES = ["tdx_prod_quote_SPR_E4.dat", "quote_v5_sample.dat", "cos-113-tdx-quote.dat"]


def _quote(name: str):
    return parse_quote(read(TDX / name), allow_trailing_garbage=True)


@pytest.mark.parametrize("name", QUOTES)
def test_real_quotes_verify(name):
    q = _quote(name)
    res = verify_quote(q, now=NOW)
    assert [c.field for c in res.checks] == [
        "pck_chain",
        "cert_validity",
        "qe_report_signature",
        "qe_identity",
        "attestation_key_binding",
        "quote_signature",
    ]
    assert all(c.ok for c in res.checks)
    assert q.version == (5 if "v5" in name else 4)


def test_v5_body_is_tdx15():
    q = _quote("quote_v5_sample.dat")
    assert q.body_type == 3 and q.body.tee_tcb_svn2 is not None and q.body.mr_service_td is not None
    assert len(q.signed_bytes) == 48 + 6 + 648


def test_trailing_bytes_policy():
    # GCP pads its 8000-byte quote buffer with zeros: accepted by the strict parser
    cos = read(TDX / "cos-113-tdx-quote.dat")
    q = parse_quote(cos)
    assert len(q.trailing) > 0 and not any(q.trailing)
    # go-tdx-guest's sample ends in unsigned text: refused unless the caller opts in
    spr = read(TDX / "tdx_prod_quote_SPR_E4.dat")
    with pytest.raises(ParseError, match="trailing bytes"):
        parse_quote(spr)
    assert parse_quote(spr, allow_trailing_garbage=True).trailing.startswith(b"\nextra bytes")
    with pytest.raises(ParseError, match="trailing bytes"):
        parse_quote(cos + b"\x01")
    with pytest.raises(ParseError, match="too large"):
        parse_quote(cos + bytes(MAX_QUOTE_SIZE))


@pytest.mark.parametrize("cut", [10, 47, 48, 300, 632, 636, 700, 1100, 4000, 4934])
def test_truncated_quote_refused(cut):
    with pytest.raises(ParseError, match="truncated"):
        parse_quote(read(TDX / "tdx_prod_quote_SPR_E4.dat")[:cut])


@pytest.mark.parametrize("name", QUOTES)
def test_sampled_bit_flips_in_signed_region_fail(name):
    raw = read(TDX / name)
    q = _quote(name)
    n = len(q.signed_bytes)
    for bit in sample_bits(n, 30, seed=len(name)):
        with pytest.raises((ParseError, VerificationError)):
            verify_quote(parse_quote(flip(raw, bit), allow_trailing_garbage=True), now=NOW)


def test_each_link_is_checked():
    raw = read(TDX / "cos-113-tdx-quote.dat")
    q = parse_quote(raw)
    sig_off = len(q.signed_bytes) + 4
    ak_off, qe_off = sig_off + 64, sig_off + 128 + 6
    cases = {
        "quote_signature": sig_off + 5,  # quote signature r
        "attestation_key_binding": ak_off + 3,  # attestation key
        "qe_report_signature": qe_off + 100,  # QE report body
    }
    for field, off in cases.items():
        with pytest.raises(VerificationError) as exc:
            verify_quote(parse_quote(flip(raw, off * 8)), now=NOW)
        assert exc.value.checks[-1].field == field and not exc.value.checks[-1].ok
    auth_off = qe_off + 384 + 64 + 2
    with pytest.raises(VerificationError, match="attestation_key_binding"):
        verify_quote(parse_quote(flip(raw, auth_off * 8)), now=NOW)


def test_qe_identity_pinned(monkeypatch):
    monkeypatch.setattr(tdx_verify, "INTEL_TD_QE_MRSIGNER", bytes(32))
    with pytest.raises(VerificationError, match="not Intel's TD QE"):
        verify_quote(_quote("cos-113-tdx-quote.dat"), now=NOW)


def test_wrong_root_refused(monkeypatch):
    monkeypatch.setattr(tdx_verify, "intel_sgx_root", lambda: amd_chains()[0].ark)
    with pytest.raises(VerificationError, match="not the pinned Intel SGX Root CA"):
        verify_quote(_quote("cos-113-tdx-quote.dat"), now=NOW)


def test_pck_outside_validity_refused():
    with pytest.raises(VerificationError, match="cert_validity"):
        verify_quote(_quote("quote_v5_sample.dat"), now=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))


def test_unsupported_header_fields_refused():
    raw = read(TDX / "cos-113-tdx-quote.dat")
    with pytest.raises(ParseError, match="version 3"):
        parse_quote(struct.pack("<H", 3) + raw[2:])
    with pytest.raises(ParseError, match="attestation key type"):
        parse_quote(raw[:2] + struct.pack("<H", 3) + raw[4:])
    with pytest.raises(ParseError, match="not TDX"):
        parse_quote(raw[:4] + struct.pack("<I", 0) + raw[8:])


def test_validation_fields():
    q = _quote("cos-113-tdx-quote.dat")
    nonce = read(TDX / "cos-113-tdx-quote.nonce.dat")
    body = q.body
    ok = ValidationOptions(
        measurements=[body.mr_td.hex()],
        min_tee_tcb_svn=body.tee_tcb_svn.hex(),
        rtmrs={1: body.rtmrs[1].hex()},
    )
    assert all(c.ok for c in validate_tdx(q, ok, expected_report_data=nonce))
    bad = ValidationOptions(
        measurements=["11" * 48], min_tee_tcb_svn="ff", rtmrs={0: "00" * 48}, mr_seam=["22" * 48]
    )
    with pytest.raises(ValidationError) as exc:
        validate_tdx(q, bad, expected_report_data=b"other nonce")
    assert [c.field for c in exc.value.failures] == [
        "measurement",
        "report_data",
        "mr_seam",
        "tee_tcb_svn",
        "rtmr0",
    ]
    debug_q = dataclasses.replace(
        q, body=dataclasses.replace(body, td_attributes=b"\x01" + body.td_attributes[1:])
    )
    with pytest.raises(ValidationError, match="debug"):
        validate_tdx(debug_q, ValidationOptions())
    assert validate_tdx(debug_q, ValidationOptions(debug_allowed=True))[0].field == "debug"


def test_collateral_evaluated_offline_at_a_given_time(tmp_path):
    pytest.importorskip("dcap_qvl")
    from attestation.tdx_collateral import evaluate_collateral

    spr = read(TDX / "tdx_prod_quote_SPR_E4.dat")
    q = parse_quote(spr, allow_trailing_garbage=True)
    signed = spr[: len(spr) - len(q.trailing)]
    # The vectors' collateral (June 2023) does not list this platform's TCB level: refused, and why.
    with pytest.raises(VerificationError, match="No matching TCB level"):
        evaluate_collateral(signed, TDX, now=dt.datetime(2023, 6, 20, tzinfo=dt.UTC))
    # A tampered TCB info signature is caught before any TCB matching.
    for f in TDX.iterdir():
        shutil.copy(f, tmp_path / f.name)
    text = (tmp_path / "sample_tcbInfo_response").read_text()
    (tmp_path / "sample_tcbInfo_response").write_text(text.replace('"tcbType":0', '"tcbType":1'))
    with pytest.raises(VerificationError, match="Signature is invalid for tcb_info"):
        evaluate_collateral(signed, tmp_path, now=dt.datetime(2023, 6, 20, tzinfo=dt.UTC))
    # Evaluated today, the same collateral is stale (expired CRL): time is an input, not an accident.
    with pytest.raises(VerificationError, match="CrlExpired"):
        evaluate_collateral(signed, TDX, now=NOW)


@pytest.mark.parametrize("how", ["huge", "not_text", "fifo", "bad_json"])
def test_hostile_collateral_files_are_refused_in_one_line(tmp_path, how):
    """A collateral folder is operator input: a file far past collateral's size is refused before it
    is read whole, bytes that are not text or a body that is not a PCS response are named, and a FIFO
    is not opened (it would block); each as an ``OptionsError``, never a traceback or a hang."""
    pytest.importorskip("dcap_qvl")
    from attestation.errors import OptionsError
    from attestation.tdx_collateral import MAX_COLLATERAL_BYTES, evaluate_collateral

    for f in TDX.iterdir():
        shutil.copy(f, tmp_path / f.name)
    target = tmp_path / "sample_tcbInfo_response"
    target.unlink()
    if how == "huge":
        with target.open("wb") as fh:
            fh.truncate(MAX_COLLATERAL_BYTES + 1)  # sparse: cheap to make, not to read whole
    elif how == "not_text":
        target.write_bytes(b"\xff\xfe" * 10)
    elif how == "fifo":
        import os

        os.mkfifo(target)
    else:
        target.write_text('{"tcbInfo":{},"signature":"zz"}')
    spr = read(TDX / "tdx_prod_quote_SPR_E4.dat")
    q = parse_quote(spr, allow_trailing_garbage=True)
    signed = spr[: len(spr) - len(q.trailing)]
    words = {"huge": "is over", "not_text": "is not UTF-8", "fifo": "lacks tcb_info", "bad_json": "signature"}
    with pytest.raises(OptionsError, match=words[how]):
        evaluate_collateral(signed, tmp_path, now=dt.datetime(2023, 6, 20, tzinfo=dt.UTC))

"""The front door: detection by content, and every result collected into one decision."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.devtee import make_dev_evidence
from attestation.errors import OptionsError, ParseError
from attestation.evidence import detect, verify_and_validate
from attestation.options import ValidationOptions, VerifyOptions, options_from_mapping

from .conftest import NOW, SNP, TDX, flip, read

REQUIRED = {"type", "verified", "measurement", "report_data", "errors", "decision", "checked"}


def test_detect_by_content(snp_gsg, snp_virtee):
    assert detect(snp_gsg[0]) == "sev-snp"
    assert detect(snp_gsg[0][:100]) == "sev-snp"  # truncated: recognised, then refused by the parser
    assert detect(snp_virtee[0]) == "sev-snp"
    for name in ("tdx_prod_quote_SPR_E4.dat", "quote_v5_sample.dat", "cos-113-tdx-quote.dat"):
        assert detect(read(TDX / name)) == "tdx"
    assert detect(make_dev_evidence(ec.generate_private_key(ec.SECP384R1()), bytes(48), b"")) == "dev-tee"
    for junk in (b"", b"hello world", bytes(2000), read(SNP / "go-sev-guest" / "vcek.testcer")):
        with pytest.raises(ParseError, match="unrecognised"):
            detect(junk)


def test_snp_accept_and_result_shape(snp_virtee):
    res = verify_and_validate(snp_virtee[0], VerifyOptions(certs=[snp_virtee[1]], now=NOW))
    d = res.to_dict()
    assert set(d) >= REQUIRED and d["decision"] == "accept" and d["verified"] is True and d["errors"] == []
    assert d["type"] == "sev-snp" and d["measurement"].startswith("7a1e5c266c0108db")
    assert d["details"]["product"] == "Milan"


def test_snp_refusals_are_collected(snp_gsg):
    raw, vcek = snp_gsg
    res = verify_and_validate(
        raw,
        VerifyOptions(certs=[vcek], now=NOW),
        options=ValidationOptions(measurements=["ab" * 48]),
        expected_report_data=b"fresh nonce",
    )
    assert res.verified and res.decision == "refuse"
    assert [e.split(":")[0] for e in res.errors] == ["measurement", "debug", "report_data"]
    tampered = verify_and_validate(flip(raw, 0x90 * 8), VerifyOptions(certs=[vcek], now=NOW))
    assert (
        not tampered.verified and tampered.decision == "refuse" and "report_signature" in tampered.errors[0]
    )
    wrong_chain = verify_and_validate(
        raw, VerifyOptions(certs=[vcek, read(SNP / "amd-kds-certs" / "ask_ark_genoa.pem")], now=NOW)
    )
    assert not wrong_chain.verified and wrong_chain.errors[0].startswith("cert_chain")
    for bad in (raw[:-8], raw + bytes(8)):
        r = verify_and_validate(bad, VerifyOptions(certs=[vcek], now=NOW))
        assert r.decision == "refuse" and r.errors[0].startswith("parse:")


def test_tdx_nonce_and_trailing(tmp_path):
    cos = read(TDX / "cos-113-tdx-quote.dat")
    nonce = read(TDX / "cos-113-tdx-quote.nonce.dat")
    assert verify_and_validate(cos, VerifyOptions(now=NOW), expected_report_data=nonce).decision == "accept"
    res = verify_and_validate(cos, VerifyOptions(now=NOW), expected_report_data=b"\x01" * 64)
    assert res.verified and res.errors[0].startswith("report_data")
    assert verify_and_validate(cos, VerifyOptions(now=NOW), nonce=nonce).decision == "accept"
    both = verify_and_validate(cos, VerifyOptions(now=NOW), nonce=nonce, expected_report_data=b"x")
    assert both.decision == "refuse" and "differ" in both.errors[0]
    spr = verify_and_validate(read(TDX / "tdx_prod_quote_SPR_E4.dat"), VerifyOptions(now=NOW))
    assert spr.decision == "refuse" and "trailing bytes" in spr.errors[0]


def test_dev_tee_needs_flag_and_types_option():
    key = ec.generate_private_key(ec.SECP384R1())
    ev = make_dev_evidence(key, bytes(48), b"n")
    refused = verify_and_validate(ev)
    assert refused.decision == "refuse" and refused.errors[0].startswith("insecure_dev_tee")
    assert verify_and_validate(ev, VerifyOptions(allow_insecure_dev_tee=True)).decision == "accept"
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        verify_and_validate(ev, VerifyOptions(certs=[pem], allow_insecure_dev_tee=True)).decision == "accept"
    )
    only_hw = verify_and_validate(
        ev, VerifyOptions(allow_insecure_dev_tee=True), options=ValidationOptions(types=["sev-snp", "tdx"])
    )
    assert only_hw.decision == "refuse" and only_hw.errors[0].startswith("type")


def test_options_from_mapping():
    """The package takes parsed data; files are read by the caller (secagg.commands.attest.load_options,
    through secagg.safeyaml)."""
    o = options_from_mapping(
        {"measurements": ["0xAB"], "min_tcb": {"snp": 8}, "vmpl": 0, "debug_allowed": False}
    )
    assert o.measurements == ["ab"] and o.min_tcb is not None and o.min_tcb.snp == 8 and o.vmpl == 0
    policy = {"version": 1, "signers": [], "attestation": {"measurements": ["cd"]}}
    assert options_from_mapping(policy).measurements == ["cd"]
    for bad, msg in (
        ({"measurement": ["ab"]}, "measurement"),
        ({"vmpl": 7}, "vmpl"),
        ([1], "mapping"),
        ({"measurements": ["xyz"]}, "hex"),
    ):
        with pytest.raises(OptionsError, match=msg):
            options_from_mapping(bad, "opts.yaml")


def test_options_file_through_the_project_loader(tmp_path):
    from secagg.commands.attest import load_options
    from secagg.errors import ConfigError

    p = tmp_path / "opts.yaml"
    p.write_text("measurements: ['0xAB']\nvmpl: 0\n")
    assert load_options(p).measurements == ["ab"]
    for bad, msg in ((":\n  - [", "not valid YAML"), ("vmpl: 7\n", "vmpl")):
        p.write_text(bad)
        with pytest.raises(ConfigError, match=msg):
            load_options(p)


def test_extended_report_carries_its_own_certificates(snp_gsg):
    import struct

    from attestation.snp import GUID_VCEK

    raw, vcek = snp_gsg
    table = GUID_VCEK.bytes + struct.pack("<II", 48, len(vcek)) + bytes(24) + vcek + bytes(64)
    res = verify_and_validate(raw + table, VerifyOptions(now=NOW))
    assert res.decision == "accept" and res.details["product"] == "Milan"
    assert (
        verify_and_validate(raw, VerifyOptions(now=NOW)).errors[0].startswith("leaf_cert")
    )  # plain report needs --certs
    skipped = verify_and_validate(raw + table, VerifyOptions(collateral_dir=TDX, now=NOW))
    assert skipped.decision == "accept" and skipped.checked[0].field == "collateral"
    bad = verify_and_validate(raw + table[:-70], VerifyOptions(now=NOW))
    assert bad.decision == "refuse" and "not a certificate table" in bad.errors[0]
    junk = verify_and_validate(raw + b"trailing garbage" + bytes(40), VerifyOptions(now=NOW))
    assert "not a certificate table" in junk.errors[0]

"""SEV-SNP: parse, verify and validate the real Milan reports."""

from __future__ import annotations

import dataclasses
import struct
import uuid

import pytest
from cryptography import x509

from attestation.errors import ParseError, ValidationError, VerificationError
from attestation.options import ValidationOptions
from attestation.snp import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    REPORT_SIZE,
    Product,
    SigningKey,
    TcbVersion,
    decode_hex_report,
    parse_cert_table,
    parse_report,
)
from attestation.snp_verify import leaf_tcb, load_certificates, verify_report
from attestation.validate import validate_snp

from .conftest import NOW, SNP, flip, read, sample_bits

MILAN_CHAIN = SNP / "amd-kds-certs" / "ask_ark_milan.pem"
GENOA_CHAIN = SNP / "amd-kds-certs" / "ask_ark_genoa.pem"
TURIN_CHAIN = SNP / "amd-kds-certs" / "ask_ark_turin_vcek.pem"


def _both(snp_gsg, snp_virtee):
    return [(snp_gsg[0], snp_gsg[1]), (decode_hex_report(snp_virtee[0]), snp_virtee[1])]


def test_parse_fields_of_real_reports(snp_gsg, snp_virtee):
    r = parse_report(snp_gsg[0])
    assert r.version == 2 and r.vmpl == 0 and r.signing_key is SigningKey.VCEK
    assert r.policy == 0xB0000 and r.debug  # go-sev-guest's sample is a debug guest
    assert r.report_data[:5] == bytes([1, 2, 3, 4, 5]) and not any(r.report_data[5:])
    assert r.measurement.hex().startswith("b07af9620f3b839b")
    assert TcbVersion.decode(r.reported_tcb, Product.MILAN) == TcbVersion(2, 0, 5, 0x44)
    v = parse_report(decode_hex_report(snp_virtee[0]))
    assert v.version == 2 and not v.debug and v.cpuid_fam_id is None
    assert v.measurement.hex().startswith("7a1e5c266c0108db")


@pytest.mark.parametrize("which", [0, 1])
def test_real_reports_verify_with_pinned_and_supplied_chain(snp_gsg, snp_virtee, which):
    raw, vcek = _both(snp_gsg, snp_virtee)[which]
    report = parse_report(raw)
    for blobs in ([vcek], [vcek, read(MILAN_CHAIN)]):
        res = verify_report(report, load_certificates(blobs), now=NOW)
        assert res.product is Product.MILAN and res.key_kind == "vcek"
        assert [c.field for c in res.checks] == [
            "cert_chain",
            "cert_validity",
            "crl",
            "product",
            "report_signature",
            "vcek_hwid",
            "leaf_tcb",
        ]
        assert all(c.ok for c in res.checks)


@pytest.mark.parametrize("which", [0, 1])
def test_any_sampled_bit_flip_in_report_fails(snp_gsg, snp_virtee, which):
    raw, vcek = _both(snp_gsg, snp_virtee)[which]
    certs = load_certificates([vcek])
    # signed region [0, 0x2A0) and the r,s fields
    for bit in sample_bits(0x330, 40, seed=which):
        bad = flip(raw, bit)
        with pytest.raises((ParseError, VerificationError)):
            verify_report(parse_report(bad), certs, now=NOW)


def test_vcek_of_another_chip_fails(snp_gsg, snp_virtee):
    with pytest.raises(VerificationError, match="report_signature"):
        verify_report(parse_report(snp_gsg[0]), load_certificates([snp_virtee[1]]), now=NOW)


@pytest.mark.parametrize("chain", [GENOA_CHAIN, TURIN_CHAIN])
def test_chain_of_another_product_line_fails(snp_gsg, chain):
    certs = load_certificates([snp_gsg[1], read(chain)])
    with pytest.raises(VerificationError, match="cert_chain") as exc:
        verify_report(parse_report(snp_gsg[0]), certs, now=NOW)
    assert exc.value.checks[-1].field == "cert_chain" and not exc.value.checks[-1].ok


def test_expected_product_mismatch_fails(snp_gsg):
    with pytest.raises(VerificationError, match="cert_chain"):
        verify_report(
            parse_report(snp_gsg[0]), load_certificates([snp_gsg[1]]), product=Product.GENOA, now=NOW
        )


def test_unpinned_ark_refused(snp_gsg):
    # a self-made "ARK-Milan": right name, wrong key
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ARK-Milan")])
    fake = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2020, 1, 1))
        .not_valid_after(dt.datetime(2040, 1, 1))
        .sign(key, hashes.SHA384(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))
    )
    certs = load_certificates([snp_gsg[1]]) + [fake]
    with pytest.raises(VerificationError, match="not a pinned AMD root"):
        verify_report(parse_report(snp_gsg[0]), certs, now=NOW)


def test_missing_vcek_and_expired_chain(snp_gsg):
    import datetime as dt

    report = parse_report(snp_gsg[0])
    with pytest.raises(VerificationError, match="no VCEK"):
        verify_report(report, load_certificates([read(MILAN_CHAIN)]), now=NOW)
    with pytest.raises(VerificationError, match="cert_validity"):
        verify_report(report, load_certificates([snp_gsg[1]]), now=dt.datetime(2060, 1, 1, tzinfo=dt.UTC))


def test_length_and_trailing_bytes_refused(snp_gsg, snp_virtee):
    raw = snp_gsg[0]
    with pytest.raises(ParseError, match="truncated"):
        parse_report(raw[:-1])
    with pytest.raises(ParseError, match="trailing"):
        parse_report(raw + b"\0")
    with pytest.raises(ParseError, match="trailing"):
        parse_report(raw + b"garbage")
    with pytest.raises(ParseError, match="non-hex"):
        decode_hex_report(snp_virtee[0] + b"zz")
    with pytest.raises(ParseError, match="truncated"):
        parse_report(decode_hex_report(snp_virtee[0][:-2]))
    with pytest.raises(ParseError, match="version 4"):
        parse_report(struct.pack("<I", 4) + raw[4:])
    with pytest.raises(ParseError, match="reserved"):
        parse_report(raw[:0x4C] + b"\x01" + raw[0x4D:])


def test_versions_3_and_5_layout():
    base = bytearray(REPORT_SIZE)
    struct.pack_into("<I", base, 0x34, 1)
    v3 = bytearray(base)
    struct.pack_into("<I", v3, 0, 3)
    v3[0x188:0x18B] = bytes([0x1A, 0x02, 0x01])
    r3 = parse_report(bytes(v3))
    assert (r3.cpuid_fam_id, r3.cpuid_mod_id, r3.cpuid_step) == (0x1A, 2, 1)
    assert r3.product_hint() is Product.TURIN and r3.launch_mit_vector is None
    v5 = bytearray(v3)
    struct.pack_into("<I", v5, 0, 5)
    struct.pack_into("<QQ", v5, 0x1F8, 7, 9)
    r5 = parse_report(bytes(v5))
    assert (r5.launch_mit_vector, r5.current_mit_vector) == (7, 9)
    with pytest.raises(ParseError, match="reserved"):
        parse_report(bytes(v3[:0x1F8]) + b"\x01" + bytes(v3[0x1F9:]))  # mitigation vector in a v3


def test_turin_tcb_layout_and_vcek_extensions():
    raw = bytes([1, 2, 3, 4, 0, 0, 0, 0x55])  # fmc, bootloader, tee, snp, ..., microcode
    assert TcbVersion.decode(int.from_bytes(raw, "little"), Product.TURIN) == TcbVersion(2, 3, 4, 0x55, fmc=1)
    assert TcbVersion.decode(int.from_bytes(raw, "little"), Product.MILAN) == TcbVersion(1, 2, 0, 0x55)
    turin_vcek = load_certificates([read(SNP / "virtee-sev" / "vcek_turin.der")])[0]
    assert leaf_tcb(turin_vcek, Product.TURIN) == TcbVersion(0, 0, 0, 9, fmc=0)


def _table(entries: list[tuple[uuid.UUID, bytes]], le: bool = False, pad: bytes = b"") -> bytes:
    head = (len(entries) + 1) * 24
    out, blobs, off = b"", b"", head
    for guid, blob in entries:
        out += (guid.bytes_le if le else guid.bytes) + struct.pack("<II", off, len(blob))
        blobs += blob
        off += len(blob)
    return out + bytes(24) + blobs + pad


def test_extended_report_cert_table(snp_gsg):
    from cryptography.hazmat.primitives.serialization import Encoding

    ask, ark = x509.load_pem_x509_certificates(read(MILAN_CHAIN))
    der = [snp_gsg[1], ask.public_bytes(Encoding.DER), ark.public_bytes(Encoding.DER)]
    for le in (False, True):
        table = _table(list(zip([GUID_VCEK, GUID_ASK, GUID_ARK], der, strict=True)), le=le, pad=bytes(100))
        assert parse_cert_table(table) == {"vcek": der[0], "ask": der[1], "ark": der[2]}
        res = verify_report(parse_report(snp_gsg[0]), load_certificates([table]), now=NOW)
        assert res.product is Product.MILAN
    good = _table([(GUID_VCEK, der[0])])
    with pytest.raises(ParseError, match="non-zero"):
        parse_cert_table(good + b"\x01")
    with pytest.raises(ParseError, match="truncated"):
        parse_cert_table(good[:20])
    with pytest.raises(ParseError, match="outside"):
        parse_cert_table(good[: len(good) - 10])


def test_validation_reports_every_failed_field(snp_gsg):
    report = parse_report(snp_gsg[0])
    tcb = TcbVersion.decode(report.reported_tcb, Product.MILAN)
    opts = ValidationOptions(
        measurements=["00" * 48], min_tcb={"snp": 9, "bootloader": 2}, vmpl=1, host_data="ff", rtmrs={0: "aa"}
    )
    with pytest.raises(ValidationError) as exc:
        validate_snp(report, tcb, opts, expected_report_data=bytes(64))
    failed = [c.field for c in exc.value.failures]
    assert failed == ["measurement", "debug", "min_tcb.snp", "report_data", "vmpl", "host_data"]
    assert "min_tcb.bootloader" not in failed and "rtmrs" in [c.field for c in exc.value.checks]


def test_validation_accepts_matching_options(snp_gsg, snp_virtee):
    report = parse_report(decode_hex_report(snp_virtee[0]))
    tcb = TcbVersion.decode(report.reported_tcb, Product.MILAN)
    opts = ValidationOptions(
        measurements=[report.measurement.hex()], min_tcb={"snp": 8, "microcode": 115}, vmpl=0
    )
    checks = validate_snp(report, tcb, opts, expected_report_data=report.report_data)
    assert all(c.ok for c in checks) and {"measurement", "debug", "min_tcb.snp", "vmpl"} <= {
        c.field for c in checks
    }
    # Turin-only fmc minimum on a Milan report fails rather than passing silently
    with pytest.raises(ValidationError, match="min_tcb.fmc"):
        validate_snp(report, tcb, ValidationOptions(min_tcb={"fmc": 0}))
    # debug guest passes only when allowed
    gsg = parse_report(snp_gsg[0])
    validate_snp(
        gsg, TcbVersion.decode(gsg.reported_tcb, Product.MILAN), ValidationOptions(debug_allowed=True)
    )
    with pytest.raises(ValidationError, match="debug"):
        validate_snp(dataclasses.replace(gsg), TcbVersion(2, 0, 5, 0x44), ValidationOptions())

"""SEV-SNP revocation: CRLs by the chain's ARK, from files only.

No AMD-signed CRL pairs with the vectors (and AMD's ARK cannot be signed with here), so the
revocation/staleness logic is tested on a synthetic ARK -> ASK chain through ``check_crls``.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from attestation.errors import VerificationError
from attestation.evidence import verify_and_validate
from attestation.options import VerifyOptions
from attestation.snp import decode_hex_report, parse_report
from attestation.snp_verify import check_crls, load_certificates, verify_report

from .conftest import NOW, SNP, read

MILAN_CHAIN = SNP / "amd-kds-certs" / "ask_ark_milan.pem"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
DAY = dt.timedelta(days=1)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey, serial: int):
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - 365 * DAY)
        .not_valid_after(NOW + 365 * DAY)
        .sign(signer, hashes.SHA384(), rsa_padding=PSS)
    )


def _crl(issuer: x509.Name, signer: rsa.RSAPrivateKey, revoked: list[int], next_update: dt.datetime):
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(NOW - 10 * DAY)
        .next_update(next_update)
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - 20 * DAY).build()
        )
    return b.sign(signer, hashes.SHA384(), rsa_padding=PSS)


@pytest.fixture(scope="module")
def chain():
    ark_key, ask_key = _key(), _key()
    ark = _cert("ARK-Test", ark_key, _name("ARK-Test"), ark_key, 1)
    ask = _cert("SEV-Test", ask_key, ark.subject, ark_key, 0x1234ABCD)
    return ark_key, ark, ask


@pytest.fixture(scope="module")
def milan():
    report = parse_report(decode_hex_report(read(SNP / "virtee-sev" / "report_milan.hex")))
    certs = load_certificates([read(SNP / "virtee-sev" / "vcek_milan.der"), read(MILAN_CHAIN)])
    return report, certs


def test_real_milan_report_without_crl_says_not_checked(milan):
    res = verify_report(milan[0], milan[1], now=NOW)
    crl = [c for c in res.checks if c.field == "crl"]
    assert crl and crl[0].ok and "revocation not checked" in crl[0].detail


def test_crl_signed_by_another_key_with_milan_ark_name_is_refused(milan):
    ark = next(c for c in milan[1] if "ARK-Milan" in c.subject.rfc4514_string())
    forged = _crl(ark.subject, _key(), [], NOW + 30 * DAY)
    for blob in (
        forged.public_bytes(serialization.Encoding.PEM),
        forged.public_bytes(serialization.Encoding.DER),
    ):
        with pytest.raises(VerificationError, match="crl: CRL is not signed by the chain's ARK-Milan") as exc:
            verify_report(milan[0], milan[1], crls=[blob], now=NOW)
        assert exc.value.checks[-1].field == "crl" and not exc.value.checks[-1].ok


def test_evidence_passes_crls_through_and_refuses(milan):
    ark = next(c for c in milan[1] if "ARK-Milan" in c.subject.rfc4514_string())
    other = _crl(_name("ARK-Other"), _key(), [], NOW + 30 * DAY)
    blobs = [read(SNP / "virtee-sev" / "vcek_milan.der"), read(MILAN_CHAIN)]
    data = read(SNP / "virtee-sev" / "report_milan.hex")
    ok = verify_and_validate(data, VerifyOptions(certs=blobs, now=NOW))
    assert ok.verified and any(c.field == "crl" and c.ok for c in ok.checked)
    for crl in (other, _crl(ark.subject, _key(), [], NOW + 30 * DAY)):
        res = verify_and_validate(
            data, VerifyOptions(certs=blobs, crls=[crl.public_bytes(serialization.Encoding.DER)], now=NOW)
        )
        assert not res.verified and res.decision == "refuse"
        assert any(e.startswith("crl: ") for e in res.errors), res.errors


def test_revoked_ask_fails_naming_its_serial(chain):
    ark_key, ark, ask = chain
    crl = _crl(ark.subject, ark_key, [7, ask.serial_number], NOW + 30 * DAY)
    with pytest.raises(VerificationError, match=r"SEV-Test \(serial 0x1234abcd\) is revoked"):
        check_crls([crl], ark, [ask], NOW)


def test_stale_crl_fails(chain):
    ark_key, ark, ask = chain
    crl = _crl(ark.subject, ark_key, [], NOW - DAY)
    with pytest.raises(VerificationError, match="stale CRL"):
        check_crls([crl], ark, [ask], NOW)


def test_valid_crl_without_the_serial_passes(chain):
    ark_key, ark, ask = chain
    crl = _crl(ark.subject, ark_key, [7, 8], NOW + 30 * DAY)
    detail = check_crls([crl], ark, [ask], NOW)
    assert "1 CRL(s) by ARK-Test" in detail and "SEV-Test not revoked" in detail
    assert check_crls([], ark, [ask], NOW) == "no CRL supplied: revocation not checked"


def test_crl_from_other_issuer_or_bad_signature_fails(chain):
    ark_key, ark, ask = chain
    with pytest.raises(VerificationError, match="CRL issued by 'ARK-Other', not by the chain's ARK-Test"):
        check_crls([_crl(_name("ARK-Other"), ark_key, [], NOW + DAY)], ark, [ask], NOW)
    with pytest.raises(VerificationError, match="not signed by the chain's ARK-Test"):
        check_crls([_crl(ark.subject, _key(), [], NOW + DAY)], ark, [ask], NOW)
    # PKCS#1 v1.5 is not how AMD's ARK signs: refused, not accepted under another padding
    v15 = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ark.subject)
        .last_update(NOW - DAY)
        .next_update(NOW + DAY)
        .sign(ark_key, hashes.SHA384())
    )
    with pytest.raises(VerificationError, match="not signed with RSASSA-PSS"):
        check_crls([v15], ark, [ask], NOW)


def test_crl_applies_only_to_its_issuers_certificates(chain):
    ark_key, ark, ask = chain
    leaf_key = _key()
    leaf = _cert("SEV-VCEK", leaf_key, ask.subject, leaf_key, ask.serial_number)  # issued by the ASK
    crl = _crl(ark.subject, ark_key, [ask.serial_number], NOW + DAY)
    with pytest.raises(VerificationError, match="SEV-Test .* is revoked"):
        check_crls([crl], ark, [ask, leaf], NOW)
    # same serial, but under the ASK: the ARK's CRL does not speak for it
    detail = check_crls([_crl(ark.subject, ark_key, [9], NOW + DAY)], ark, [ask, leaf], NOW)
    assert "SEV-Test not revoked" in detail and "SEV-VCEK" not in detail
    check_crls([crl], ark, [leaf], NOW)


def test_crl_carried_in_the_extended_report_is_checked(snp_gsg):
    """The host may put the ARK's CRL in the extended report's certificate table: it is used, so a
    forged one there is refused like one from a file."""
    import struct

    from attestation.snp import GUID_CRL, GUID_VCEK

    raw, vcek = snp_gsg
    forged = _crl(_name("ARK-Milan"), _key(), [], NOW + 30 * DAY).public_bytes(serialization.Encoding.DER)
    header = 3 * 24
    table = (
        GUID_VCEK.bytes
        + struct.pack("<II", header, len(vcek))
        + GUID_CRL.bytes
        + struct.pack("<II", header + len(vcek), len(forged))
        + bytes(24)
        + vcek
        + forged
    )
    res = verify_and_validate(raw + table, VerifyOptions(now=NOW))
    assert res.decision == "refuse" and any(e.startswith("crl: ") for e in res.errors), res.errors

"""Intel TDX *verification*: is this quote authentic?

PCK leaf -> PCK Platform/Processor CA -> pinned Intel SGX Root CA (ECDSA); the QE report signed by
the PCK key; the QE report data binding the attestation key (SHA-256(key || QE auth data) || 32
zeros); the quote signed by that attestation key. Implemented with ``cryptography`` directly so that
authenticity never depends on collateral; TCB status from Intel's collateral is a separate, optional
step (:mod:`attestation.tdx_collateral`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.errors import Check, ParseError, VerificationError
from attestation.roots import fingerprint, intel_sgx_root
from attestation.tdx import INTEL_QE_VENDOR_ID, TdxQuote

#: Intel's TD Quoting Enclave identity (MRSIGNER, ISVPRODID), as in Intel's QE identity collateral
#: ("TD_QE"). Pinned so that, even without collateral, only Intel's TD QE can vouch for a TD.
INTEL_TD_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
INTEL_TD_QE_ISVPRODID = 2


@dataclass
class TdxVerification:
    pck_chain: list[x509.Certificate]
    checks: list[Check] = field(default_factory=list)


def _raw_sig(sig: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def _p256(cert_or_raw: x509.Certificate | bytes) -> ec.EllipticCurvePublicKey:
    if isinstance(cert_or_raw, bytes):
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + cert_or_raw)
    key = cert_or_raw.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VerificationError("PCK certificate does not hold an ECDSA P-256 key")
    return key


def verify_quote(quote: TdxQuote, *, now: dt.datetime | None = None) -> TdxVerification:
    """:func:`_verify_quote`, with a PCK chain certificate that cryptography cannot use (an unknown
    curve or algorithm, a malformed field read lazily) reported as a failed chain, not an exception."""
    try:
        return _verify_quote(quote, now=now)
    except (
        ValueError,
        TypeError,
        x509.InvalidVersion,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
        UnsupportedAlgorithm,
    ) as exc:
        detail = f"a PCK chain certificate cannot be used: {type(exc).__name__}: {exc}"
        raise VerificationError(f"pck_chain: {detail}", [Check("pck_chain", False, detail)]) from None


def _verify_quote(quote: TdxQuote, *, now: dt.datetime | None = None) -> TdxVerification:
    now = now or dt.datetime.now(dt.UTC)
    checks: list[Check] = []

    def fail(name: str, detail: str) -> VerificationError:
        checks.append(Check(name, False, detail))
        return VerificationError(f"{name}: {detail}", checks)

    try:
        chain = x509.load_pem_x509_certificates(quote.pck_chain_pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise ParseError(f"TDX PCK certificate chain is not PEM: {exc}") from exc
    if len(chain) != 3:
        raise fail("pck_chain", f"expected PCK, intermediate CA and root (3 certificates), got {len(chain)}")
    pck, inter, root = chain
    pinned = intel_sgx_root()
    if fingerprint(root) != fingerprint(pinned):
        raise fail(
            "pck_chain",
            f"chain root (sha256 {fingerprint(root)[:16]}...) is not the pinned Intel SGX Root CA",
        )
    try:
        for child, parent in ((pck, inter), (inter, pinned), (pinned, pinned)):
            child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise fail(
            "pck_chain", f"PCK chain does not verify to the Intel SGX Root CA: {exc or 'bad signature'}"
        ) from None
    if _is_ca(pck):
        raise fail("pck_chain", "PCK leaf is a CA certificate")
    checks.append(Check("pck_chain", True, "PCK <- intermediate CA <- pinned Intel SGX Root CA"))
    for c in (pck, inter, pinned):
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            raise fail(
                "cert_validity",
                f"{c.subject.rfc4514_string()} valid {c.not_valid_before_utc:%Y-%m-%d}.."
                f"{c.not_valid_after_utc:%Y-%m-%d}, not at {now:%Y-%m-%dT%H:%M:%SZ}",
            )
    checks.append(Check("cert_validity", True, f"PCK chain valid at {now:%Y-%m-%dT%H:%M:%SZ}"))

    try:
        _p256(pck).verify(_raw_sig(quote.qe_report_signature), quote.qe_report.raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise fail("qe_report_signature", "QE report is not signed by the PCK key") from None
    checks.append(Check("qe_report_signature", True, "QE report signed by the PCK key"))

    qe = quote.qe_report
    if quote.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise fail("qe_identity", f"QE vendor ID {quote.qe_vendor_id.hex()} is not Intel's")
    if not hmac.compare_digest(qe.mr_signer, INTEL_TD_QE_MRSIGNER) or qe.isv_prod_id != INTEL_TD_QE_ISVPRODID:
        raise fail(
            "qe_identity",
            f"QE (MRSIGNER {qe.mr_signer.hex()[:16]}..., ISVPRODID {qe.isv_prod_id}) is not Intel's TD QE",
        )
    checks.append(
        Check("qe_identity", True, f"Intel TD QE (ISVSVN {qe.isv_svn}; SVN policy needs collateral)")
    )

    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(expected, quote.qe_report.report_data):
        raise fail(
            "attestation_key_binding", "QE report data != SHA-256(attestation key || QE auth data) || 0s"
        )
    checks.append(Check("attestation_key_binding", True, "QE report data binds the attestation key"))

    try:
        ak = _p256(quote.attestation_key)
    except ValueError:
        raise fail("quote_signature", "attestation key is not a P-256 point") from None
    try:
        ak.verify(_raw_sig(quote.signature), quote.signed_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise fail(
            "quote_signature", "quote header and TD report are not signed by the attestation key"
        ) from None
    checks.append(
        Check("quote_signature", True, "ECDSA P-256 over header and TD report by the attestation key")
    )
    return TdxVerification(pck_chain=[pck, inter, pinned], checks=checks)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False

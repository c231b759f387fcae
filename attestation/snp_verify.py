"""AMD SEV-SNP *verification*: is this report authentic?

ARK (pinned) -> ASK/ASVK -> VCEK/VLEK, each link RSASSA-PSS SHA-384; then the report's ECDSA P-384
signature by the VCEK/VLEK; then the VCEK's AMD extensions (hwID, TCB SPLs) against the report, since
a valid VCEK of another chip or another TCB must not vouch for this report. No field is checked
against policy here: that is :mod:`attestation.validate`.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from attestation.errors import CertificateDataError, Check, ParseError, VerificationError
from attestation.roots import amd_ark_product, amd_chains, fingerprint
from attestation.snp import Product, SigningKey, SnpReport, TcbVersion, parse_cert_table

_AMD = "1.3.6.1.4.1.3704.1."
OID_PRODUCT_NAME = x509.ObjectIdentifier(_AMD + "2")
OID_HWID = x509.ObjectIdentifier(_AMD + "4")
OID_TCB = {
    "bootloader": x509.ObjectIdentifier(_AMD + "3.1"),
    "tee": x509.ObjectIdentifier(_AMD + "3.2"),
    "snp": x509.ObjectIdentifier(_AMD + "3.3"),
    "microcode": x509.ObjectIdentifier(_AMD + "3.8"),
    "fmc": x509.ObjectIdentifier(_AMD + "3.9"),
}


@dataclass
class SnpVerification:
    product: Product
    key_kind: str
    leaf: x509.Certificate
    tcb: TcbVersion
    checks: list[Check] = field(default_factory=list)


#: what cryptography raises for a certificate it cannot read (some fields are parsed lazily, on use)
_CERT_ERRORS = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)


def _parsed(cert: x509.Certificate) -> x509.Certificate:
    """``cert`` once the fields every check reads parse: cryptography reads the names and the
    extensions only when first used, so a malformed one would otherwise fail deep inside a check."""
    _ = cert.subject, cert.issuer, cert.extensions, cert.not_valid_before_utc, cert.not_valid_after_utc
    return cert


def load_certificates(blobs: Iterable[bytes], *, what: str = "certificate data") -> list[x509.Certificate]:
    """Certificates from PEM (one or many), DER, or an extended report's GUID certificate table.

    A blob that is none of these raises :class:`CertificateDataError` naming ``what`` and the blob's
    position, so that bad ``--certs`` are never mistaken for bad evidence."""
    out: list[x509.Certificate] = []
    items = list(blobs)
    with warnings.catch_warnings():
        # AMD's VCEKs carry serial number 0, which cryptography loads with a deprecation warning.
        warnings.simplefilter("ignore")
        for i, blob in enumerate(items, 1):
            data = bytes(blob)
            where = f"{what} {i} of {len(items)}" if len(items) > 1 else what
            where += f" ({len(data)} bytes)"
            if data.lstrip().startswith(b"-----BEGIN"):
                try:
                    out.extend(_parsed(c) for c in x509.load_pem_x509_certificates(data))
                except _CERT_ERRORS as exc:
                    msg = f"{where}: PEM that holds no readable certificate ({exc})"
                    raise CertificateDataError(msg) from None
            elif data[:1] == b"\x30":
                try:
                    out.append(_parsed(x509.load_der_x509_certificate(data)))
                except _CERT_ERRORS as exc:
                    raise CertificateDataError(f"{where}: not a DER certificate ({exc})") from None
            else:
                try:
                    table = parse_cert_table(data)
                except ParseError as exc:
                    raise CertificateDataError(
                        f"{where} is not PEM, DER or a SEV-SNP certificate table ({exc})"
                    ) from None
                entries = [v for k, v in table.items() if k != "crl"]
                out.extend(load_certificates(entries, what=f"{where}, certificate"))
    return out


def _name_cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _verify_pss(issuer: x509.Certificate, signed: x509.Certificate | x509.CertificateRevocationList) -> None:
    """One RSASSA-PSS SHA-384 (salt 48) signature by ``issuer``, as AMD's ARK/ASK sign certificates and
    CRLs; raises InvalidSignature or VerificationError."""
    if isinstance(signed, x509.Certificate):
        name, tbs = _cn(signed), signed.tbs_certificate_bytes
    else:
        name, tbs = f"CRL of {_name_cn(signed.issuer)}", signed.tbs_certlist_bytes
    if signed.issuer != issuer.subject:
        raise VerificationError(f"{name} is not issued by {_cn(issuer)}")
    if signed.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise VerificationError(f"{name} is not signed with RSASSA-PSS")
    if not isinstance(signed.signature_hash_algorithm, hashes.SHA384):
        raise VerificationError(f"{name} is not signed with SHA-384")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationError(f"{_cn(issuer)} does not hold an RSA key")
    key.verify(
        signed.signature,
        tbs,
        padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
        hashes.SHA384(),
    )


def load_crls(blobs: Iterable[bytes]) -> list[x509.CertificateRevocationList]:
    """CRLs from PEM or DER (AMD KDS serves ``/vcek/v1/<product>/crl`` as DER)."""
    out: list[x509.CertificateRevocationList] = []
    for blob in blobs:
        data = bytes(blob)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                out.append(x509.load_pem_x509_crl(data))
            else:
                out.append(x509.load_der_x509_crl(data))
        except ValueError as exc:
            raise ParseError(f"cannot read CRL data: {exc}") from exc
    return out


def check_crls(
    crls: Sequence[x509.CertificateRevocationList],
    ark: x509.Certificate,
    certs: Sequence[x509.Certificate],
    now: dt.datetime,
) -> str:
    """Check ``certs`` (ASK/ASVK, VCEK/VLEK) against ``crls``; returns the audit detail.

    Every supplied CRL must be the ARK's, correctly signed and current: a caller that hands over a
    CRL expects revocation to be checked, so a CRL that cannot be used is an error, not a no-op.
    Raises :class:`VerificationError` naming the first problem.
    """
    if not crls:
        return "no CRL supplied: revocation not checked"
    for crl in crls:
        if crl.issuer != ark.subject:
            raise VerificationError(f"CRL issued by {_name_cn(crl.issuer)!r}, not by the chain's {_cn(ark)}")
        try:
            _verify_pss(ark, crl)
        except InvalidSignature:
            raise VerificationError(f"CRL is not signed by the chain's {_cn(ark)}") from None
        next_update = crl.next_update_utc
        if next_update is None or next_update < now:
            when = f"{next_update:%Y-%m-%dT%H:%M:%SZ}" if next_update else "never"
            raise VerificationError(f"stale CRL: next update {when}, before {now:%Y-%m-%dT%H:%M:%SZ}")
        # A CRL speaks only for its issuer's certificates (RFC 5280 5.3): a VCEK (issued by the ASK,
        # serial 0) looked up in the ARK's CRL could collide with an unrelated serial.
        for cert in (c for c in certs if c.issuer == crl.issuer):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # VCEK serial 0
                serial = cert.serial_number
            if crl.get_revoked_certificate_by_serial_number(serial) is not None:
                raise VerificationError(f"{_cn(cert)} (serial {serial:#x}) is revoked by the {_cn(ark)} CRL")
    names = ", ".join(_cn(c) for c in certs if c.issuer == ark.subject) or "no certificate of its issuer"
    return (
        f"{len(crls)} CRL(s) by {_cn(ark)} checked, current at {now:%Y-%m-%dT%H:%M:%SZ}: {names} not revoked"
    )


def _in_validity(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _der_uint(value: bytes) -> int:
    """A DER INTEGER as AMD puts it in extension values; strict, since these bytes gate trust."""
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2 or value[1] > 8:
        raise VerificationError("malformed integer in an AMD certificate extension")
    if value[2] & 0x80:
        raise VerificationError("negative integer in an AMD certificate extension")
    return int.from_bytes(value[2:], "big")


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    val = ext.value
    return val.value if isinstance(val, x509.UnrecognizedExtension) else None


def leaf_tcb(cert: x509.Certificate, product: Product) -> TcbVersion:
    """The TCB SPLs a VCEK/VLEK was issued for (its extensions 1.3.6.1.4.1.3704.1.3.*)."""
    vals: dict[str, int] = {}
    for name, oid in OID_TCB.items():
        raw = _ext(cert, oid)
        if raw is None:
            if name == "fmc" and product is not Product.TURIN:
                continue
            raise VerificationError(f"{_cn(cert)} lacks the TCB extension {name} ({oid.dotted_string})")
        vals[name] = _der_uint(raw)
    return TcbVersion(
        bootloader=vals["bootloader"],
        tee=vals["tee"],
        snp=vals["snp"],
        microcode=vals["microcode"],
        fmc=vals.get("fmc") if product is Product.TURIN else None,
    )


def _candidate_chains(
    supplied: Sequence[x509.Certificate], kind: str, product: Product | None
) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """(intermediate, ARK) pairs to try. Supplied ASK/ARK are used *instead of* the pinned ones, so
    a caller that hands over a chain gets that chain checked, not silently another one."""
    inter_cn = "SEV-VLEK-" if kind == "vlek" else "SEV-"
    arks = [c for c in supplied if _cn(c).startswith("ARK-")]
    inters = [c for c in supplied if _cn(c).startswith(inter_cn) and not _cn(c).startswith("SEV-VCEK")]
    if kind == "vcek":
        inters = [c for c in inters if not _cn(c).startswith("SEV-VLEK")]
    if arks or inters:
        pinned = [ch for ch in amd_chains() if ch.kind == kind and (product is None or ch.product is product)]
        if not arks:
            arks = [ch.ark for ch in pinned]
        if not inters:
            inters = [ch.intermediate for ch in pinned]
        return [(i, a) for i in inters for a in arks]
    return [
        (ch.intermediate, ch.ark)
        for ch in amd_chains()
        if ch.kind == kind and (product is None or ch.product is product)
    ]


def verify_report(
    report: SnpReport,
    certs: Sequence[x509.Certificate] = (),
    *,
    product: Product | None = None,
    crls: Sequence[bytes] = (),
    now: dt.datetime | None = None,
) -> SnpVerification:
    """:func:`_verify_report`, with a certificate whose key or signature algorithm cannot be used (read
    lazily, so only found during the checks) reported as a failed chain, not as an exception."""
    try:
        return _verify_report(report, certs, product=product, crls=crls, now=now)
    except _CERT_ERRORS as exc:
        detail = f"a certificate cannot be used: {type(exc).__name__}: {exc}"
        raise VerificationError(f"cert_chain: {detail}", [Check("cert_chain", False, detail)]) from None


def _verify_report(
    report: SnpReport,
    certs: Sequence[x509.Certificate] = (),
    *,
    product: Product | None = None,
    crls: Sequence[bytes] = (),
    now: dt.datetime | None = None,
) -> SnpVerification:
    """Verify ``report`` with the VCEK/VLEK among ``certs`` (and ASK/ARK there, else the pinned ones).

    ``crls`` (PEM or DER, e.g. AMD KDS's per-product CRL, from a file: nothing is fetched) must each be
    the chain ARK's, validly signed and current; the ASK/ASVK and the VCEK/VLEK must not be on them.

    Raises :class:`VerificationError` (its ``checks`` say how far it got) on the first failure: later
    checks mean nothing once an earlier link is broken.
    """
    now = now or dt.datetime.now(dt.UTC)
    checks: list[Check] = []

    def fail(name: str, detail: str) -> VerificationError:
        checks.append(Check(name, False, detail))
        return VerificationError(f"{name}: {detail}", checks)

    sk = report.signing_key
    if sk not in (SigningKey.VCEK, SigningKey.VLEK):
        raise fail("signing_key", f"report is not signed by a VCEK or VLEK (SIGNING_KEY={int(sk)})")
    kind = "vcek" if sk is SigningKey.VCEK else "vlek"
    leaf_cn = "SEV-VCEK" if kind == "vcek" else "SEV-VLEK"
    leaves = [c for c in certs if _cn(c) == leaf_cn]
    if not leaves:
        raise fail("leaf_cert", f"no {kind.upper()} certificate given (AMD KDS serves it; pass it as a cert)")
    if len(leaves) > 1:
        raise fail("leaf_cert", f"{len(leaves)} {kind.upper()} certificates given; pass exactly one")
    leaf = leaves[0]

    chosen: tuple[x509.Certificate, x509.Certificate] | None = None
    reasons: list[str] = []
    for inter, ark in _candidate_chains(certs, kind, product):
        ark_product = amd_ark_product(ark)
        if ark_product is None:
            reasons.append(f"{_cn(ark)} (sha256 {fingerprint(ark)[:16]}...) is not a pinned AMD root")
            continue
        try:
            _verify_pss(ark, ark)
            _verify_pss(ark, inter)
            _verify_pss(inter, leaf)
        except (InvalidSignature, VerificationError) as exc:
            reasons.append(f"{_cn(leaf)} <- {_cn(inter)} <- {_cn(ark)}: {exc or 'bad signature'}")
            continue
        chosen = (inter, ark)
        break
    if chosen is None:
        raise fail("cert_chain", "; ".join(reasons) or "no ASK/ARK chain to try")
    inter, ark = chosen
    chain_product = amd_ark_product(ark)
    assert chain_product is not None
    checks.append(
        Check("cert_chain", True, f"{leaf_cn} <- {_cn(inter)} <- {_cn(ark)} (pinned {chain_product} root)")
    )
    for c in (leaf, inter, ark):
        if not _in_validity(c, now):
            raise fail(
                "cert_validity",
                f"{_cn(c)} valid {c.not_valid_before_utc:%Y-%m-%d}..{c.not_valid_after_utc:%Y-%m-%d}, "
                f"not at {now:%Y-%m-%dT%H:%M:%SZ}",
            )
    checks.append(Check("cert_validity", True, f"chain valid at {now:%Y-%m-%dT%H:%M:%SZ}"))
    try:
        checks.append(Check("crl", True, check_crls(load_crls(crls), ark, [inter, leaf], now)))
    except (ParseError, VerificationError) as exc:
        raise fail("crl", str(exc)) from None

    hint = report.product_hint()
    if hint is not None and hint is not chain_product:
        raise fail("product", f"report CPUID says {hint}, but the chain is {chain_product}'s")
    if product is not None and product is not chain_product:
        raise fail("product", f"expected {product}, chain is {chain_product}'s")
    checks.append(Check("product", True, str(chain_product)))

    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise fail("report_signature", f"{leaf_cn} does not hold an ECDSA P-384 key")
    try:
        sig = encode_dss_signature(report.signature_r, report.signature_s)
        key.verify(sig, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise fail(
            "report_signature", f"ECDSA P-384 signature over the report does not verify with the {kind}"
        ) from None
    checks.append(Check("report_signature", True, f"ECDSA P-384 SHA-384 by the {kind.upper()}"))

    if kind == "vcek":
        if report.mask_chip_id:
            raise fail("vcek_hwid", "report has MASK_CHIP_ID set: CHIP_ID is zeroed, no VCEK can match")
        hwid = _ext(leaf, OID_HWID)
        if hwid is None:
            raise fail("vcek_hwid", "VCEK lacks the hwID extension")
        n = len(hwid)
        if n not in (8, 64) or hwid != report.chip_id[:n] or any(report.chip_id[n:]):
            raise fail("vcek_hwid", "VCEK hwID does not equal the report's CHIP_ID (a VCEK of another chip)")
        checks.append(Check("vcek_hwid", True, "VCEK hwID equals CHIP_ID"))

    tcb = TcbVersion.decode(report.reported_tcb, chain_product)
    cert_tcb = leaf_tcb(leaf, chain_product)
    if cert_tcb != tcb:
        raise fail("leaf_tcb", f"{kind.upper()} TCB {cert_tcb.as_dict()} != REPORTED_TCB {tcb.as_dict()}")
    checks.append(Check("leaf_tcb", True, f"{kind.upper()} TCB equals REPORTED_TCB {tcb.as_dict()}"))
    return SnpVerification(product=chain_product, key_kind=kind, leaf=leaf, tcb=tcb, checks=checks)

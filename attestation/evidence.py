"""The front door: recognise evidence by content, verify it, validate it, and collect every result.

The type-specific modules raise specific exceptions; here they are gathered into one
:class:`AttestationResult`, because a caller (the CLI, the site agent, an audit log) wants one
decision with all its reasons, not the first exception.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from attestation import devtee, snp, snp_verify, tdx, tdx_verify, validate
from attestation.errors import (
    AttestationError,
    CertificateDataError,
    Check,
    InsecureDevTeeRefused,
    OptionsError,
    ParseError,
    ValidationError,
    VerificationError,
)
from attestation.options import ValidationOptions, VerifyOptions

EvidenceKind = Literal["sev-snp", "tdx", "dev-tee"]
_HEXTEXT = re.compile(rb"^\s*[0-9a-fA-F\s]+$")


def _snp_binary_header(d: bytes) -> bool:
    if len(d) < 0x38:
        return False
    version, algo = struct.unpack_from("<I", d, 0)[0], struct.unpack_from("<I", d, 0x34)[0]
    return version in snp.SUPPORTED_VERSIONS and algo == snp.SIG_ALGO_ECDSA_P384_SHA384


def detect(data: bytes) -> EvidenceKind:
    """The evidence type, from content alone; raises :class:`ParseError` if it is none of them.

    Detection looks at the structure's fixed header fields, not its length, so that truncated or
    padded evidence is recognised and then refused by its parser with a precise message.
    """
    d = bytes(data)
    if devtee.looks_like_dev_evidence(d.lstrip()):
        return "dev-tee"
    if len(d) >= 8:
        version, akt, tee_type = struct.unpack_from("<HHI", d, 0)
        if version in (4, 5) and akt == tdx.ATT_KEY_ECDSA_P256 and tee_type == tdx.TEE_TYPE_TDX:
            return "tdx"
    if _snp_binary_header(d):
        return "sev-snp"
    if d and len(d) <= 4 * snp.REPORT_SIZE and _HEXTEXT.match(d):
        return "sev-snp"
    raise ParseError(
        "unrecognised evidence: not a SEV-SNP report (raw or hex), a TDX v4/v5 quote, or dev-TEE evidence"
    )


@dataclass
class AttestationResult:
    type: str
    verified: bool = False
    measurement: str = ""
    report_data: str = ""
    errors: list[str] = field(default_factory=list)
    checked: list[Check] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def decision(self) -> Literal["accept", "refuse"]:
        return "accept" if self.verified and not self.errors else "refuse"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "verified": self.verified,
            "measurement": self.measurement,
            "report_data": self.report_data,
            "errors": list(self.errors),
            "decision": self.decision,
            "checked": [{"field": c.field, "ok": c.ok, "detail": c.detail} for c in self.checked],
            "details": dict(self.details),
        }


def _record(result: AttestationResult, exc: AttestationError) -> None:
    if isinstance(exc, ValidationError):
        result.checked.extend(exc.checks)
        result.errors.extend(f"{c.field}: {c.detail}" for c in exc.failures)
    elif isinstance(exc, VerificationError):
        result.checked.extend(exc.checks)
        result.errors.append(str(exc))
    else:
        kind = {
            ParseError: "parse",
            CertificateDataError: "certificates",
            InsecureDevTeeRefused: "insecure_dev_tee",
            OptionsError: "options",
        }
        result.errors.append(f"{kind.get(type(exc), 'error')}: {exc}")


def verify_and_validate(
    data: bytes,
    verify: VerifyOptions | None = None,
    options: ValidationOptions | None = None,
    *,
    expected_report_data: bytes | None = None,
    nonce: bytes | None = None,
) -> AttestationResult:
    """Verify authenticity always (as ``verify`` says); validate fields when ``options`` or
    ``expected_report_data`` is given.

    ``expected_report_data`` is this call's challenge (a nonce or key binding, at most 64 bytes,
    zero-padded; ``nonce`` is an alias) and takes precedence over ``options.report_data``. Never
    raises for bad evidence: every failure is in ``errors`` and the decision is ``refuse``.
    """
    vo = verify or VerifyOptions()
    certs, crls, collateral_dir, now = vo.certs, vo.crls, vo.collateral_dir, vo.now
    allow_insecure_dev_tee = vo.allow_insecure_dev_tee
    try:
        kind: str = detect(data)
    except ParseError as exc:
        result = AttestationResult(type="unknown")
        _record(result, exc)
        return result
    result = AttestationResult(type=kind)
    if nonce is not None:
        if expected_report_data is not None and bytes(nonce) != bytes(expected_report_data):
            result.errors.append("options: nonce and expected_report_data differ; pass one")
            return result
        expected_report_data = nonce
    if collateral_dir is not None and kind != "tdx":
        result.checked.append(
            Check("collateral", True, f"skipped: collateral is only used for TDX, not {kind}")
        )
    try:
        expected = (
            validate.expected_binding(expected_report_data) if expected_report_data is not None else None
        )
        if expected is None and options is not None and options.report_data is not None:
            expected = validate.expected_binding(options.report_data)
    except ValueError as exc:
        result.errors.append(f"options: {exc}")
        return result
    if options is not None and options.types is not None and kind not in options.types:
        result.checked.append(
            Check("type", False, f"{kind} is not an accepted type ({', '.join(options.types)})")
        )
        result.errors.append(f"type: {kind} is not an accepted evidence type")
    opts = options or ValidationOptions()
    do_validate = options is not None or expected is not None
    try:
        if kind == "sev-snp":
            _snp(result, data, certs, crls, opts, expected, do_validate, now)
        elif kind == "tdx":
            _tdx(result, data, collateral_dir, opts, expected, do_validate, now)
        else:
            _dev(result, data, certs, opts, expected, do_validate, allow_insecure_dev_tee, now)
    except AttestationError as exc:
        _record(result, exc)
    return result


def _snp(
    result: AttestationResult,
    data: bytes,
    certs: Sequence[bytes],
    crls: Sequence[bytes],
    opts: ValidationOptions,
    expected: bytes | None,
    do_validate: bool,
    now: dt.datetime | None,
) -> None:
    raw = data if _snp_binary_header(data) else snp.decode_hex_report(data)
    raw, table = snp.split_extended_report(raw)
    report = snp.parse_report(raw)
    carried_certs: list[Any] = []
    if table is not None:
        carried_certs = snp_verify.load_certificates([table], what="the evidence's certificate table")
        carried = snp.parse_cert_table(table).get("crl")
        if carried is not None:  # a CRL the host put in the extended report counts like one from a file
            crls = [*crls, carried]
    result.measurement, result.report_data = report.measurement.hex(), report.report_data.hex()
    result.details.update(
        version=report.version,
        policy=hex(report.policy),
        vmpl=report.vmpl,
        debug=report.debug,
        chip_id=report.chip_id.hex(),
    )
    given = snp_verify.load_certificates(certs, what="certificate file")
    ver = snp_verify.verify_report(report, [*carried_certs, *given], crls=crls, now=now)
    result.checked.extend(ver.checks)
    result.verified = True
    result.details.update(product=str(ver.product), signing_key=ver.key_kind, reported_tcb=ver.tcb.as_dict())
    if do_validate:
        result.checked.extend(validate.validate_snp(report, ver.tcb, opts, expected))


def _tdx(
    result: AttestationResult,
    data: bytes,
    collateral_dir: str | Path | None,
    opts: ValidationOptions,
    expected: bytes | None,
    do_validate: bool,
    now: dt.datetime | None,
) -> None:
    from attestation import tdx_collateral

    quote = tdx.parse_quote(data)
    body = quote.body
    result.measurement, result.report_data = body.mr_td.hex(), body.report_data.hex()
    result.details.update(
        version=quote.version,
        debug=body.debug,
        tee_tcb_svn=body.tee_tcb_svn.hex(),
        mr_seam=body.mr_seam.hex(),
        rtmrs=[r.hex() for r in body.rtmrs],
        td_attributes=body.td_attributes.hex(),
    )
    ver = tdx_verify.verify_quote(quote, now=now)
    result.checked.extend(ver.checks)
    if collateral_dir is not None:
        coll, check = tdx_collateral.evaluate_collateral(
            quote.raw[: len(quote.raw) - len(quote.trailing)],
            collateral_dir,
            now=now,
            accepted=opts.tcb_statuses,
        )
        result.checked.append(check)
        result.details.update(tcb_status=coll.status, advisory_ids=coll.advisory_ids)
    result.verified = True
    if do_validate:
        result.checked.extend(validate.validate_tdx(quote, opts, expected))


def _dev(
    result: AttestationResult,
    data: bytes,
    certs: Sequence[bytes],
    opts: ValidationOptions,
    expected: bytes | None,
    do_validate: bool,
    allow: bool,
    now: dt.datetime | None,
) -> None:
    ev = devtee.parse_dev_evidence(data)
    result.measurement, result.report_data = ev.measurement.hex(), ev.report_data.hex()
    result.details.update(debug=ev.debug, tcb=ev.tcb, timestamp=ev.timestamp, insecure=True)
    keys = devtee.trusted_keys_from_pem(certs)  # CertificateDataError: "certificates: ..."
    ver = devtee.verify_dev_evidence(ev, allow_insecure_dev_tee=allow, trusted_keys=keys)
    result.checked.extend(ver.checks)
    result.verified = True
    if do_validate:
        result.checked.extend(validate.validate_dev(ev, opts, expected, now))

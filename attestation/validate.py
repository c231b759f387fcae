"""*Validation*: authentic evidence checked against :class:`ValidationOptions`.

Each function checks every option that applies and raises :class:`ValidationError` carrying *all*
failed fields, so an operator sees the whole picture at once. Call only after verification: fields
of unverified evidence mean nothing.
"""

from __future__ import annotations

import datetime as dt
import hmac

from attestation.devtee import DevEvidence
from attestation.errors import Check, ValidationError
from attestation.options import ValidationOptions
from attestation.snp import SnpReport, TcbVersion
from attestation.tdx import TdxQuote

NA = "not applicable to this evidence type"


def expected_binding(value: bytes | str) -> bytes:
    """The 64-byte REPORT_DATA expected for a binding; shorter values are right-padded with zeros."""
    raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    if len(raw) > 64:
        raise ValueError("expected report data is longer than 64 bytes")
    return raw.ljust(64, b"\0")


def _allow_list(field: str, actual: bytes, allowed: list[str] | None) -> Check | None:
    if allowed is None:
        return None
    ok = any(hmac.compare_digest(actual, bytes.fromhex(a)) for a in allowed)
    detail = f"{actual.hex()} {'is' if ok else 'is not'} in the allow-list ({len(allowed)} entries)"
    return Check(field, ok, detail)


def _report_data(actual: bytes, expected: bytes | None) -> Check | None:
    if expected is None:
        return None
    ok = hmac.compare_digest(actual, expected)
    return Check(
        "report_data",
        ok,
        "equals the expected binding" if ok else f"{actual.hex()} != expected {expected.hex()}",
    )


def _debug(debug: bool, allowed: bool, where: str) -> Check:
    if debug and not allowed:
        return Check("debug", False, f"debug is enabled ({where}) and the options do not allow it")
    return Check("debug", True, f"debug {'enabled (allowed)' if debug else 'disabled'}")


def _min_tcb(tcb: dict[str, int], opts: ValidationOptions) -> list[Check]:
    if opts.min_tcb is None:
        return []
    out = []
    for comp, minimum in opts.min_tcb.items():
        have = tcb.get(comp)
        if have is None:
            out.append(
                Check(f"min_tcb.{comp}", False, f"evidence has no {comp} component (minimum {minimum})")
            )
        else:
            ok = have >= minimum
            out.append(Check(f"min_tcb.{comp}", ok, f"{have} {'>=' if ok else '<'} minimum {minimum}"))
    return out


def _finish(checks: list[Check | None]) -> list[Check]:
    done = [c for c in checks if c is not None]
    if any(not c.ok for c in done):
        raise ValidationError([c for c in done if not c.ok], done)
    return done


def _skip(opts: ValidationOptions, names: list[str]) -> list[Check | None]:
    return [Check(n, True, f"skipped: {NA}") for n in names if getattr(opts, n) is not None]


def validate_snp(
    report: SnpReport, tcb: TcbVersion, opts: ValidationOptions, expected_report_data: bytes | None = None
) -> list[Check]:
    """``tcb`` is REPORTED_TCB decoded for the verified product (Turin's layout differs)."""
    checks: list[Check | None] = [
        _allow_list("measurement", report.measurement, opts.measurements),
        _debug(report.debug, opts.debug_allowed, "guest policy bit 19"),
        *_min_tcb(tcb.as_dict(), opts),
        _report_data(report.report_data, expected_report_data),
    ]
    if opts.vmpl is not None:
        ok = report.vmpl == opts.vmpl
        checks.append(Check("vmpl", ok, f"VMPL {report.vmpl}{'' if ok else f', expected {opts.vmpl}'}"))
    if opts.host_data is not None:
        want = bytes.fromhex(opts.host_data).ljust(32, b"\0")
        ok = hmac.compare_digest(report.host_data, want)
        checks.append(
            Check("host_data", ok, "matches" if ok else f"{report.host_data.hex()} != {want.hex()}")
        )
    checks.append(_allow_list("id_key_digest", report.id_key_digest, opts.id_key_digests))
    if opts.min_guest_svn is not None:
        ok = report.guest_svn >= opts.min_guest_svn
        checks.append(
            Check("guest_svn", ok, f"{report.guest_svn} {'>=' if ok else '<'} {opts.min_guest_svn}")
        )
    if opts.signing_key is not None:
        kind = "vlek" if int(report.signing_key) == 1 else "vcek"
        checks.append(Check("signing_key", kind == opts.signing_key, f"signed by {kind}"))
    checks += _skip(opts, ["min_tee_tcb_svn", "mr_seam", "rtmrs", "max_age_s"])
    return _finish(checks)


def validate_tdx(
    quote: TdxQuote, opts: ValidationOptions, expected_report_data: bytes | None = None
) -> list[Check]:
    body = quote.body
    checks: list[Check | None] = [
        _allow_list("measurement", body.mr_td, opts.measurements),
        _debug(body.debug, opts.debug_allowed, "TDATTRIBUTES bit 0"),
        _report_data(body.report_data, expected_report_data),
        _allow_list("mr_seam", body.mr_seam, opts.mr_seam),
    ]
    if opts.min_tee_tcb_svn is not None:
        want = bytes.fromhex(opts.min_tee_tcb_svn).ljust(16, b"\0")
        low = [i for i in range(16) if body.tee_tcb_svn[i] < want[i]]
        checks.append(
            Check(
                "tee_tcb_svn",
                not low,
                f"{body.tee_tcb_svn.hex()} vs minimum {want.hex()}"
                + (f": component(s) {low} below minimum" if low else ""),
            )
        )
    for idx, want_hex in sorted((opts.rtmrs or {}).items()):
        ok = hmac.compare_digest(body.rtmrs[idx], bytes.fromhex(want_hex))
        checks.append(Check(f"rtmr{idx}", ok, "matches" if ok else f"{body.rtmrs[idx].hex()} != {want_hex}"))
    if opts.min_tcb is not None:
        checks.append(Check("min_tcb", True, f"skipped: {NA} (use min_tee_tcb_svn)"))
    checks += _skip(
        opts, ["vmpl", "host_data", "id_key_digests", "min_guest_svn", "signing_key", "max_age_s"]
    )
    return _finish(checks)


def validate_dev(
    ev: DevEvidence,
    opts: ValidationOptions,
    expected_report_data: bytes | None = None,
    now: dt.datetime | None = None,
) -> list[Check]:
    checks: list[Check | None] = [
        _allow_list("measurement", ev.measurement, opts.measurements),
        _debug(ev.debug, opts.debug_allowed, "debug flag"),
        *_min_tcb(ev.tcb, opts),
        _report_data(ev.report_data, expected_report_data),
    ]
    if opts.max_age_s is not None:
        t = (now or dt.datetime.now(dt.UTC)).timestamp()
        age = t - ev.timestamp
        ok = -60 <= age <= opts.max_age_s
        checks.append(Check("timestamp", ok, f"age {age:.0f} s (max {opts.max_age_s} s)"))
    checks += _skip(
        opts,
        [
            "vmpl",
            "host_data",
            "id_key_digests",
            "min_guest_svn",
            "signing_key",
            "min_tee_tcb_svn",
            "mr_seam",
            "rtmrs",
        ],
    )
    return _finish(checks)

"""Intel TDX collateral evaluation (TCB info, QE identity, CRLs) at a given time, via ``dcap-qvl``.

Why a library here and not in :mod:`attestation.tdx_verify`: the cryptographic checks are few and
fixed, so we do them ourselves with ``cryptography``; collateral evaluation is Intel's moving target
(TCB level matching by SVN components, QE identity, status precedence, advisories, CRL checks on the
whole chain), and ``dcap-qvl`` (Phala's Rust port of Intel's QVL) tracks it. We call it offline with
collateral read from files and an explicit time, never its network helpers.

A collateral folder holds either ``collateral.json`` (dcap-qvl's own JSON) or these files (the
go-tdx-guest test-data names are accepted too): ``tcb_info.json`` (the PCS response with ``tcbInfo``
and ``signature``), ``qe_identity.json``, ``tcb_info_issuer_chain.pem``, ``qe_identity_issuer_chain.pem``,
``pck_crl.der``, ``pck_crl_issuer_chain.pem``, ``root_crl.der``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from attestation.errors import Check, OptionsError, VerificationError

_NAMES = {
    "tcb_info": ("tcb_info.json", "sample_tcbInfo_response"),
    "qe_identity": ("qe_identity.json", "sample_qeIdentity_response"),
    "tcb_info_issuer_chain": ("tcb_info_issuer_chain.pem", "tcbInfoIssuerChain.pem"),
    "qe_identity_issuer_chain": ("qe_identity_issuer_chain.pem", "qeIdentityIssuerChain.pem"),
    "pck_crl": ("pck_crl.der", "pckcrl"),
    "pck_crl_issuer_chain": ("pck_crl_issuer_chain.pem", "pckCrlIssuerChain.pem"),
    "root_crl": ("root_crl.der", "rootcrl.der"),
}


@dataclass(frozen=True)
class CollateralResult:
    status: str
    advisory_ids: list[str]


def _find(folder: Path, key: str) -> Path:
    for name in _NAMES[key]:
        if (folder / name).is_file():
            return folder / name
    raise OptionsError(f"collateral folder {folder} lacks {key} (one of {', '.join(_NAMES[key])})")


#: Intel's PCS collateral is kilobytes; a file past this is not collateral and is not read into memory
MAX_COLLATERAL_BYTES = 4 << 20


def _read(path: Path) -> bytes:
    """At most ``MAX_COLLATERAL_BYTES`` of a collateral file (``_find`` saw a regular file: no FIFO)."""
    with path.open("rb") as fh:
        data = fh.read(MAX_COLLATERAL_BYTES + 1)
    if len(data) > MAX_COLLATERAL_BYTES:
        raise OptionsError(f"collateral file {path} is over {MAX_COLLATERAL_BYTES} bytes")
    return data


def _text(path: Path) -> str:
    try:
        return _read(path).decode()
    except UnicodeDecodeError:
        raise OptionsError(f"collateral file {path} is not UTF-8 text") from None


def _signed_body(text: str, key: str) -> tuple[str, bytes]:
    """The exact signed JSON text of ``key`` in a PCS response, and its signature.

    Intel signs the bytes as served, so the body must be cut from the text, not re-serialised.
    """
    prefix = '{"' + key + '":'
    body_end = text.rfind(',"signature":')
    if not text.startswith(prefix) or body_end < 0:
        raise OptionsError(f'collateral {key}: expected a PCS response {prefix}...,"signature":...}}')
    try:
        sig = bytes.fromhex(json.loads(text)["signature"])
    except (ValueError, TypeError, KeyError, RecursionError):
        raise OptionsError(f"collateral {key}: its signature is not a hex string in a JSON object") from None
    return text[len(prefix) : body_end], sig


def load_collateral(folder: str | Path):  # type: ignore[no-untyped-def]
    import dcap_qvl  # optional dependency; imported here so the rest of the package works without it

    folder = Path(folder)
    if (folder / "collateral.json").is_file():
        return dcap_qvl.QuoteCollateralV3.from_json(_text(folder / "collateral.json"))
    tcb_info, tcb_sig = _signed_body(_text(_find(folder, "tcb_info")), "tcbInfo")
    qe_id, qe_sig = _signed_body(_text(_find(folder, "qe_identity")), "enclaveIdentity")
    return dcap_qvl.QuoteCollateralV3(
        _text(_find(folder, "pck_crl_issuer_chain")),
        _read(_find(folder, "root_crl")),
        _read(_find(folder, "pck_crl")),
        _text(_find(folder, "tcb_info_issuer_chain")),
        tcb_info,
        tcb_sig,
        _text(_find(folder, "qe_identity_issuer_chain")),
        qe_id,
        qe_sig,
    )


def evaluate_collateral(
    raw_quote: bytes, folder: str | Path, *, now: dt.datetime | None = None, accepted: list[str] | None = None
) -> tuple[CollateralResult, Check]:
    """TCB status of the quote's platform per the collateral at ``now``; raises if not accepted."""
    try:
        import dcap_qvl
    except ImportError:
        raise OptionsError(
            "TDX collateral evaluation needs the dcap-qvl package (pip install dcap-qvl)"
        ) from None
    now = now or dt.datetime.now(dt.UTC)
    accepted = accepted or ["UpToDate"]
    collateral = load_collateral(folder)
    try:
        report = dcap_qvl.verify(raw_quote, collateral, int(now.timestamp()))
    except ValueError as exc:
        msg = " ".join(str(exc).split())
        check = Check("tcb_status", False, f"collateral evaluation at {now:%Y-%m-%dT%H:%M:%SZ} failed: {msg}")
        raise VerificationError(f"tcb_status: {check.detail}", [check]) from None
    result = CollateralResult(status=str(report.status), advisory_ids=list(report.advisory_ids))
    ok = result.status in accepted
    detail = f"{result.status} (accepted: {', '.join(accepted)}); advisories: {result.advisory_ids or 'none'}"
    check = Check("tcb_status", ok, detail)
    if not ok:
        raise VerificationError(f"tcb_status: {detail}", [check])
    return result, check

"""``secagg attest verify EVIDENCE``: verify (and with ``--policy``, validate) TEE attestation evidence."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from attestation.errors import OptionsError
from attestation.evidence import verify_and_validate
from attestation.options import ValidationOptions, VerifyOptions, options_from_mapping
from secagg import safeyaml, userfile
from secagg.errors import ConfigError, IntegrityError, PolicyRefusal, UsageError
from secagg.reasons import Reason


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("attest", help="TEE attestation evidence (SEV-SNP, TDX, dev-only software TEE)")
    asub = p.add_subparsers(dest="attest_command", metavar="ACTION", parser_class=type(p))
    asub.required = True
    v = asub.add_parser(
        "verify",
        help="verify evidence (authenticity); with --policy also validate its fields",
        description="Prints every field checked and the decision. Exit 0 accept, 1 refuse, 2 usage error.",
    )
    v.add_argument(
        "evidence", type=Path, help="SEV-SNP report (binary or hex), TDX quote, or dev-TEE evidence"
    )
    v.add_argument(
        "--certs",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="VCEK/VLEK and ASK/ARK (PEM or DER) where the evidence does not carry them; "
        "for dev-TEE, PEM public keys that pin its signing key",
    )
    v.add_argument(
        "--crl",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="SEV-SNP: the AMD ARK's CRL (PEM or DER, from KDS) to check the ASK/ASVK for revocation",
    )
    v.add_argument("--collateral", type=Path, metavar="DIR", help="Intel TDX collateral folder (offline)")
    v.add_argument("--policy", type=Path, metavar="FILE", help="YAML validation options")
    v.add_argument("--nonce", metavar="HEX", help="expected REPORT_DATA (<= 64 bytes, zero-padded)")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument(
        "--allow-insecure-dev-tee",
        action="store_true",
        help="accept dev-only software-TEE evidence (NOT hardware-backed; demos and tests only)",
    )
    v.set_defaults(func=run_verify)


#: how ``attestation`` labels a failure of the data given beside the evidence (``CertificateDataError``)
_CERTS_PROBLEM = "certificates: "


_CERTS_WHICH = re.compile(r"^certificate file(?: (\d+) of \d+)?")


def _name_certs_file(problem: str, paths: list[Path]) -> str:
    """``certificate file 2 of 3 (N bytes) is not ...`` as ``--certs PATH (N bytes) is not ...``."""
    found = _CERTS_WHICH.match(problem)
    if found is None:
        return f"--certs {', '.join(map(str, paths))}: {problem}"
    index = int(found.group(1) or 1) - 1
    path = paths[index] if 0 <= index < len(paths) else ", ".join(map(str, paths))
    return f"--certs {path}{problem[found.end() :]}"


def load_options(path: Path | str) -> ValidationOptions:
    """Validation options from a YAML file (or a site policy's ``attestation`` section), read with
    the project's hardened loader: ``attestation`` takes parsed data and reads no YAML itself."""
    data = safeyaml.load_file(path, what="policy or options file")
    try:
        return options_from_mapping(data, str(path))
    except OptionsError as exc:
        raise ConfigError(str(exc)) from None


#: the most read from the evidence, each --certs and each --crl file. The largest real ones: a SEV-SNP
#: extended report with its certificate table (at most ``snp.MAX_CERT_TABLE``, 1 MiB, as hex twice
#: that), a TDX quote (64 KiB), a PEM chain or a CRL (KBs). A file past this is none of them, and a
#: device or a growing file must not fill memory before the verifier says so.
MAX_INPUT_BYTES = 4 << 20


def _read(path: Path, what: str) -> bytes:
    """A regular file, read bounded (:mod:`secagg.userfile`): a FIFO is refused, not waited on."""
    return userfile.read_file(path, MAX_INPUT_BYTES, what)


def run_verify(args: argparse.Namespace) -> int:
    nonce = None
    if args.nonce is not None:
        try:
            nonce = bytes.fromhex(args.nonce.removeprefix("0x"))
        except ValueError:
            raise UsageError(f"--nonce is not hex: {args.nonce!r}") from None
        if len(nonce) > 64:
            raise UsageError("--nonce is longer than 64 bytes")
    options = load_options(args.policy) if args.policy else None
    if args.collateral is not None and not args.collateral.is_dir():
        raise ConfigError(f"--collateral {args.collateral} is not a folder")
    result = verify_and_validate(
        _read(args.evidence, "evidence file"),
        VerifyOptions(
            certs=[_read(c, "certificate file") for c in args.certs],
            crls=[_read(c, "CRL file") for c in args.crl],
            collateral_dir=args.collateral,
            allow_insecure_dev_tee=args.allow_insecure_dev_tee,
        ),
        options=options,
        expected_report_data=nonce,
    )
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        print(f"type: {result.type}")
        print(f"measurement: {result.measurement}")
        print(f"report_data: {result.report_data}")
        for c in result.checked:
            print(f"  [{'ok' if c.ok else 'FAIL'}] {c.field}: {c.detail}")
        for e in result.errors:
            print(f"  error: {e}")
        print(f"verified: {str(result.verified).lower()}")
        print(f"decision: {result.decision}")
    if result.decision == "accept":
        return 0
    if args.json:
        return 1
    first = result.errors[0] if result.errors else "unknown reason"
    more = f" (+{len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
    if first.startswith(_CERTS_PROBLEM) and args.certs:  # the evidence was never judged: name the file
        raise ConfigError(_name_certs_file(first.removeprefix(_CERTS_PROBLEM), args.certs) + more)
    if result.verified:  # authentic, but the policy does not accept it
        raise PolicyRefusal(f"attestation refused ({result.type}): {first}{more}", code=Reason.ATTESTATION)
    raise IntegrityError(f"attestation not verified ({result.type}): {first}{more}")

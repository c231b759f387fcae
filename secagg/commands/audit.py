"""``secagg audit verify FILE [--cert CERT_PEM | --kit DIR] [--allow-missing-head]``.

Checks the hash chain and the signed head beside the log (``FILE.head``, see :mod:`secagg.auditlog`):
lines removed at the end, an emptied file, a recomputed chain, a head signed by another key. Exit 0
when everything holds (notes such as "head one line behind" or "signature not checked" go to stdout
with the result), 1 with one line on stderr naming the problem, 2 on a usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from secagg.auditlog import head_path, verify_audit
from secagg.errors import ConfigError
from secagg.provision.identity import load_cert
from secagg.reasons import Reason
from secagg.userfile import file_kind, read_file

#: a node certificate (PEM) is about a kilobyte; a chain a few
MAX_CERT_BYTES = 1 << 20


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="audit log tools")
    s = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = s.add_parser(
        "verify",
        help="check an audit log's hash chain and its signed head; names the first problem",
        description="Check an audit log's hash chain and the signed head kept beside it (FILE.head): "
        "names the first bad line, lines removed at the end, an emptied or rewritten log, and a head "
        "whose signature does not verify against the node's certificate.",
    )
    v.add_argument("file", type=Path)
    who = v.add_mutually_exclusive_group()
    who.add_argument(
        "--cert",
        type=Path,
        metavar="CERT_PEM",
        help="the node's certificate: the head must be signed by its key",
    )
    who.add_argument(
        "--kit",
        type=Path,
        metavar="DIR",
        help="a startup kit: check the head against its cert.pem (the kit's own log)",
    )
    v.add_argument(
        "--allow-missing-head",
        action="store_true",
        help="accept a log with no head (written before heads existed); truncation is then not checked",
    )
    v.set_defaults(func=run_verify)


def _cert(args: argparse.Namespace) -> x509.Certificate | None:
    if args.cert is not None:
        return load_cert(read_file(args.cert, MAX_CERT_BYTES, "certificate file"))
    if args.kit is not None:
        from secagg.provision.kit import load_kit

        return load_kit(args.kit).cert
    return None


class AuditLogMissing(ConfigError):
    code = Reason.FILE_MISSING


class AuditLogNotAFile(ConfigError):
    code = Reason.NOT_A_FILE


def _check_log_path(path: Path) -> None:
    """A directory, FIFO or device is named as such (a FIFO would block the read), not "no such"."""
    try:
        kind = file_kind(path.stat().st_mode)
    except FileNotFoundError:
        if not head_path(path).is_file():  # a log emptied to nothing but its head is verify's to judge
            raise AuditLogMissing(f"{path}: no such audit log") from None
        return
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the audit log ({exc.strerror})") from None
    if kind is not None:
        raise AuditLogNotAFile(f"{path}: is {kind}, not an audit log")


def run_verify(args: argparse.Namespace) -> int:
    _check_log_path(args.file)
    report = verify_audit(args.file, cert=_cert(args), allow_missing_head=args.allow_missing_head)
    head = {
        "signed": f"head signed by {report.node}, signature verified",
        "signed-unchecked": f"head signed by {report.node} (signature not checked: give --cert or --kit)",
        "unsigned": "head unsigned",
        "missing": "no head (truncation not checked)",
    }[report.head]
    extra = "; head one line behind (crash between append and head update)" if report.behind else ""
    print(f"{args.file}: {report.records} records, hash chain intact, {head}{extra}")
    return 0

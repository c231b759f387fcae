"""``secagg audit verify FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path

from secagg.auditlog import verify_log
from secagg.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="audit log tools")
    s = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = s.add_parser("verify", help="check an audit log's hash chain; names the first bad line")
    v.add_argument("file", type=Path)
    v.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise ConfigError(f"no such audit log: {args.file}")
    n = verify_log(args.file)
    print(f"{args.file}: {n} records, hash chain intact")
    return 0

"""The one ``secagg`` entry point.

Exit codes are a contract that scripts and auditors depend on: 0 success, 1 a refused or failed check
(one line on stderr naming the reason), 2 a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from secagg import __version__, commands, reasons
from secagg.errors import SecaggError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"secagg: usage error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="secagg", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"secagg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SecaggError as exc:
        print(f"secagg: {exc.code}: {exc}", file=sys.stderr)
        registered = reasons.exit_code(exc.code) if reasons.lookup(exc.code) is not None else exc.exit_code
        return registered or 1  # a failure never exits 0, whatever code it carries
    except KeyboardInterrupt:
        print("secagg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

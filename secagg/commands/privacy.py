"""``secagg privacy ledger --kit DIR [--state DIR] [--json]``: what a site has spent of its privacy budget.

The ledger file is ``privacy-ledger.sqlite`` in the site's state folder; ``--state`` defaults to
``./state/<site name>`` (the site name is the kit's, so one host can keep several sites apart). The
command only reads: it never creates a ledger, and a missing one is an error (exit 1), because an empty
answer for a mistyped folder would look like an unspent budget.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from secagg.privacy.ledger import FILENAME, Ledger
from secagg.provision.kit import load_kit


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("privacy", help="site privacy budget")
    psub = p.add_subparsers(dest="privacy_command", metavar="COMMAND", parser_class=type(p))
    psub.required = True
    led = psub.add_parser(
        "ledger",
        help="show the privacy-budget ledger of a site",
        description=(
            "Show what a site has spent of its privacy budget, per data set: budget, total, remaining, "
            f"how the total was composed, and every debit. Reads STATE/{FILENAME}; never creates it."
        ),
    )
    led.add_argument("--kit", type=Path, required=True, help="the site's startup kit folder")
    led.add_argument(
        "--state",
        type=Path,
        default=None,
        help=f"the site's state folder holding {FILENAME} (default: ./state/<site name from the kit>)",
    )
    led.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    led.set_defaults(func=run_ledger)


def ledger_report(path: Path) -> dict[str, Any]:
    """Every data set's budget, total, remaining and entries, as plain data."""
    datasets = []
    for name in Ledger.datasets(path):
        with Ledger(path, name) as led:
            comp = led.composition()
            rem_eps, rem_delta = led.remaining()
            datasets.append(
                {
                    "dataset": name,
                    "budget": {"epsilon": led.budget_epsilon, "delta": led.budget_delta},
                    "total": {"epsilon": _num(comp.epsilon), "delta": comp.delta, "method": comp.method},
                    "remaining": {"epsilon": rem_eps, "delta": rem_delta},
                    "exhausted": not (comp.epsilon < led.budget_epsilon and comp.delta <= led.budget_delta),
                    "entries": [e.to_dict() for e in led.entries()],
                }
            )
    return {"ledger": str(path), "datasets": datasets}


def run_ledger(args: argparse.Namespace) -> int:
    kit = load_kit(args.kit, kind="site")
    state = args.state if args.state is not None else Path("state") / kit.name
    report = ledger_report(state / FILENAME)
    report["site"] = kit.name
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
        return 0
    print(f"privacy ledger of {kit.name}: {report['ledger']}")
    if not report["datasets"]:
        print("  no data sets")
    for ds in report["datasets"]:
        b, t, r = ds["budget"], ds["total"], ds["remaining"]
        flag = "  EXHAUSTED" if ds["exhausted"] else ""
        print(f"\ndata set {ds['dataset']}{flag}")
        print(f"  budget     eps={b['epsilon']:.6g}  delta={b['delta']:.3g}")
        print(f"  spent      eps={_fmt(t['epsilon'])}  delta={t['delta']:.3g}")
        print(f"  remaining  eps={r['epsilon']:.6g}  delta={r['delta']:.3g}")
        print(f"  method     {t['method']}")
        if ds["entries"]:
            print(
                f"  {'id':>4}  {'time':<32} {'job':<16} {'round':>5}  {'mechanism':<9} {'epsilon':>10}  "
                f"{'delta':>8}  {'z':>6} {'q':>7} {'steps':>6}  status"
            )
        for e in ds["entries"]:
            print(
                f"  {e['id']:>4}  {e['time']:<32} {e['job']:<16} {e['round']:>5}  {e['mechanism']:<9} "
                f"{e['epsilon']:>10.4g}  {e['delta']:>8.2g}  {_opt(e['noise_multiplier']):>6} "
                f"{_opt(e['sample_rate']):>7} {_opt(e['steps']):>6}  {e['status']}"
            )
    return 0


def _num(x: float) -> float | str:
    """JSON has no infinity: an unbounded total is reported as the string "inf"."""
    return x if math.isfinite(x) else "inf"


def _fmt(x: float | str) -> str:
    return x if isinstance(x, str) else f"{x:.6g}"


def _opt(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)

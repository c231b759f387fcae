"""``secagg chaos [--scenario NAME...] [--modes LIST] [--sites N] [--rounds N] [--points LIST] [--out DIR]``:
the fault and load harness (issue #18). Real processes on 127.0.0.1 (a partitioned or slow node in its
own network namespace); every run bounded and checked."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from secagg.errors import UsageError


def _csv(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from secagg.chaos.scenarios import LOAD_SITES, MODES, SCENARIOS
    from secagg.chaos.shim import POINTS

    p = sub.add_parser(
        "chaos",
        help="fault and load harness: kill, restart and load real federations, then check them",
        description="Run federations of real `secagg aggregator serve` and `secagg agent run` processes "
        "on 127.0.0.1 with a numpy-only job, inject a fault (kill -9 of the aggregator or a site at a "
        "named point of a round, then a restart on the same state) or a load, and check every run: "
        "rounds completed or refused with a reason, the final model against the fault-free run's, the "
        "sites' privacy ledgers, every audit chain (secagg audit verify), and no temporary file, spool "
        "or lock left behind. Writes results.json, results.md (and load.png) to --out; exits 1 if any "
        f"run is not ok. Kill points: {', '.join(POINTS)}. The partition scenarios (a site's or the "
        "aggregator's link cut) need root and network namespaces; slow-link and slow-link-aggregator "
        "(site-2's or the aggregator's link: 200 ms each way, 2% loss each way, without netem) need "
        "nftables too (apt-get install -y nftables).",
    )
    p.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="repeatable (default: all but load)"
    )
    p.add_argument("--modes", type=_csv, default=list(MODES), help="comma-separated (default: all four)")
    p.add_argument("--sites", type=int, default=5, help="sites in fault runs (default: 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds in fault runs (default: 3)")
    p.add_argument("--points", type=_csv, help=f"only these kill points (of {', '.join(POINTS)})")
    p.add_argument(
        "--load-sites",
        type=lambda t: [int(x) for x in _csv(t)],
        default=list(LOAD_SITES),
        help="default: 10,25,50",
    )
    p.add_argument("--load-rounds", type=int, default=10, help="rounds of a load run (default: 10)")
    p.add_argument("--out", type=Path, help="output folder (default: a new folder under ./chaos-out/)")
    p.add_argument(
        "--tabulate",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="run nothing: print the table (and findings) of earlier runs' results.json files",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from secagg.chaos.scenarios import MODES, load_rows, plan, run_suite, table, unavailable, why
    from secagg.chaos.shim import POINTS

    if args.tabulate:
        rows = [r for path in args.tabulate for r in load_rows(path)]
        print("\n".join(table(rows)))
        for r in rows:
            if not r.ok:
                print(f"- {r.scenario} {r.label} {r.mode}: {'; '.join(why(r))}")
        return 0

    bad = [m for m in args.modes if m not in MODES]
    if bad:
        raise UsageError(f"--modes: unknown {', '.join(bad)} (known: {', '.join(MODES)})")
    bad = [x for x in args.points or [] if x not in POINTS]
    if bad:
        raise UsageError(f"--points: unknown {', '.join(bad)} (known: {', '.join(POINTS)})")
    if not 2 <= args.sites <= 100 or not 1 <= args.rounds <= 100:
        raise UsageError("--sites must be 2-100 and --rounds 1-100")
    if args.points and args.rounds < 2:
        raise UsageError("a kill hits round 2: --rounds must be at least 2")
    scenarios = args.scenario or ["baseline", "kill-aggregator", "kill-site"]
    refused = unavailable(scenarios)
    if refused is not None:
        raise UsageError(refused)
    out: Path = args.out or Path("chaos-out") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty; name a new --out folder")
    planned = plan(
        scenarios,
        args.modes,
        sites=args.sites,
        rounds=args.rounds,
        points=args.points,
        load_sites=args.load_sites,
        load_rounds=args.load_rounds,
    )
    rows = run_suite(planned, out)
    bad_rows = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(bad_rows)}/{len(rows)} runs ok; table: {out / 'results.md'}")
    return 1 if bad_rows else 0

"""``secagg demo [--mode he|plain] [--rounds N] [--sites N] [--out DIR]``."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from secagg.errors import UsageError

DEMO_PARAMS = {"lr": 0.05, "epochs": 2, "batch_size": 32, "seed": 0}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run a whole federation on this machine and write a report")
    p.add_argument("--mode", choices=["he", "plain"], default="he")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--out", type=Path, help="output folder (default: a new folder under ./demo-out/)")
    p.add_argument("--no-compare", action="store_true", help="skip the plain reference run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from secagg.demo import report
    from secagg.demo.data import skewed_split
    from secagg.demo.run import cross_site_matrix, run_federation

    if not 1 <= args.rounds <= 100:
        raise UsageError("--rounds must be between 1 and 100")
    if not 2 <= args.sites <= 16:
        raise UsageError("--sites must be between 2 and 16")
    out = args.out or Path("demo-out") / dt.datetime.now().strftime(f"%Y%m%d-%H%M%S-{args.mode}")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty; name a new --out folder")
    sites = skewed_split(args.sites)
    print(
        f"secagg demo: {args.mode} mode, {args.sites} sites ({', '.join(s.name for s in sites)}), "
        f"{args.rounds} rounds; output in {out}"
    )
    for s in sites:
        print(
            f"  {s.name}: {len(s.y_train)} training patients ({s.y_train.mean():.0%} malignant), "
            f"{len(s.y_val)} held out"
        )
    main = run_federation(
        out / args.mode, mode=args.mode, rounds=args.rounds, sites=sites, params=DEMO_PARAMS
    )
    for row in main.per_round:
        print(f"  round {row['round']}: global validation AUC {row['auc']:.4f}")
    reference = None
    if args.mode != "plain" and not args.no_compare:
        print("reference run in plain mode (same data, same seeds) ...")
        reference = run_federation(
            out / "plain", mode="plain", rounds=args.rounds, sites=sites, params=DEMO_PARAMS
        )
    matrix = cross_site_matrix(main.final_model, sites, DEMO_PARAMS, args.rounds)
    report.write(out, main, reference, matrix, [s.name for s in sites], {})
    print("\ncross-site validation AUC (rows: model, columns: held-out split of each site)")
    names = [s.name for s in sites]
    print(f"  {'model':<22}" + "".join(f"{n:>10}" for n in names))
    for name, row in matrix.items():
        print(f"  {name:<22}" + "".join(f"{row[n]:>10.4f}" for n in names))
    if reference is not None:
        print(
            f"\n{args.mode} final AUC {main.final_auc:.4f} vs plain {reference.final_auc:.4f}; "
            f"max abs parameter difference {report.max_abs_diff(main.final_model, reference.final_model):.2e}"
        )
    print(f"report: {out / 'report.md'}")
    return 0

"""``secagg demo [--mode he|mask|tee|tee-mask|plain] [--strategy NAME] [--rounds N] [--sites N] [--out DIR]``,
plus ``--policy SITE=FILE``, ``--compare-strategies`` and ``--privacy-sweep``."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from secagg.errors import UsageError
from secagg.modes import traits

DEMO_PARAMS = {"lr": 0.05, "epochs": 2, "batch_size": 32, "seed": 0}
MODES = ("he", "mask", "tee", "tee-mask", "plain")
STRATEGY_NAMES = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi")

_POLICY_HELP = (
    "give SITE (site-1 ... site-N) its own site policy instead of the demo's (repeatable). The demo "
    "signs its job as submitter@demo, so the policy must list submitter@demo in signers.submitters "
    "and allow the chosen mode, or the demo refuses to start"
)


def _policy_option(text: str) -> tuple[str, Path]:
    from secagg.demo.policies import policy_option

    return policy_option(text)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run a whole federation on this machine and write a report",
        description="Run a federation on the Wisconsin breast-cancer data (label-skewed split): the "
        "aggregator and each site as separate processes on 127.0.0.1 over mTLS. Writes report.md, "
        "plots and summary.json to --out.",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help="aggregation mode (default: he; plain for --compare-strategies and --privacy-sweep). "
        "tee and tee-mask use the INSECURE software dev-TEE",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default="fedavg",
        help="server strategy, with settings tuned for the demo model (default: fedavg)",
    )
    p.add_argument("--rounds", type=int, help="rounds (default: 5; 3 for --privacy-sweep)")
    p.add_argument("--sites", type=int, default=3, help="number of sites, 2-16 (default: 3)")
    p.add_argument("--out", type=Path, help="output folder (default: a new folder under ./demo-out/)")
    p.add_argument(
        "--policy",
        type=_policy_option,
        action="append",
        default=[],
        metavar="SITE=FILE",
        help=_POLICY_HELP,
    )
    p.add_argument("--no-compare", action="store_true", help="skip the plain reference run")
    p.add_argument(
        "--drop-site",
        action="append",
        default=[],
        metavar="NAME@ROUND",
        help="mask mode: NAME vanishes in ROUND after sharing its keys, before uploading; the round "
        "recovers its masks from the neighbours' shares (repeatable)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--compare-strategies",
        action="store_true",
        help="run all six strategies on the same split; one plot (AUC per round per strategy) and a table",
    )
    what.add_argument(
        "--privacy-sweep",
        action="store_true",
        help="final AUC against epsilon for SVT, Gaussian and distributed Gaussian filters (several "
        "federations); a table and a plot",
    )
    p.add_argument(
        "--sweep-sites",
        type=_site_counts,
        metavar="N,N,...",
        help="--privacy-sweep at each of these site counts (e.g. 3,10,20), one plot with a panel per "
        "count; replaces --sites",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="--privacy-sweep in the in-process loop (same script, filters and accounting; no processes "
        f"or ledgers), up to {MAX_IN_PROCESS_SITES} sites: a real federation takes ~0.5 GiB a site",
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="--in-process: runs per setting, their AUC averaged (default: 3)",
    )
    p.set_defaults(func=run)


#: real federations: every site is an agent (~110 MiB) and a training worker that imports torch
#: (~390 MiB), about 0.5 GiB a site measured; more than this is more than a small machine holds
MAX_SITES = 16
#: the in-process loop holds no processes; the demo data split more ways leaves sites with a few
#: patients of a class (20 sites: the smallest has 8 for training)
MAX_IN_PROCESS_SITES = 20


def _site_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected site counts like 3,10,20; got {text!r}") from None
    if not counts or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct site counts like 3,10,20; got {text!r}")
    return sorted(counts)


def _out(args: argparse.Namespace, kind: str) -> Path:
    out: Path = args.out or Path("demo-out") / dt.datetime.now().strftime(f"%Y%m%d-%H%M%S-{kind}")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty; name a new --out folder")
    return out


def run(args: argparse.Namespace) -> int:
    from secagg.demo.data import skewed_split
    from secagg.demo.policies import check_site_policy, site_policies
    from secagg.demo.run import RUNNABLE_MODES, DemoFailed

    if args.compare_strategies and args.strategy != "fedavg":
        raise UsageError(
            "--strategy and --compare-strategies exclude each other (the comparison runs all six)"
        )
    mode = args.mode or ("plain" if args.compare_strategies or args.privacy_sweep else "he")
    if mode not in RUNNABLE_MODES:
        raise DemoFailed(f"mode {mode} cannot run in the demo yet: the aggregator does not support it")
    rounds = args.rounds if args.rounds is not None else (3 if args.privacy_sweep else 5)
    if not 1 <= rounds <= 100:
        raise UsageError("--rounds must be between 1 and 100")
    counts = _checked_counts(args)
    sites = skewed_split(counts[-1] if args.sweep_sites else args.sites)
    names = [s.name for s in sites]
    policies = site_policies(args.policy, names)
    for site, path in policies.items():
        check_site_policy(site, path, mode)
    kind = "strategies" if args.compare_strategies else "privacy-sweep" if args.privacy_sweep else mode
    out = _out(args, kind)
    print(
        f"secagg demo: {mode} mode, {args.sites} sites ({', '.join(names)}), {rounds} rounds; output in {out}"
    )
    for s in sites:
        own = f"; own policy {policies[s.name]}" if s.name in policies else ""
        print(
            f"  {s.name}: {len(s.y_train)} training patients ({s.y_train.mean():.0%} malignant), "
            f"{len(s.y_val)} held out{own}"
        )
    common: dict[str, Any] = {"mode": mode, "rounds": rounds, "sites": sites, "policies": policies}
    if args.compare_strategies:
        return _compare(out, **common)
    if args.privacy_sweep:
        return _sweep(
            out,
            strategy=args.strategy,
            counts=counts if args.sweep_sites else None,
            in_process=args.in_process,
            repeats=3 if args.repeats is None else args.repeats,
            **common,
        )
    return _single(out, strategy=args.strategy, no_compare=args.no_compare, drop=_drops(args, mode), **common)


def _checked_counts(args: argparse.Namespace) -> list[int]:
    """The site counts to run: ``--sweep-sites`` or ``--sites``, within what the chosen runner holds."""
    if (args.sweep_sites or args.in_process) and not args.privacy_sweep:
        raise UsageError("--sweep-sites and --in-process go with --privacy-sweep")
    if args.repeats is not None and not args.in_process:
        raise UsageError(
            "--repeats goes with --in-process (a real federation's sweep runs each setting once)"
        )
    if args.repeats is not None and not 1 <= args.repeats <= 20:
        raise UsageError("--repeats must be between 1 and 20")
    counts: list[int] = args.sweep_sites or [args.sites]
    top = MAX_IN_PROCESS_SITES if args.in_process else MAX_SITES
    for n in counts:
        if not 2 <= n <= top:
            more = "" if args.in_process else f" (up to {MAX_IN_PROCESS_SITES} with --in-process)"
            raise UsageError(f"site counts must be between 2 and {top}{more}; got {n}")
    return counts


def _drops(args: argparse.Namespace, mode: str) -> dict[str, int]:
    drops: dict[str, int] = {}
    for item in args.drop_site:
        name, _, round_text = item.partition("@")
        if not round_text.isdigit() or int(round_text) < 1:
            raise UsageError(f"--drop-site takes NAME@ROUND, e.g. site-2@2; got {item!r}")
        if name not in {f"site-{i}" for i in range(1, args.sites + 1)}:
            raise UsageError(f"--drop-site: no site {name!r} (sites are site-1 ... site-{args.sites})")
        drops[name] = int(round_text)
    if drops and not traits(mode).masked:
        raise UsageError(
            "--drop-site shows the mask protocol's dropout recovery: use it with --mode mask or tee-mask"
        )
    if drops and args.sites - len(drops) < 2:
        raise UsageError("--drop-site: at least 2 sites must stay")
    return drops


def _single(
    out: Path,
    *,
    mode: str,
    rounds: int,
    sites: list[Any],
    policies: dict[str, Path],
    strategy: str,
    no_compare: bool,
    drop: dict[str, int] | None = None,
) -> int:
    from secagg.demo import report
    from secagg.demo.run import run_federation
    from secagg.demo.strategies import describe, preset

    spec = preset(strategy)
    print(f"strategy: {describe(strategy)}")
    main = run_federation(
        out / mode,
        mode=mode,
        rounds=rounds,
        sites=sites,
        params=DEMO_PARAMS,
        strategy=spec,
        policies=policies,
        drop=drop,
    )
    for row in main.per_round:
        print(f"  round {row['round']}: global validation AUC {row['auc']:.4f}")
    reference = None
    if mode != "plain" and not no_compare and not drop:
        print("reference run in plain mode (same data, same seeds) ...")
        reference = run_federation(
            out / "plain",
            mode="plain",
            rounds=rounds,
            sites=sites,
            params=DEMO_PARAMS,
            strategy=spec,
            policies=_plain_ok(policies),
        )
    matrix = main.matrix  # the federation's own cross-site evaluation (evaluation: cross_site)
    extra = {"strategy": spec, "policies": {k: str(v) for k, v in policies.items()}}
    report.write(out, main, reference, matrix, [s.name for s in sites], extra)
    print("\ncross-site validation AUC, measured by each site (rows: model, columns: held-out split)")
    names = [s.name for s in sites]
    print(f"  {'model':<22}" + "".join(f"{n:>10}" for n in names))
    for name, row in matrix.items():
        print(f"  {name:<22}" + "".join(f"{report.cell(row.get(n)):>10}" for n in names))
    if reference is not None:
        print(
            f"\n{mode} final AUC {main.final_auc:.4f} vs plain {reference.final_auc:.4f}; "
            f"max abs parameter difference {report.max_abs_diff(main.final_model, reference.final_model):.2e}"
        )
        mine, theirs = report.median_round_seconds(main), report.median_round_seconds(reference)
        print(
            f"median round time {mine:.2f} s ({mode}) vs {theirs:.2f} s (plain): {mine / theirs:.2f}x; "
            f"whole run {main.seconds:.1f} s vs {reference.seconds:.1f} s"
        )
    print(f"report: {out / 'report.md'}")
    print(f"per-round scalars: tensorboard --logdir {out / mode / 'state' / 'aggregator' / 'jobs'}")
    return 0


def _plain_ok(policies: dict[str, Path]) -> dict[str, Path]:
    """A user's policy that forbids plain would refuse the reference run: those sites get the demo's."""
    from secagg.policy import load_policy

    return {site: path for site, path in policies.items() if "plain" in load_policy(path).modes}


def _compare(out: Path, *, mode: str, rounds: int, sites: list[Any], policies: dict[str, Path]) -> int:
    from secagg.demo import compare, report
    from secagg.demo.run import RunResult, run_federation
    from secagg.demo.strategies import NAMES

    def runner(name: str, spec: dict[str, Any], folder: Path) -> RunResult:
        return run_federation(
            folder,
            mode=mode,
            rounds=rounds,
            sites=sites,
            params=DEMO_PARAMS,
            strategy=spec,
            policies=policies,
            log=lambda line: print("  " + line),
        )

    names = [s.name for s in sites]
    runs = compare.run_all(
        NAMES, runner, out, on_run=lambda so_far: compare.write(out, so_far, mode=mode, sites=names)
    )
    compare.write(out, runs, mode=mode, sites=names)
    main = runs["fedavg"]
    matrix = main.matrix
    extra = {"strategies": {n: {"final_auc": r.final_auc, "per_round": r.per_round} for n, r in runs.items()}}
    section = ["## Strategy comparison", "", *compare.table(runs), "", "![strategies](strategies.png)", ""]
    report.write(out, main, None, matrix, names, extra, sections=section)
    print("\nfinal global validation AUC per strategy")
    for n, r in runs.items():
        print(f"  {n:<12}{r.final_auc:.4f}")
    print(f"report: {out / 'report.md'} and {out / 'strategies.md'}")
    return 0


def _sweep(
    out: Path,
    *,
    mode: str,
    rounds: int,
    sites: list[Any],
    policies: dict[str, Path],
    strategy: str,
    counts: list[int] | None = None,
    in_process: bool = False,
    repeats: int = 3,
) -> int:
    """One sweep per site count (``counts``; None: the sites given), all in one report."""
    from secagg.demo import report, sweep
    from secagg.demo.data import skewed_split
    from secagg.demo.run import RunResult
    from secagg.demo.strategies import preset

    n_params = sweep.model_size()
    names = [s.name for s in sites]
    out.mkdir(parents=True, exist_ok=True)
    rows: list[sweep.Row] = []
    for n in counts or [len(sites)]:
        split = sites if counts is None else skewed_split(n)
        if in_process:
            runner = sweep.in_process_runner(
                split, rounds=rounds, params=DEMO_PARAMS, strategy=preset(strategy), repeats=repeats
            )
        else:
            runner = sweep.federation_runner(
                split,
                mode=mode,
                rounds=rounds,
                params=DEMO_PARAMS,
                strategy=preset(strategy),
                policies=policies,
            )
        if counts is not None:
            print(f"--- {n} sites ---")
        rows += sweep.run_sweep(
            sweep.settings_for(n),
            runner,
            out,
            n_params=n_params,
            rounds=rounds,
            sites=n if counts is not None else None,
            done=list(rows),
            on_row=lambda so_far: sweep.write(
                out, so_far, rounds=rounds, sites=names, mode=mode, in_process=in_process
            ),
        )
    base = next((r for r in rows if r.mechanism == "none"), rows[0])
    main = RunResult(
        mode=mode,
        rounds=rounds,
        per_round=base.per_round,
        final_auc=base.final_auc,
        final_model={},
        seconds=base.seconds,
    )
    extra = {
        "privacy_sweep": [r.to_dict() for r in rows],
        "model_parameters": n_params,
        "in_process": in_process,
    }
    section = [
        "## Privacy sweep",
        "",
        *sweep.table(rows),
        "",
        "![AUC against epsilon](privacy-sweep.png)",
        "",
    ]
    report.write(out, main, None, None, names, extra, sections=section)
    print("\nfinal AUC against epsilon")
    print("\n".join("  " + line for line in sweep.table(rows)))
    print(f"report: {out / 'report.md'} and {out / 'privacy-sweep.md'}")
    return 0

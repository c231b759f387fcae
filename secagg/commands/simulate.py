"""``secagg simulate JOB_DIR --sites N (--data DIR... | --data-root DIR) [--mode M] [--rounds R]
[--policy SITE=FILE] [--out DIR]``: run your own job as a whole federation on this machine."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from secagg.errors import UsageError
from secagg.modes import NAMES as MODES


def _policy_option(text: str) -> tuple[str, Path]:
    from secagg.demo.policies import policy_option

    return policy_option(text)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "simulate",
        help="run a job folder as a whole federation on this machine and write a report",
        description="Run JOB_DIR (job.yaml, the training script, the model) on N sites: a throwaway "
        "project, a throwaway job signature and development site policies, the aggregator and each "
        "site a separate process on 127.0.0.1 over mTLS, exactly as `secagg demo` runs. JOB_DIR is "
        "only read; the same folder can then be signed (`secagg job sign`) and submitted to a real "
        "deployment. Writes report.md, metrics.png, summary.json and each site's training log to --out.",
    )
    p.add_argument(
        "job_dir", type=Path, metavar="JOB_DIR", help="the job folder (start one: secagg job init)"
    )
    p.add_argument(
        "--sites", type=int, metavar="N", help="number of sites, 2-16 (default: as many as --data folders)"
    )
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--data", type=Path, nargs="+", metavar="DIR", help="one data folder per site, site-1 first"
    )
    data.add_argument("--data-root", type=Path, metavar="DIR", help="a folder with site-1/ ... site-N/ in it")
    p.add_argument(
        "--mode",
        choices=MODES,
        help="aggregation mode (default: the job's); tee and tee-mask: INSECURE dev-TEE",
    )
    p.add_argument("--rounds", type=int, metavar="R", help="rounds, 1-100 (default: the job's)")
    p.add_argument(
        "--policy",
        type=_policy_option,
        action="append",
        default=[],
        metavar="SITE=FILE",
        help="give SITE its own site policy instead of the development one (repeatable); it must list "
        "submitter@simulate in signers.submitters and allow the mode",
    )
    p.add_argument("--out", type=Path, help="output folder (default: a new folder under ./simulate-out/)")
    p.set_defaults(func=run)


def _site_data(args: argparse.Namespace) -> list[tuple[str, Path]]:
    if args.data is not None:
        n = args.sites if args.sites is not None else len(args.data)
        if len(args.data) != n:
            raise UsageError(f"--sites {n} needs {n} --data folders, got {len(args.data)}")
        folders = list(args.data)
    else:
        if args.sites is None:
            raise UsageError("--data-root needs --sites N (it holds site-1/ ... site-N/)")
        n = args.sites
        folders = [args.data_root / f"site-{i}" for i in range(1, n + 1)]
    if not 2 <= n <= 16:
        raise UsageError("--sites must be between 2 and 16")
    return [(f"site-{i + 1}", folder) for i, folder in enumerate(folders)]


def _policies(items: list[tuple[str, Path]], names: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for site, path in items:
        if site not in names:
            raise UsageError(f"--policy names unknown site {site!r}; the sites are {', '.join(names)}")
        if site in out:
            raise UsageError(f"--policy given twice for {site}")
        out[site] = path
    return out


def run(args: argparse.Namespace) -> int:
    from secagg.demo import report
    from secagg.demo.engine import SimSite, check_data, check_policy, load_job_folder, run_job

    if args.rounds is not None and not 1 <= args.rounds <= 100:
        raise UsageError("--rounds must be between 1 and 100")
    pairs = _site_data(args)
    names = [n for n, _ in pairs]
    policies = _policies(args.policy, names)
    spec = load_job_folder(args.job_dir)
    sites = [SimSite(n, folder, policies.get(n)) for n, folder in pairs]
    if args.data_root is not None and not args.data_root.is_dir():
        from secagg.demo.engine import DataMissing

        raise DataMissing(f"--data-root {args.data_root} does not exist (it should hold site-1/ ... site-N/)")
    check_data(sites)
    mode = args.mode or spec.mode
    rounds = args.rounds or spec.rounds
    for site, path in policies.items():
        check_policy(site, path, mode)
    out: Path = args.out or Path("simulate-out") / dt.datetime.now().strftime(f"%Y%m%d-%H%M%S-{spec.name}")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty; name a new --out folder")
    print(
        f"secagg simulate: job {spec.name} ({args.job_dir}), {mode} mode, {len(sites)} sites, "
        f"{rounds} rounds; output in {out}"
    )
    for s in sites:
        own = f"; own policy {s.policy}" if s.policy else ""
        print(f"  {s.name}: data {s.data}{own}")
    fed = run_job(args.job_dir, out, sites, mode=mode, rounds=rounds)
    summary = report.write_job(
        out, fed, {"job_dir": str(args.job_dir), "policies": {k: str(v) for k, v in policies.items()}}
    )
    for row in fed.per_round:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items()) or "no metrics reported"
        print(f"  round {row['round']}: {shown}")
    print(f"report: {out / 'report.md'}; summary: {out / 'summary.json'}")
    print(f"training logs: {', '.join(summary['train_logs'].values())}")
    print(f"per-round scalars: tensorboard --logdir {summary['tensorboard']}")
    print(
        f"on a real deployment, sign this same folder and submit it: secagg job sign {args.job_dir} "
        "--kit SUBMITTER_KIT, then secagg admin submit"
    )
    return 0

"""``secagg admin (status | list | submit JOB | abort ID | download ID | logs [ID]) --kit DIR``.

The console authenticates with the admin's own startup kit over mTLS; the aggregator reads role and
org from that certificate and decides (see ``secagg.aggregator.admin``); the client is
``secagg.aggregator.admin_client``. This side only formats.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from secagg.aggregator.admin_client import AdminClient, AdminError
from secagg.provision.kit import load_kit

__all__ = ["AdminClient", "AdminError", "register", "run"]


# ---------------------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kit", type=Path, required=True, help="your admin startup kit")
    common.add_argument("--target", help="aggregator HOST:PORT (default: from the kit)")
    common.add_argument("--json", action="store_true", help="print the reply as JSON")
    p = sub.add_parser("admin", help="role-based admin console (status, list, submit, abort, download, logs)")
    s = p.add_subparsers(dest="admin_action", metavar="ACTION", required=True)
    s.add_parser(
        "status", parents=[common], help="the job, its round, sites' heartbeats, declined tasks"
    ).add_argument("job_id", nargs="?", default="", help="a job (default: the current one)")
    s.add_parser("list", parents=[common], help="the jobs you may see")
    sp = s.add_parser("submit", parents=[common], help="submit a signed job (folder or .tar.gz)")
    sp.add_argument("job", type=Path)
    s.add_parser("abort", parents=[common], help="stop a job; the aggregator stays up").add_argument("job_id")
    dp = s.add_parser("download", parents=[common], help="fetch the final model and the job's audit lines")
    dp.add_argument("job_id")
    dp.add_argument("-o", "--out", type=Path, help="output folder (default: ./JOB_ID)")
    lp = s.add_parser("logs", parents=[common], help="the job's audit log lines")
    lp.add_argument("job_id", nargs="?", default="", help="a job (default: the current one)")
    lp.add_argument(
        "--follow",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep streaming new lines this long (max 600)",
    )
    for parser in s.choices.values():
        parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kit = load_kit(args.kit, kind="admin")
    with AdminClient(kit, args.target) as client:
        cmd = args.admin_action
        if cmd == "status":
            _print(client.status(args.job_id), args.json, _format_status)
        elif cmd == "list":
            _print({"jobs": client.list()}, args.json, _format_list)
        elif cmd == "submit":
            job_id = client.submit(args.job)
            _print({"job_id": job_id}, args.json, lambda r: f"submitted job {r['job_id']}")
        elif cmd == "abort":
            _print(client.abort(args.job_id), args.json, lambda r: f"aborted job {r['job_id']}")
        elif cmd == "download":
            out = args.out or Path(args.job_id)
            header = client.download(args.job_id, out)
            _print(
                {**header, "out": str(out)},
                args.json,
                lambda r: "\n".join(
                    f"wrote {Path(r['out']) / f['name']} ({f['bytes']} bytes)" for f in r["files"]
                ),
            )
        elif cmd == "logs":
            client.logs(sys.stdout.buffer, args.job_id, args.follow)
    return 0


def _print(reply: dict[str, Any], as_json: bool, fmt: Any) -> None:
    print(json.dumps(reply, indent=2, sort_keys=True) if as_json else fmt(reply), flush=True)


def _format_status(r: dict[str, Any]) -> str:
    lines = []
    job = r.get("job")
    if job is None:
        lines.append("no job")
    else:
        where = f"round {job.get('round', job.get('completed'))}/{job.get('rounds')}"
        if "phase" in job:
            where += f" attempt {job['attempt']} ({job['phase']})"
        lines.append(f"job {job['job_id']} [{job.get('mode')}] {job.get('state')}, {where}")
        lines.append(f"  submitted by {job.get('submitter')}")
    lines.append("sites:")
    for s in r.get("sites", []):
        seen = (
            f"last heartbeat {s['last_heartbeat']} ({s['seconds_ago']} s ago)"
            if s.get("last_heartbeat")
            else "never seen"
        )
        lines.append(f"  {s['site']:<20} {'connected' if s.get('connected') else 'not connected':<14} {seen}")
    declined = r.get("declined") or []
    if declined:
        lines.append("declined tasks:")
        for d in declined:
            lines.append(f"  round {d['round']} {d['site']}: {d['code']}: {d['message']}")
    return "\n".join(lines)


def _format_list(r: dict[str, Any]) -> str:
    jobs = r.get("jobs") or []
    if not jobs:
        return "no jobs you may see"
    return "\n".join(
        f"{j['job_id']:<28} {j.get('state', ''):<10} {j.get('mode', ''):<6} "
        f"{j.get('completed')}/{j.get('rounds')} rounds  by {j.get('submitter')}"
        for j in jobs
    )

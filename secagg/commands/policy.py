"""``secagg policy check | explain``: validate a site policy and explain its decisions in words."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from secagg.errors import ConfigError, PolicyRefusal
from secagg.jobs import JobRejected, load_job
from secagg.jobs.signer import SignerInfo
from secagg.policy import admit_job, check_policy_file, decide, describe_policy, load_policy, render_decision
from secagg.provision.kit import load_kit


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("policy", help="check and explain site policies")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", parser_class=type(p))
    psub.required = True

    c = psub.add_parser("check", help="report every schema and semantic error, with line numbers")
    c.add_argument("file", type=Path, metavar="FILE")
    c.set_defaults(func=run_check)

    e = psub.add_parser("explain", help="say in words what the policy allows, or what it decides for a job")
    e.add_argument("file", type=Path, metavar="FILE")
    e.add_argument("--job", type=Path, metavar="JOB_DIR", help="job folder or .tar.gz to decide on")
    e.add_argument("--kit", type=Path, help="startup kit whose CA verifies the job's signature")
    e.set_defaults(func=run_explain)


def run_check(args: argparse.Namespace) -> int:
    issues = check_policy_file(args.file)  # a missing file, folder, FIFO or device: its own refusal
    for issue in issues:
        print(issue.format(str(args.file)))
    if issues:
        n = len(issues)
        raise ConfigError(f"{args.file}: {n} problem{'s' if n != 1 else ''} found")
    print(f"{args.file}: ok")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    print(f"Policy {args.file}")
    for line in describe_policy(policy):
        print(line)
    if args.job is None:
        return 0
    print()
    signers: list[SignerInfo] = []
    if args.kit is None:
        spec = load_job(args.job, policy.limits.max_package_bytes).spec
        print("Signature: not checked (give --kit to verify it against your project CA)")
        decision = decide(policy, spec, signers, job_root=args.job if args.job.is_dir() else None)
    else:
        try:
            job, _ = admit_job(args.job, policy, load_kit(args.kit).ca_cert)
        except JobRejected as exc:
            print("Signature and integrity: FAILED")
            for failure in exc.failures:
                print(f"  FAIL {failure}")
            raise
        spec, signers = job.spec, list(job.signers)
        print(f"Signature and integrity: verified ({len(job.manifest.files)} files)")
        try:
            decision = decide(policy, spec, signers, job_root=job.root)
        finally:
            if job.root != args.job:
                shutil.rmtree(job.root, ignore_errors=True)
    for line in render_decision(decision, f"job {spec.name!r}"):
        print(line)
    if not decision.accept:
        codes = ", ".join(dict.fromkeys(r.code for r in decision.failed))
        raise PolicyRefusal(f"job {spec.name!r} refused: {codes}", code=decision.failed[0].code)
    return 0

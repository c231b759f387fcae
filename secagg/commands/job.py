"""``secagg job init | sign | verify | verify-bundle``: start, sign and check job packages."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from secagg import userfile
from secagg.errors import ConfigError, PolicyRefusal
from secagg.jobs import JobRejected, SigstoreIdentity, sign_job, verify_bundle
from secagg.jobs.keyless import TRUST_DIR, Instance
from secagg.jobs.package import DEFAULT_MAX_BYTES
from secagg.policy import admit_job, load_policy
from secagg.provision.kit import load_kit


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("job", help="start, sign and verify job packages")
    jsub = p.add_subparsers(dest="job_command", metavar="ACTION", parser_class=type(p))
    jsub.required = True

    from secagg.jobs.templates import DEFAULT, TEMPLATES

    i = jsub.add_parser(
        "init",
        help="write a starting job (train.py, job.yaml, model.safetensors) that secagg simulate runs",
        description="Write a starting job into DIR: train.py with the client API lines marked "
        "'# secagg', job.yaml, and model.safetensors made from the script's make_model(). "
        "Templates: " + "; ".join(f"{k}: {v}" for k, v in TEMPLATES.items()) + ".",
    )
    i.add_argument("dir", type=Path, metavar="DIR", help="a new or empty folder")
    i.add_argument("--template", choices=sorted(TEMPLATES), default=DEFAULT, help=f"(default: {DEFAULT})")
    i.add_argument(
        "--example-data",
        type=Path,
        metavar="ROOT",
        help="also write synthetic data for 3 sites under ROOT (site-1/ ... site-3/), outside the job",
    )
    i.set_defaults(func=run_init)

    s = jsub.add_parser("sign", help="write JOB_DIR/manifest.json and sign it into manifest.sig")
    s.add_argument("job_dir", type=Path, metavar="JOB_DIR")
    s.add_argument("--kit", type=Path, required=True, help="the submitter's startup kit")
    s.set_defaults(func=run_sign)

    v = jsub.add_parser("verify", help="check a job's authenticity and that the policy trusts its signer")
    v.add_argument("job", type=Path, metavar="JOB_DIR", help="job folder or .tar.gz")
    v.add_argument("--policy", type=Path, required=True, help="site policy YAML")
    v.add_argument("--kit", type=Path, help="startup kit whose ca.pem anchors manifest.sig")
    v.add_argument("--trusted-root", type=Path, help="sigstore trusted_root.json (default: shipped roots)")
    v.set_defaults(func=run_verify)

    b = jsub.add_parser("verify-bundle", help="verify a sigstore bundle over any file, offline")
    b.add_argument("file", type=Path, metavar="FILE")
    b.add_argument("--bundle", type=Path, required=True, help="the .sigstore(.json) bundle")
    b.add_argument("--identity", required=True, help="expected certificate identity (email or URI)")
    b.add_argument("--issuer", required=True, help="expected OIDC issuer URL")
    root = b.add_mutually_exclusive_group()
    root.add_argument("--trusted-root", type=Path, help="trusted_root.json to verify against")
    root.add_argument("--staging", action="store_true", help="use the shipped sigstore staging root")
    b.set_defaults(func=run_verify_bundle)


def run_init(args: argparse.Namespace) -> int:
    from secagg.jobs.templates import init_job, write_example_data

    if args.example_data is not None:
        inside = args.example_data.resolve()
        if inside == args.dir.resolve() or args.dir.resolve() in inside.parents:
            raise ConfigError("--example-data must be outside the job folder: data never ships with a job")
    files = init_job(args.dir, args.template)
    print(f"wrote {', '.join(str(f) for f in files)} (template {args.template})")
    data = args.example_data or Path("DATA")
    if args.example_data is not None:
        folders = write_example_data(args.example_data)
        print(f"wrote example data for {len(folders)} sites under {args.example_data}")
    print(f"run it on this machine: secagg simulate {args.dir} --sites 2 --data-root {data}")
    print(f"then on a real federation: secagg job sign {args.dir} --kit SUBMITTER_KIT")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    kit = load_kit(args.kit)
    path = sign_job(args.job_dir, kit)
    print(f"wrote {path} and {path.with_name('manifest.sig')}, signed by {kit.identity.name}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    ca = load_kit(args.kit).ca_cert if args.kit else None
    try:
        job, decision = admit_job(args.job, policy, ca, trusted_root=args.trusted_root)
    except JobRejected as exc:
        for failure in exc.failures:
            print(f"FAIL {failure}")
        raise
    signer_reason = next(r for r in decision.reasons if r.rule == "signer")
    print(f"ok   authentic: manifest, signature and {len(job.manifest.files)} file digests verified")
    print(f"{'ok  ' if signer_reason.ok else 'FAIL'} {signer_reason.text}")
    if job.root != args.job:  # a tarball was extracted only to be checked; nothing will run from it
        shutil.rmtree(job.root, ignore_errors=True)
    if not signer_reason.ok:
        raise PolicyRefusal(signer_reason.text, code=signer_reason.code)
    return 0


def run_verify_bundle(args: argparse.Namespace) -> int:
    instance: Instance = "staging" if args.staging else "production"
    signer = verify_bundle(
        _read(args.file, DEFAULT_MAX_BYTES, "file"),  # what is signed is a job package at most
        _read(args.bundle, MAX_BUNDLE_BYTES, "sigstore bundle"),
        [SigstoreIdentity(args.identity, args.issuer, instance)],
        root_path=args.trusted_root or (TRUST_DIR / f"{instance}.trusted_root.json"),
    )
    print(f"OK: {args.file} was signed by {signer.describe()}")
    return 0


#: a sigstore bundle is a few KB (a certificate, a signature, a transparency-log entry)
MAX_BUNDLE_BYTES = 1 << 20


def _read(path: Path, max_bytes: int, what: str) -> bytes:
    """A user-named file, read by kind and bounded (:mod:`secagg.userfile`): a FIFO is refused."""
    return userfile.read_file(path, max_bytes, what)

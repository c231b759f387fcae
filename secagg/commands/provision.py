"""``secagg provision PROJECT.yaml -o WORKSPACE [--deploy compose,k8s,systemd]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from secagg.errors import ConfigError
from secagg.provision.deploy import TARGETS, DeployOptions, parse_targets, provision_with_deploy
from secagg.provision.project import load_project
from secagg.provision.writer import provision


def _targets(text: str) -> tuple[str, ...]:
    try:
        return parse_targets(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("provision", help="create the project CA and one startup kit per participant")
    p.add_argument("project", type=Path, help="project file (see deploy/project.example.yaml)")
    p.add_argument("-o", "--output", type=Path, required=True, help="workspace folder for the kits")
    p.add_argument("--force", action="store_true", help="replace the kits in a non-empty workspace")
    p.add_argument(
        "--deploy",
        type=_targets,
        metavar="LIST",
        help=f"also write deployment files under WORKSPACE/deploy/: any of {','.join(TARGETS)}",
    )
    p.add_argument(
        "--image",
        default=DeployOptions.image,
        help="container image for compose and Kubernetes (default: %(default)s; pin a digest in production)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    if args.deploy:
        options = DeployOptions(image=args.image)
        kits, files = provision_with_deploy(project, args.output, args.deploy, options, force=args.force)
    else:
        kits, files = provision(project, args.output, force=args.force), []
    for kit in kits:
        print(f"wrote startup kit {kit}")
    for path in files:
        print(f"wrote {path}")
    print(f"provisioner secrets (CA key) are in {args.output / '.provisioner'}: keep them offline")
    return 0

"""``secagg provision PROJECT.yaml -o WORKSPACE``."""

from __future__ import annotations

import argparse
from pathlib import Path

from secagg.provision.project import load_project
from secagg.provision.writer import provision


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("provision", help="create the project CA and one startup kit per participant")
    p.add_argument("project", type=Path, help="project file (see deploy/project.example.yaml)")
    p.add_argument("-o", "--output", type=Path, required=True, help="workspace folder for the kits")
    p.add_argument("--force", action="store_true", help="replace the kits in a non-empty workspace")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    kits = provision(project, args.output, force=args.force)
    for kit in kits:
        print(f"wrote startup kit {kit}")
    print(f"provisioner secrets (CA key) are in {args.output / '.provisioner'}: keep them offline")
    return 0

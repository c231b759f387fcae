"""Job intake shared by ``aggregator serve --job`` and ``admin submit``: verify, then submit.

Not a command group itself (``register`` adds nothing): the leading underscore keeps it private.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from secagg.aggregator.federation import Federation
from secagg.aggregator.hub import FederationHub
from secagg.jobs.job import verify_job
from secagg.jobs.signer import require_submitter
from secagg.provision.kit import Kit


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """No sub-command here."""


def submit_verified(fed: FederationHub | Federation, job_path: Path, kit: Kit) -> str:
    """The aggregator refuses a job not signed by a submitter role of this project."""
    scratch = Path(tempfile.mkdtemp(prefix="secagg-job-"))
    try:
        job = verify_job(job_path, kit.ca_cert, dest=scratch / "pkg")
        submitter = require_submitter(job.signers, f"job {job_path}")
        return fed.submit(job.root, submitter.describe(), source=job_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

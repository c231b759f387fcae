"""Verify a job package with the settings a site policy gives, then decide on it: the admission gate.

Authenticity (``verify_job``) and acceptability (``decide``) stay separate functions; this only wires
the policy's package size limit and sigstore identities into the first and hands its signer to the
second, so every caller (agent, CLI) admits jobs the same way.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from secagg.jobs.job import VerifiedJob, verify_job
from secagg.policy.decide import Decision, decide
from secagg.policy.model import SitePolicy

# re-exported: the ledger's own arithmetic of what a job may still spend (privacy knows no policy)
from secagg.privacy.ledger import debited_rounds, remaining_worst_case


def admit_job(
    path: Path | str,
    policy: SitePolicy,
    ca_cert: x509.Certificate | None,
    *,
    dest: Path | None = None,
    trusted_root: Path | None = None,
    now: dt.datetime | None = None,
) -> tuple[VerifiedJob, Decision]:
    """Raise ``JobRejected`` if the package is not authentic; otherwise return it with the decision
    (which may still refuse: call ``decision.raise_if_refused()`` before running anything)."""
    job = verify_job(
        path,
        ca_cert,
        trusted=policy.sigstore_identities(),
        trusted_root=trusted_root,
        max_bytes=policy.limits.max_package_bytes,
        now=now,
        dest=dest,
    )
    return job, decide(policy, job.spec, job.signers, job_root=job.root)


__all__ = ["admit_job", "debited_rounds", "remaining_worst_case"]

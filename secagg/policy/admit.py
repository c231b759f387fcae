"""Verify a job package with the settings a site policy gives, then decide on it: the admission gate.

Authenticity (``verify_job``) and acceptability (``decide``) stay separate functions; this only wires
the policy's package size limit and sigstore identities into the first and hands its signer to the
second, so every caller (agent, CLI) admits jobs the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509

from secagg.jobs.job import VerifiedJob, verify_job
from secagg.policy.decide import Decision, decide
from secagg.policy.model import SitePolicy
from secagg.privacy.ledger import Entry
from secagg.privacy.spend import Spend


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


def debited_rounds(entries: Iterable[Entry], job_id: str) -> set[int]:
    """The rounds of ``job_id`` this data set's ledger already holds a debit for."""
    return {e.round for e in entries if e.job == job_id}


def remaining_worst_case(spends: Sequence[Spend], rounds: int, rounds_debited: int) -> list[Spend]:
    """The declared worst case of the rounds a job has not debited yet.

    ``spends`` is the whole job's worst case (the per-round chain repeated ``rounds`` times, as
    :func:`secagg.privacy.specs.worst_case_spends` makes it). A site that restarts after a debit
    re-admits its own running job: what it already spent is in the ledger, so counting its whole
    worst case again would count those rounds twice and refuse a job that still fits. The ledger's
    debit check still refuses any round that would pass the budget, so this never allows overspend."""
    if rounds <= 0 or not spends:
        return []
    per_round = len(spends) // rounds
    left = min(max(rounds - rounds_debited, 0), rounds)
    return list(spends[: per_round * left])

"""The aggregator's state of a job and of its current round, and the names of their states.

``JobState`` and ``Phase`` are ``StrEnum`` s: a member *is* its stored string (``JobState.RUNNING ==
"running"``), so the store, the audit log, the admin console's JSON and the wire read as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secagg.bundle import BundleSpec
from secagg.errors import SecaggError
from secagg.jobs.spec import JobSpec
from secagg.reasons import Reason

if TYPE_CHECKING:
    from secagg.aggregator.global_model import GlobalModel
    from secagg.aggregator.server_step import StateFile


class JobState(StrEnum):
    """(queued ->) running -> finalizing -> finished; aborted by an admin; failed when the aggregator
    cannot go on. A job is queued while ``max_jobs`` others run (:mod:`secagg.aggregator.scheduler`)."""

    #: no job (heartbeats and ``wait`` tasks only; never stored)
    IDLE = "idle"
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.FINISHED, JobState.ABORTED, JobState.FAILED)


class Phase(StrEnum):
    """ready -> upload -> combining; a mode with phases of its own (mask) runs them after the roster."""

    READY = "ready"
    UPLOAD = "upload"
    #: a mode's own phases after the roster (mask: key advertisement, share routing, unmasking)
    MASK = "mask"
    COMBINING = "combining"


class Signal(StrEnum):
    """What the aggregator answers a site's collect with when there is nothing for it."""

    #: the site's round (or attempt) is over: it was retried, or finished without the site
    CANCELLED = "cancelled"
    #: the phase is published, but holds nothing for this site (the aggregator left it out)
    NOT_FOR_YOU = "not_for_you"


@dataclass
class RoundRun:
    round: int
    attempt: int
    started: float = field(default_factory=time.monotonic)
    phase: Phase = Phase.READY
    ready: dict[str, dict[str, Any]] = field(default_factory=dict)
    roster: dict[str, Any] | None = None
    #: accepted uploads: site (its mTLS identity) -> spooled file
    uploads: dict[str, Path] = field(default_factory=dict)
    phase_started: float = field(default_factory=time.monotonic)
    #: a mode's own per-round state (mask: the round's ``MaskRun``); None for modes without phases
    mode_state: Any = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # per site, sent with the upload
    #: sites sitting out this round only (their training failed): not waited for in it
    declined: set[str] = field(default_factory=set)
    #: a retried attempt is not offered to sites before this (``time.monotonic``): its backoff
    not_before: float = 0.0


@dataclass
class JobRun:
    job_id: str
    spec: JobSpec
    package: Path
    bundle_spec: BundleSpec
    #: modes whose aggregator sees the model only: the current global model, on disk
    global_model: GlobalModel | None
    #: plaintext modes: the server optimizer's state file (None before the first round)
    strategy_state: StateFile | None = None
    completed: int = 0
    current: RoundRun | None = None
    state: JobState = JobState.RUNNING
    final_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    declined: set[str] = field(default_factory=set)  # sites that refused the job: not waited for
    #: why each of ``declined`` refused the job (its reason code)
    refusals: dict[str, str] = field(default_factory=dict)
    finalize_started: float = 0.0
    #: attempts retried in a row since the last completed round (the backoff grows with it)
    retries: int = 0
    #: ``evaluation: cross_site``: its state once finalizing (``secagg.aggregator.evaluation.CrossSite``)
    evaluation: Any = None


class SitesRefused(SecaggError):
    """Too few sites are left that have not refused the job for good: no retry can complete a round.

    ``code`` is the sites' own reason when they agree (``tee_key_changed`` after a restart the enclave's
    keys did not survive, a policy refusal), else ``sites_refused``."""

    def __init__(self, job: JobRun, sites: list[str], round_: int) -> None:
        codes = {job.refusals.get(s, Reason.POLICY) for s in job.declined}
        self.code: str = codes.pop() if len(codes) == 1 else Reason.SITES_REFUSED
        left = len(set(sites) - job.declined)
        named = ", ".join(f"{s} {job.refusals.get(s, '?')}" for s in sorted(job.declined))
        super().__init__(
            f"round {round_}: {len(job.declined)} of {len(sites)} sites refused the job ({named}); "
            f"{left} left, the job needs {job.spec.min_sites}: a retry cannot complete a round"
        )


def refused_for_good(job: JobRun, sites: list[str], round_: int) -> SitesRefused | None:
    """Pure: why ``job`` cannot go on because too few of ``sites`` have not refused it, or None."""
    if not job.declined or len(set(sites) - job.declined) >= job.spec.min_sites:
        return None
    return SitesRefused(job, sites, round_)


#: the first retry of a round runs at once; each further one in a row waits twice as long, up to this
RETRY_MAX_S = 10.0
RETRY_BASE_S = 0.5


def retry_delay(retries: int) -> float:
    """Seconds a round's ``retries``-th retry in a row waits: 0, 0.5, 1, 2, ... up to ``RETRY_MAX_S``.

    A round every site declines would otherwise run again at once, for ever (hundreds of fsynced
    audit lines a second); a real retry (one site dropped) still runs again at once."""
    if retries <= 1:
        return 0.0
    return min(RETRY_BASE_S * 2.0 ** min(retries - 2, 32), RETRY_MAX_S)


__all__ = [
    "RETRY_MAX_S",
    "JobRun",
    "JobState",
    "Phase",
    "RoundRun",
    "Signal",
    "SitesRefused",
    "refused_for_good",
    "retry_delay",
]

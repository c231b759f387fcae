"""The aggregator's one object for the gRPC service and the admin console: it routes to each job.

Every site call names its job (``job_id`` in the request or header); the hub hands it to that job's
:class:`~secagg.aggregator.federation.Federation`, so jobs never see one another's rounds, rosters or
uploads. A call for a job this aggregator does not run goes to a Federation without a job, which
refuses it as every single-job aggregator did (``no_such_job``, a cancelled round). What is not one
job's (HE key custody, attestation, audit heads, heartbeats) goes to that jobless Federation too.

Which jobs run is the :class:`~secagg.aggregator.scheduler.JobScheduler`'s; this module only routes.
Sites learn the running jobs from the ``jobs`` topic (:meth:`FederationHub.jobs_for`); an agent that
asks for tasks without naming a job (an older one) is given the oldest running job's, as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from secagg.aggregator.federation import Federation
from secagg.aggregator.modes import ModeBase
from secagg.aggregator.rounds import JobRun, JobState, Signal
from secagg.aggregator.scheduler import JobScheduler
from secagg.aggregator.shared import Shared
from secagg.errors import ConfigError, SecaggError
from secagg.provision.identity import Identity
from secagg.provision.kit import Kit
from secagg.reasons import Reason


class FederationHub:
    """Up to ``kit.config.max_jobs`` jobs at once over one store, audit log and spool."""

    def __init__(
        self,
        kit: Kit,
        state_dir: Path,
        *,
        max_upload_bytes: int = 64 << 30,
        enclave: Any = None,
        max_jobs: int | None = None,
    ) -> None:
        self.kit = kit
        self.enclave = enclave
        self.state_dir = state_dir
        self.sites = list(kit.config.sites)
        self.shared = Shared.open(kit, state_dir)
        self.store = self.shared.store
        self.audit = self.shared.audit
        self.cond = self.shared.cond
        self.heartbeats = self.shared.heartbeats
        self.stop_event = self.shared.stop_event

        def make() -> Federation:
            return Federation(
                kit, state_dir, max_upload_bytes=max_upload_bytes, enclave=enclave, shared=self.shared
            )

        #: what belongs to no job (key custody, attestation, audit heads), and calls for unknown jobs
        self.base = make()
        self.scheduler = JobScheduler(self.shared, make, max_jobs=max_jobs or kit.config.max_jobs)
        self.scheduler.resume()

    @property
    def max_jobs(self) -> int:
        return self.scheduler.max_jobs

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    @stopping.setter
    def stopping(self, value: bool) -> None:
        if value:
            self.stop_event.set()
        else:
            self.stop_event.clear()

    # ------------------------------------------------------------------ jobs
    def _fed(self, job_id: Any) -> Federation:
        fed = self.scheduler.feds.get(job_id) if isinstance(job_id, str) else None
        return fed if fed is not None else self.base

    @property
    def job(self) -> JobRun | None:
        """The oldest running job; without one, the job started last (what a single-job aggregator
        called its job: heartbeats and ``admin status`` without a job id show it)."""
        live = self.scheduler.live()
        if live:
            return live[0].job
        feds = list(self.scheduler.feds.values())
        return feds[-1].job if feds else None

    @property
    def mode(self) -> ModeBase | None:
        """The mode object of :attr:`job` (each job's own is its Federation's ``mode``)."""
        job = self.job
        return self._fed(job.job_id).mode if job is not None else None

    def live_job(self, job_id: str) -> JobRun | None:
        return self._fed(job_id).live_job(job_id)

    def running(self) -> list[JobRun]:
        return [f.job for f in self.scheduler.live() if f.job is not None]

    @property
    def current_mode(self) -> str:
        """The modes of the running jobs (a metrics label), ``none`` without one."""
        modes = sorted({j.spec.mode for j in self.running()})
        return "+".join(modes) if modes else "none"

    def mode_of(self, job_id: str) -> str:
        """``job_id``'s mode (a metrics label: each job's rounds are counted under its own mode)."""
        return self._fed(job_id).mode_of(job_id)

    def submit(self, job_dir: Path, submitter: str, source: Path | None = None) -> str:
        """Check and keep a verified job; it runs at once, or queues behind ``max_jobs`` others."""
        return self.scheduler.submit(lambda fed, start: fed.submit(job_dir, submitter, source, start=start))

    def abort(self, job_id: str, by: str) -> None:
        """Abort one running job (the others go on) or take a queued one out of the queue."""
        if self.scheduler.abort_queued(job_id, by):
            return
        fed = self.scheduler.feds.get(job_id)
        job = fed.live_job(job_id) if fed is not None else None
        if fed is None or job is None or job.state.terminal:
            exc = ConfigError(f"job {job_id} is neither queued nor running")
            exc.code = Reason.NOT_QUEUED
            raise exc
        fed.abort(job_id, by)

    def jobs_for(self, site: str) -> dict[str, Any]:
        """What a site polls to learn which jobs to serve: the running ones, and how many wait."""
        with self.cond:
            self.heartbeats[site] = time.time()
        live, queued = self.scheduler.snapshot()
        jobs = [
            {"job_id": j.job_id, "mode": j.spec.mode, "rounds": j.spec.rounds, "state": str(j.state)}
            for j in (f.job for f in live)
            if j is not None
        ]
        return {"jobs": jobs, "queued": queued, "max_jobs": self.max_jobs}

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.scheduler.join()

    # ------------------------------------------------------------------ site-facing, routed by job
    def heartbeat(self, site: str, job_id: str = "") -> str:
        """``job_id``'s state (a finished one's from the store), or the hub's job's without one."""
        self.base.heartbeat(site)
        if job_id:
            live = self.live_job(job_id)
            if live is not None:
                return str(live.state)
            row = self.store.job(job_id)
            return str(row.state) if row is not None else str(JobState.IDLE)
        job = self.job
        return str(job.state if job is not None else JobState.IDLE)

    def next_task(
        self, site: str, job_id: str, after_round: int, after_attempt: int, has_global: int, wait_s: float
    ) -> dict[str, Any]:
        fed = self.scheduler.feds.get(job_id) if job_id else None
        if fed is not None:
            return fed.next_task(site, after_round, after_attempt, has_global, wait_s)
        if job_id:
            # a job that ended, or one this aggregator does not know: the site's thread for it ends
            row = self.store.job(job_id)
            if row is None or JobState(row.state).terminal:
                state = row.state if row is not None else "unknown to this aggregator"
                return {"job_id": job_id, "kind": "stop", "reason": f"job {state}"}
            with self.cond:  # queued: nothing to offer yet (a long poll, not a spin)
                if not self.stopping:
                    self.cond.wait(timeout=wait_s)
            return {"kind": "wait", "job_state": str(row.state)}
        # an agent that names no job (an older one): the oldest running job's task, from the start
        deadline = time.monotonic() + wait_s
        with self.cond:
            while not (live := self.scheduler.live()):
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    return {"kind": "wait", "job_state": str(JobState.IDLE)}
                self.cond.wait(timeout=min(left, 1.0))
        oldest = live[0]
        return oldest.next_task(site, 0, 0, 0, max(deadline - time.monotonic(), 0))

    def payload(self, header: dict[str, Any]) -> Iterator[bytes]:
        return self._fed(header.get("job_id")).payload(header)

    def package(self, job_id: str) -> Path:
        """The signed package a site fetches to verify for itself (running jobs only)."""
        job = self.live_job(job_id)
        if job is None:
            raise _no_job(job_id)
        return job.package

    def post_ready(self, site: str, job_id: str, round_: int, payload: bytes) -> None:
        self._fed(job_id).post_ready(site, job_id, round_, payload)

    def decline(
        self, site: str, job_id: str, round_: int, code: str, message: str, *, round_only: bool = False
    ) -> None:
        self._fed(job_id).decline(site, job_id, round_, code, message, round_only=round_only)

    def roster(self, job_id: str, round_: int, wait_s: float) -> dict[str, Any] | None:
        return self._fed(job_id).roster(job_id, round_, wait_s)

    def accept_upload(self, site: str, header: dict[str, Any], chunks: Iterator[Any]) -> None:
        job_id = header.get("job_id") if isinstance(header, dict) else None
        self._fed(job_id).accept_upload(site, header, chunks)

    def post_final(self, site: str, job_id: str, payload: bytes) -> None:
        self._fed(job_id).post_final(site, job_id, payload)

    def mode_post(self, site: str, topic: str, job_id: str, round_: int, payload: bytes) -> None:
        self._fed(job_id).mode_post(site, topic, job_id, round_, payload)

    def mode_collect(
        self, site: str, topic: str, job_id: str, round_: int, attempt: int, wait_s: float
    ) -> bytes | Signal | None:
        return self._fed(job_id).mode_collect(site, topic, job_id, round_, attempt, wait_s)

    def xsite_post(self, site: Identity, topic: str, job_id: str, payload: bytes) -> None:
        self._fed(job_id).xsite_post(site, topic, job_id, payload)

    def xsite_collect(self, site: str, topic: str, job_id: str, wait_s: float) -> bytes | Signal | None:
        return self._fed(job_id).xsite_collect(site, topic, job_id, wait_s)

    def xsite_upload(self, site: Identity, header: dict[str, Any], chunks: Iterator[Any]) -> None:
        self._fed(header.get("job_id")).xsite_upload(site, header, chunks)

    def xsite_fetch(self, site: str, job_id: str, sender: str) -> tuple[dict[str, Any], BinaryIO] | Signal:
        return self._fed(job_id).xsite_fetch(site, job_id, sender)

    def owed_final(self, seen_within_s: float) -> list[str]:
        """Sites still owed the final model of any finished job (see ``Federation.owed_final``)."""
        owed: set[str] = set()
        for fed in list(self.scheduler.feds.values()):
            owed.update(fed.owed_final(seen_within_s))
        return sorted(owed)

    # ------------------------------------------------------------------ no job's
    def attest(self, site: str, job_id: str, nonce: bytes) -> bytes:
        return self.base.attest(site, job_id, nonce)

    def accept_key_release(self, site: str, payload: bytes) -> None:
        self.base.accept_key_release(site, payload)

    def key_release(self, wait_s: float) -> bytes | None:
        return self.base.key_release(wait_s)

    def accept_audit_head(self, site: Identity, job_id: str, payload: bytes) -> None:
        self.base.accept_audit_head(site, job_id, payload)

    def driver_failed(self, exc: BaseException) -> None:
        self.base.driver_failed(exc)


def _no_job(job_id: str) -> SecaggError:
    exc = SecaggError(f"no running job {job_id}")
    exc.code = Reason.NO_SUCH_JOB
    return exc


__all__ = ["FederationHub"]

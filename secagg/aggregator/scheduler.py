"""Which jobs run: up to ``max_jobs`` at once, each with a Federation and a round driver of its own.

A submission starts at once while fewer than ``max_jobs`` jobs run and none waits before it; otherwise
it is recorded as ``queued`` in the store (so a restarted aggregator still has its queue) and starts,
in submission order, when a running job ends (finished, aborted or failed). A queued job is checked
and kept exactly as one that starts at once: its package, model and audit line are there from the
submission. A restarted aggregator resumes every job that was running, then fills free slots from the
queue.

Each running job is stepped by a driver thread of its own, so one job's slow combine (an HE sum, a
mask round waiting for its timeout) never holds up another's rounds. An exception in a step fails
that job (its reason and audit line) and never the driver of another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from secagg.aggregator.federation import Federation
from secagg.aggregator.rounds import JobState, retry_delay
from secagg.aggregator.shared import Shared
from secagg.aggregator.store import JobRow
from secagg.errors import ConfigError, is_storage_full
from secagg.events import Event
from secagg.reasons import Reason

log = logging.getLogger(__name__)


class JobScheduler:
    """Starts, queues and drives the aggregator's jobs; ``make_fed`` builds a Federation over ``shared``."""

    def __init__(self, shared: Shared, make_fed: Callable[[], Federation], *, max_jobs: int) -> None:
        if max_jobs < 1:
            raise ConfigError(f"max_jobs must be at least 1, got {max_jobs}")
        self.shared = shared
        self.max_jobs = max_jobs
        self._make_fed = make_fed
        #: every job started by this process, in start order (live and ended: sites still ask them)
        self.feds: dict[str, Federation] = {}
        self._threads: dict[str, threading.Thread] = {}
        #: one decision at a time about which job runs (never held while waiting on ``shared.cond``)
        self._lock = threading.RLock()
        self._driving = False

    # ------------------------------------------------------------------ views
    def live(self) -> list[Federation]:
        """The running (or finalizing) jobs' Federations, oldest first."""
        return [f for f in list(self.feds.values()) if f.job is not None and not f.job.state.terminal]

    def queued(self) -> list[JobRow]:
        """The queued jobs, in the order they will start."""
        return [r for r in self.shared.store.jobs() if r.state == JobState.QUEUED]

    def snapshot(self) -> tuple[list[Federation], int]:
        """The running jobs and the length of the queue, as of one moment: taken between two
        decisions, never in the middle of one (a queued job being started is neither in the queue nor
        running yet, and a site told "nothing runs, nothing waits" then would leave)."""
        with self._lock:
            return self.live(), len(self.queued())

    def _free(self) -> bool:
        return len(self.live()) < self.max_jobs

    # ------------------------------------------------------------------ decisions
    def resume(self) -> None:
        """Take up every job that was running when the aggregator stopped (its slots are its own,
        even if ``max_jobs`` is smaller now); queued jobs wait for :meth:`start`."""
        with self._lock:
            for row in self.shared.store.jobs():
                if row.state != JobState.RUNNING or row.job_id in self.feds:
                    continue
                fed = self._make_fed()
                try:
                    fed.resume(row)
                except ConfigError as exc:  # the job failed (store and audit line); the others go on
                    log.warning("%s", exc)
                    continue
                self.feds[row.job_id] = fed

    def submit(self, submit: Callable[[Federation, bool], str]) -> str:
        """Run ``submit(fed, start)`` on a new Federation: ``start`` when a slot is free and no job
        waits before this one (first come, first run). Returns the job id."""
        with self._lock:
            start = self._free() and not self.queued()
            fed = self._make_fed()
            job_id = submit(fed, start)
            if start:
                self.feds[job_id] = fed
                if self._driving:
                    self._drive(fed)
        return job_id

    def abort_queued(self, job_id: str, by: str) -> bool:
        """Take a queued job out of the queue (``job_aborted``); False if it is not queued."""
        with self._lock:
            row = self.shared.store.job(job_id)
            if row is None or row.state != JobState.QUEUED:
                return False
            self.shared.store.set_job_state(job_id, JobState.ABORTED, reason=f"aborted by {by} while queued")
        self.shared.audit.append(Event.JOB_ABORTED, job=job_id, by=by, queued=True)
        return True

    def start(self) -> None:
        """Start the drivers of the running jobs, then fill the free slots from the queue."""
        with self._lock:
            self._driving = True
            for fed in self.live():
                self._drive(fed)
        self._fill()

    def _fill(self) -> None:
        with self._lock:
            while not self.shared.stop_event.is_set() and self._free():
                queue = self.queued()
                if not queue:
                    return
                row = queue[0]
                fed = self._make_fed()
                try:
                    fed.start_queued(row)  # a job that cannot start is failed (and leaves the queue)
                except ConfigError as exc:
                    log.warning("queued job %s did not start: %s", row.job_id, exc)
                    continue
                self.feds[row.job_id] = fed
                self._drive(fed)

    # ------------------------------------------------------------------ drivers
    def _drive(self, fed: Federation) -> None:
        job = fed.job
        assert job is not None
        if job.job_id in self._threads:
            return
        t = threading.Thread(target=self._run, args=(fed,), name=f"round-driver-{job.job_id}", daemon=True)
        self._threads[job.job_id] = t
        t.start()

    def _run(self, fed: Federation) -> None:
        """Advance one job's rounds until it ends or the service stops; then the next queued job runs.
        A step that keeps failing (a broken disk) backs off on the stop event."""
        stop = self.shared.stop_event
        failures = 0
        while not stop.is_set() and fed.job is not None and not fed.job.state.terminal:
            try:
                fed.step()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the job fails, the driver and the other jobs go on
                failures += 1
                if is_storage_full(exc):  # a pause, not a failure: the step is retried once space returns
                    log.warning("job %s waits: the state disk is full (%s)", fed.job.job_id, exc)
                else:
                    fed.driver_failed(exc)
                stop.wait(retry_delay(failures + 1))
        if not stop.is_set():
            try:
                self._fill()
            except Exception as exc:  # noqa: BLE001 - the queue is retried when the next job ends
                log.exception("could not start the next queued job")
                self.shared.audit.append(Event.DRIVER_ERROR, code=Reason.ERROR, reason=str(exc)[:500])

    def driving(self) -> list[str]:
        """The jobs whose driver thread is alive."""
        return [j for j, t in list(self._threads.items()) if t.is_alive()]

    def join(self, timeout: float = 5.0) -> None:
        for t in list(self._threads.values()):
            t.join(timeout)


__all__ = ["JobScheduler"]

"""The site agent's running jobs: one thread per job, and what became of each.

The agent's main loop asks the aggregator which jobs run and starts a thread for each one it has not
seen; a job's thread serves that job's tasks (its own training worker, its own rounds) until the job
ends at this site. A job is seen once: a job that ended here, failed here or was declined is never
started again by the same agent run. Errors are kept per job for the loop to raise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("secagg.agent")


class JobThreads:
    """Threads serving one job each; ``serve(job_id)`` is what each runs."""

    def __init__(self, serve: Callable[[str], None]) -> None:
        self._serve = serve
        self._threads: dict[str, threading.Thread] = {}
        #: jobs started or skipped by this agent run (never started again)
        self._seen: set[str] = set()
        #: jobs served to their end (or failure) by this run
        self.served: list[str] = []
        #: job -> what its thread raised
        self.errors: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    def known(self, job_id: str) -> bool:
        return job_id in self._seen

    def skip(self, job_id: str) -> None:
        """A job this site declined: not started, and not asked about again."""
        self._seen.add(job_id)

    def start(self, job_id: str) -> None:
        self._seen.add(job_id)
        t = threading.Thread(target=self._run, args=(job_id,), name=f"job-{job_id}", daemon=True)
        self._threads[job_id] = t
        t.start()

    def _run(self, job_id: str) -> None:
        try:
            self._serve(job_id)
        except BaseException as exc:  # noqa: BLE001 - kept for the agent's loop to raise
            with self._lock:
                self.errors[job_id] = exc

    def active(self) -> list[str]:
        return [j for j, t in self._threads.items() if t.is_alive()]

    def reap(self) -> None:
        """Forget the threads that ended (their jobs count as served)."""
        for job_id, t in list(self._threads.items()):
            if not t.is_alive():
                t.join()
                del self._threads[job_id]
                self.served.append(job_id)
                if job_id in self.errors:
                    log.warning("job %s ended at this site with %s", job_id, self.errors[job_id])


__all__ = ["JobThreads"]

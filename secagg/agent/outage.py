"""One outage of the aggregator as one of the agent's loops sees it: a line when it starts, one when
it ends.

The job loop and each job's thread retry a lost aggregator once a second; a line per failed try made
81-84 ``connection_lost`` lines for a 60 s cut and up to about 600 before the agent gave up
(RELIABILITY.md, "Partitions in every mode"). Now each loop writes ``connection_lost`` once, at its
first failed try, and ``connection_restored`` at the first call answered after it, with how long the
aggregator did not answer (``outage_s``) and how many tries failed (``failed_tries``). The tries go on
at the same pace; only the log is quieter.

An aggregator that answers but refuses for now (``UNAVAILABLE`` with a reason: ``storage_full``, its
disk full) is reachable all along: its outage ends only when a try of the loop gets through, not at
the first call answered, or each refused try would make a pair of lines (``refused``).
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from secagg.agent.relay import reason_of
from secagg.auditlog import AuditLog
from secagg.events import Event


class Outage:
    """The loop's current outage, if any. ``fields`` (``job``) go on both of its lines."""

    def __init__(self, audit: AuditLog, **fields: Any) -> None:
        self.audit = audit
        self.fields = fields
        #: ``time.monotonic()`` of the first failed try of the outage; None while the aggregator answers
        self.since: float | None = None
        self.tries = 0
        #: the last failed try was a refusal with a reason (the aggregator answered): a call answered
        #: now says nothing of whether the loop's work gets through
        self.refused = False

    def failed(self, exc: grpc.RpcError) -> float:
        """A try failed for want of the aggregator: the outage's first writes its line. The seconds
        since the outage began."""
        now = time.monotonic()
        self.tries += 1
        self.refused = reason_of(exc) is not None
        if self.since is None:
            self.since = now
            self.audit.append(
                Event.CONNECTION_LOST, **self.fields, code=str(exc.code()), detail=exc.details()
            )
        return now - self.since

    def answered(self) -> None:
        """A call was answered: an outage in course ends with its line."""
        if self.since is None:
            return
        outage_s, tries = time.monotonic() - self.since, self.tries
        self.since, self.tries, self.refused = None, 0, False
        self.audit.append(
            Event.CONNECTION_RESTORED, **self.fields, outage_s=round(outage_s, 3), failed_tries=tries
        )


__all__ = ["Outage"]

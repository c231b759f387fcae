"""What every job of one aggregator shares: the store, the audit log, the spool, one lock, heartbeats.

Each running job has a :class:`~secagg.aggregator.federation.Federation` of its own (its rounds,
roster, mode object and combiner); they are built over one :class:`Shared`, so that every job's lines
go into the one hash-chained audit log, its rows into the one store, and a stop ends every wait at
once. A Federation built without one opens its own (a single-job aggregator, as in tests).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from secagg.aggregator.spool import Spool
from secagg.aggregator.store import StateStore
from secagg.auditlog import AuditLog
from secagg.provision.kit import Kit


@dataclass
class Shared:
    store: StateStore
    audit: AuditLog
    spool: Spool
    #: one condition variable for every job: a site's long poll for any job wakes on any change
    cond: threading.Condition = field(default_factory=threading.Condition)
    #: site -> time.time() of its last call (connectedness is per site, not per job)
    heartbeats: dict[str, float] = field(default_factory=dict)
    #: set when the service stops: every driver and long wait ends at once
    stop_event: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, kit: Kit, state_dir: Path) -> Shared:
        return cls(
            store=StateStore(state_dir),
            audit=AuditLog(state_dir / "audit.jsonl", key=kit.private_key, node=kit.name),
            spool=Spool(state_dir / "spool"),
        )


__all__ = ["Shared"]

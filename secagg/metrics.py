"""Prometheus metrics for the aggregator and the site agent, on their own port, loopback by default.

Operators watch throughput and refusals, never content: no metric or label carries update values,
data, or key material; labels are only the aggregation mode, reason codes, event kinds and, at a
site, the job id (what its audit log and ``admin list`` show already). Each
process object owns a dedicated ``CollectorRegistry`` (tests create many servers in one process, and a
global registry would refuse the second set of names).

The aggregator's metrics are an observer: driven by its audit log (``AuditLog.listeners``), so
federation code needs no metric calls (whatever is audited is counted, and nothing counted escapes the
audit trail), plus :meth:`AggregatorMetrics.sent`, the byte counter the gRPC service calls for every
piece of a global model or aggregate it sends. This module imports nothing of the aggregator: what it
observes is anything shaped like :class:`Observed`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from secagg.events import JOB_OUTCOMES, REFUSALS, Event

#: a site counts as connected if it polled or sent a heartbeat this recently (agents poll every <= 30 s)
CONNECTED_WITHIN_S = 90.0
ROUND_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"))
#: audit events that are refusals; their ``code`` becomes the ``code`` label
REFUSAL_EVENTS = REFUSALS
#: set to an address (e.g. 0.0.0.0 in a container) to expose metrics beyond loopback
HOST_ENV = "SECAGG_METRICS_HOST"


class _Endpoint:
    """The HTTP endpoint shared by both metric sets."""

    registry: CollectorRegistry

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: Any = None
        self.port: int | None = None

    def serve(self, port: int | None, host: str | None = None) -> int | None:
        """Expose ``/metrics`` on ``host:port`` (``port`` None: do nothing; 0: any free port).

        Binds loopback unless ``host`` or ``$SECAGG_METRICS_HOST`` says otherwise: metrics reveal
        timing and participation, which is for the operator, not the network."""
        if port is None or self._server is not None:
            return self.port
        addr = host or os.environ.get(HOST_ENV) or "127.0.0.1"
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server, self.port = server, int(server.server_port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Listened(Protocol):
    listeners: list[Callable[[dict[str, Any]], None]]


class Observed(Protocol):
    """What the aggregator's metrics observe (the aggregator's ``Federation`` is one)."""

    @property
    def audit(self) -> _Listened: ...

    @property
    def heartbeats(self) -> Mapping[str, float]: ...

    @property
    def current_mode(self) -> str: ...

    def mode_of(self, job_id: str) -> str:
        """The mode of the running job ``job_id`` (``none`` for a job it does not run)."""
        ...


class AggregatorMetrics(_Endpoint):
    """Rounds, round time, connected sites, payload bytes per mode, refusals by reason code."""

    def __init__(self, fed: Observed) -> None:
        super().__init__()
        self.fed = fed
        r = self.registry
        self.rounds = Counter("secagg_rounds_completed", "Rounds completed", ["mode"], registry=r)
        self.round_seconds = Histogram(
            "secagg_round_seconds",
            "Wall time of a completed round",
            ["mode"],
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.connected = Gauge(
            "secagg_connected_sites", f"Sites heard from in the last {CONNECTED_WITHIN_S:.0f} s", registry=r
        )
        self.connected.set_function(self._connected_sites)
        self.bytes_in = Counter(
            "secagg_bytes_received", "Protected update bytes accepted from sites", ["mode"], registry=r
        )
        self.bytes_out = Counter(
            "secagg_bytes_sent", "Global model / aggregate bytes sent to sites", ["mode"], registry=r
        )
        self.refusals = Counter(
            "secagg_refusals", "Refusals by reason code and audit event", ["code", "event"], registry=r
        )
        self.jobs = Counter("secagg_jobs", "Jobs by outcome", ["outcome"], registry=r)
        fed.audit.listeners.append(self.observe)

    def _mode(self, record: dict[str, Any]) -> str:
        """The mode of the record's job: with several jobs at once, each round and upload is counted
        under its own job's mode, never under the running jobs' modes together."""
        job = record.get("job")
        return self.fed.mode_of(job) if isinstance(job, str) and job else self.fed.current_mode

    def _connected_sites(self) -> float:
        now = time.time()
        return float(sum(1 for t in dict(self.fed.heartbeats).values() if now - t <= CONNECTED_WITHIN_S))

    def sent(self, mode: str, nbytes: int) -> None:
        """Byte counter: the service calls this for every piece of a task payload (global model or
        aggregate) it sends to a site, the one place they leave the aggregator."""
        self.bytes_out.labels(mode=mode).inc(nbytes)

    def observe(self, record: dict[str, Any]) -> None:
        """Audit listener."""
        event = record.get("event")
        if event == Event.ROUND_COMPLETED:
            mode = self._mode(record)
            self.rounds.labels(mode=mode).inc()
            self.round_seconds.labels(mode=mode).observe(float(record.get("seconds", 0.0)))
        elif event == Event.UPLOAD_ACCEPTED:
            self.bytes_in.labels(mode=self._mode(record)).inc(float(record.get("bytes") or 0))
        elif event in REFUSAL_EVENTS:
            self.refusals.labels(code=str(record.get("code", "error")), event=str(event)).inc()
        elif event in JOB_OUTCOMES:
            self.jobs.labels(outcome=str(event).removeprefix("job_")).inc()


class SiteMetrics(_Endpoint):
    """The site agent's metrics; the agent calls these methods (it has no audit listener to drive them).

    A site serves several jobs at once, so every per-round and per-job series carries the ``job`` label
    (with the job's ``mode``): two jobs' rounds, bytes and round times are two series, never one that
    both add to. One series per job the site served: a handful, as jobs are admitted one by one.
    Privacy budget is the data set's, whichever job spends it, so its gauges have no job: they are the
    numbers the ledger already shows the operator (epsilon, delta spent and left), never anything
    derived from the data."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.rounds = Counter(
            "secagg_site_rounds_completed", "Rounds this site uploaded", ["job", "mode"], registry=r
        )
        self.round_seconds = Histogram(
            "secagg_site_round_seconds",
            "Wall time of a round at this site (train, protect, upload)",
            ["job", "mode"],
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.bytes_sent = Counter(
            "secagg_site_bytes_sent", "Protected update bytes uploaded", ["job", "mode"], registry=r
        )
        self.bytes_received = Counter(
            "secagg_site_bytes_received",
            "Global model / aggregate bytes received",
            ["job", "mode"],
            registry=r,
        )
        self.refusals = Counter(
            "secagg_site_refusals",
            "Jobs and rounds this site declined, by job and reason code",
            ["job", "code"],
            registry=r,
        )
        budget = ["quantity"]
        self.budget_spent = Gauge("secagg_privacy_budget_spent", "Privacy budget spent", budget, registry=r)
        self.budget_left = Gauge("secagg_privacy_budget_left", "Privacy budget left", budget, registry=r)
        self._lock = threading.Lock()

    def round_done(self, job: str, mode: str, seconds: float) -> None:
        self.rounds.labels(job=job, mode=mode).inc()
        self.round_seconds.labels(job=job, mode=mode).observe(seconds)

    def sent(self, job: str, mode: str, nbytes: int) -> None:
        self.bytes_sent.labels(job=job, mode=mode).inc(nbytes)

    def received(self, job: str, mode: str, nbytes: int) -> None:
        self.bytes_received.labels(job=job, mode=mode).inc(nbytes)

    def refused(self, job: str, code: str) -> None:
        """``job`` is empty for a refusal that is no job's (the aggregator's attestation, say)."""
        self.refusals.labels(job=job, code=code).inc()

    def budget(
        self, *, epsilon_spent: float, epsilon_left: float, delta_spent: float, delta_left: float
    ) -> None:
        with self._lock:
            self.budget_spent.labels(quantity="epsilon").set(epsilon_spent)
            self.budget_left.labels(quantity="epsilon").set(epsilon_left)
            self.budget_spent.labels(quantity="delta").set(delta_spent)
            self.budget_left.labels(quantity="delta").set(delta_left)

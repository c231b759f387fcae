"""Cross-site evaluation at the aggregator: a relay of signed consents and sealed models, and the matrix.

A job with ``evaluation: cross_site`` stays *finalizing* after its last round until this is done:

1. **consents**: every site (that has not declined the job) posts its signed consent (does it share its
   last local model?). The set is fixed when every site answered or after the job's round timeout;
   local models travel only if every site in it shares, and there are at least two.
2. **models**: each consenting site posts its local model sealed to each other one
   (:mod:`secagg.crossval.seal`); a site's inbox is published once every other site's envelope for it
   is in, or after the round timeout.
3. **metrics**: each site posts what it measured of the global model and of each model in its inbox.
   After every site answered (or twice the round timeout), the matrix is written to the job's output
   (:mod:`secagg.crossval.matrix`) and the job finishes.

What the aggregator holds of a local model is only ever the sealed envelope, on disk under the job's
``xsite/`` folder until the matrix is written, then removed: it has no key that opens it, in any mode.
It checks each envelope's and consent's signature against the caller's mTLS certificate so that
garbage is refused at once, but the sites do not rely on that: they check every signature themselves.

Known limits: an aborted job leaves its sealed envelopes (ciphertext) under ``xsite/``; this state
lives in memory; an aggregator restarted during the evaluation writes the
matrix from what is posted after the restart (the global row from the sites' final metrics at least).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from secagg.aggregator.rounds import JobRun, Signal
from secagg.crossval import wire
from secagg.crossval.matrix import JSON_FILE, PNG_FILE, Matrix
from secagg.crossval.seal import Consent, Envelope, EnvelopeError
from secagg.errors import UpdateRejected
from secagg.events import Event
from secagg.reasons import Reason

#: the largest post (an envelope's JSON) a site may send: under gRPC's 8 MiB message limit
MAX_ENVELOPE_BYTES = 7 << 20
#: an audit line to write once the lock is released: (event, fields)
Note = tuple[Event, dict[str, Any]]


def _refuse(message: str, code: str = Reason.XSITE_PROTOCOL) -> UpdateRejected:
    return UpdateRejected(message, code=code)


@dataclass
class CrossSite:
    """One job's cross-site evaluation (see the module docstring); every method runs under the
    federation's lock and returns the audit lines to write after it."""

    job_id: str
    job_root: Path
    round_timeout: float
    started: float
    consents: dict[str, Consent] = field(default_factory=dict)
    #: the fixed set of consents (None until fixed)
    fixed: dict[str, Consent] | None = None
    share_all: bool = False
    phase_started: float = 0.0
    models_closed: bool = False
    envelopes: dict[tuple[str, str], Path] = field(default_factory=dict)
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    done: bool = False

    @property
    def folder(self) -> Path:
        return self.job_root / "xsite"

    @property
    def sharing(self) -> list[str]:
        """The sites whose local models travel (empty unless every consenting site shares)."""
        return sorted(self.fixed) if self.fixed is not None and self.share_all else []

    # ------------------------------------------------------------------ posts
    def post(self, site: str, cert: x509.Certificate, project: str, topic: str, payload: bytes) -> Note:
        if topic == wire.CONSENT:
            return self._consent(site, cert, project, payload)
        if topic == wire.MODEL:
            return self._model(site, cert, project, payload)
        if topic == wire.METRICS:
            return self._metrics(site, payload)
        raise _refuse(f"unknown topic {topic!r}", Reason.MALFORMED)

    def _consent(self, site: str, cert: x509.Certificate, project: str, payload: bytes) -> Note:
        if self.fixed is not None:
            raise _refuse("the consents of this evaluation are fixed already", Reason.LATE)
        if site in self.consents:
            raise _refuse(f"{site} already sent its consent", Reason.DUPLICATE)
        consent = Consent.from_bytes(payload)
        if consent.site != site or consent.job != self.job_id:
            raise _refuse(f"consent names {consent.site} in {consent.job}", Reason.XSITE_ENVELOPE)
        consent.verify(cert, project)
        self.consents[site] = consent
        return Event.XSITE_CONSENT, {"site": site, "share": consent.share, "code": consent.code}

    def _model(self, site: str, cert: x509.Certificate, project: str, payload: bytes) -> Note:
        if len(payload) > MAX_ENVELOPE_BYTES:
            raise _refuse(f"sealed model larger than {MAX_ENVELOPE_BYTES} bytes", Reason.XSITE_TOO_LARGE)
        sharing = self.sharing
        if self.models_closed or site not in sharing:
            raise _refuse(f"{site} is not sending local models now")
        env = Envelope.from_bytes(payload)
        if (
            env.sender != site
            or env.job != self.job_id
            or env.recipient not in sharing
            or env.recipient == site
        ):
            raise _refuse(
                f"sealed model from {env.sender} to {env.recipient} in {env.job}", Reason.XSITE_ENVELOPE
            )
        if (site, env.recipient) in self.envelopes:
            raise _refuse(f"{site} already sealed its model to {env.recipient}", Reason.DUPLICATE)
        env.verify_sender(cert, project)
        path = self.folder / f"{site}--{env.recipient}.sealed"
        from secagg.fsio import atomic_write

        atomic_write(path, payload, mode=0o600)  # ciphertext only: see the module docstring
        self.envelopes[(site, env.recipient)] = path
        return Event.XSITE_RELAYED, {"site": site, "to": env.recipient, "bytes": len(payload)}

    def _metrics(self, site: str, payload: bytes) -> Note:
        from secagg.aggregator.rpc import json_object

        if self.fixed is None or site not in self.fixed:
            raise _refuse(f"{site} has no evaluation to report now")
        if site in self.results:
            raise _refuse(f"{site} already reported its evaluation", Reason.DUPLICATE)
        msg = json_object(payload, "cross-site metrics", max_depth=4)
        results, refused = msg.get("results", {}), msg.get("refused", {})
        if not isinstance(results, dict) or not isinstance(refused, dict):
            raise _refuse("cross-site metrics: results and refused must be objects", Reason.MALFORMED)
        allowed = {wire.GLOBAL} | ({s for s in self.sharing if s != site})
        if not set(results) | set(refused) <= allowed:
            raise _refuse(f"{site} reports models it was not given: {sorted(set(results) - allowed)[:5]}")
        clean: dict[str, dict[str, float]] = {}
        for model, metrics in results.items():
            if not isinstance(metrics, dict):
                raise _refuse(f"metrics of {model} are not an object", Reason.MALFORMED)
            try:
                clean[model] = wire.bounded_metrics(metrics)
            except wire.BadMetrics as exc:
                raise _refuse(f"metrics of {model}: {exc}", Reason.OUT_OF_RANGE) from None
        self.results[site] = clean
        self.refused[site] = {str(k): str(v)[:64] for k, v in refused.items()}
        return Event.XSITE_METRICS, {"site": site, "models": sorted(clean), "refused": self.refused[site]}

    # ------------------------------------------------------------------ collects
    def collect(self, site: str, topic: str) -> bytes | Signal | None:
        if self.done:
            return Signal.CANCELLED
        if self.fixed is None:
            return None
        if site not in self.fixed:
            return Signal.NOT_FOR_YOU
        if topic == wire.CONSENTS:
            return json.dumps({s: c.to_dict() for s, c in sorted(self.fixed.items())}).encode()
        if topic == wire.INBOX:
            sharing = self.sharing
            if site not in sharing:
                return Signal.NOT_FOR_YOU
            mine = {a: p for (a, b), p in self.envelopes.items() if b == site}
            if not self.models_closed and len(mine) < len(sharing) - 1:
                return None
            return json.dumps(
                {a: base64.b64encode(p.read_bytes()).decode() for a, p in sorted(mine.items())}
            ).encode()
        return Signal.CANCELLED

    # ------------------------------------------------------------------ the driver
    def advance(self, expected: set[str], now: float) -> tuple[bool, list[Note]]:
        """Close whatever phase is over; ``(done, audit lines)``."""
        notes: list[Note] = []
        if self.done:
            return True, notes
        if self.fixed is None:
            if not (expected <= set(self.consents) or now - self.started > self.round_timeout):
                return False, notes
            self.fixed = {s: c for s, c in self.consents.items() if s in expected}
            self.share_all = len(self.fixed) >= 2 and all(c.share for c in self.fixed.values())
            self.phase_started = now
            notes.append(
                (
                    Event.XSITE_CONSENTS_FIXED,
                    {
                        "sites": sorted(self.fixed),
                        "share": self.share_all,
                        "missing": sorted(expected - set(self.fixed)),
                    },
                )
            )
            return False, notes
        sharing = self.sharing
        if sharing and not self.models_closed:
            complete = len(self.envelopes) >= len(sharing) * (len(sharing) - 1)
            if not (complete or now - self.phase_started > self.round_timeout):
                return False, notes
            self.models_closed = True
            self.phase_started = now
            return False, notes
        if not (set(self.fixed) <= set(self.results) or now - self.phase_started > 2 * self.round_timeout):
            return False, notes
        self.done = True
        return True, notes

    def matrix(self, sites: list[str], final_metrics: dict[str, dict[str, Any]]) -> Matrix:
        """The matrix of what was reported; a site's global cell falls back on its final metrics."""
        cells: dict[str, dict[str, dict[str, float]]] = {wire.GLOBAL: {}}
        for evaluator in sites:
            got = self.results.get(evaluator, {})
            glob = got.get(wire.GLOBAL)
            if glob is None and evaluator in final_metrics:
                with contextlib.suppress(wire.BadMetrics):
                    glob = wire.bounded_metrics(
                        {k: v for k, v in final_metrics[evaluator].items() if isinstance(v, int | float)}
                    )
            if glob is not None:
                cells[wire.GLOBAL][evaluator] = glob
            for model, metrics in got.items():
                if model != wire.GLOBAL:
                    cells.setdefault(model, {})[evaluator] = metrics
        not_shared = {s: c.code for s, c in (self.fixed or {}).items() if not c.share}
        not_shared.update({s: str(Reason.LATE) for s in sites if s not in (self.fixed or {})})
        return Matrix(self.job_id, list(sites), cells, bool(self.sharing), not_shared)

    def finish(self, sites: list[str], final_metrics: dict[str, dict[str, Any]]) -> tuple[Matrix, list[Path]]:
        """Write the matrix to the job's output; the sealed envelopes are of no further use: removed."""
        matrix = self.matrix(sites, final_metrics)
        written = matrix.write(self.job_root)
        shutil.rmtree(self.folder, ignore_errors=True)
        return matrix, written


def cross_site(job: JobRun, state_dir: Path, now: float) -> CrossSite | None:
    """The job's evaluation, made when first needed; None for a job that asks only for ``global``."""
    if job.spec.evaluation != "cross_site":
        return None
    if job.evaluation is None:
        job.evaluation = CrossSite(job.job_id, state_dir / "jobs" / job.job_id, job.spec.round_timeout, now)
    assert isinstance(job.evaluation, CrossSite)
    return job.evaluation


def download_files(job_root: Path) -> list[tuple[str, Path | bytes]]:
    """The matrix files of a job for ``admin download`` (none for a job without one)."""
    return [(name, job_root / name) for name in (JSON_FILE, PNG_FILE) if (job_root / name).is_file()]


__all__ = ["MAX_ENVELOPE_BYTES", "CrossSite", "EnvelopeError", "cross_site", "download_files"]

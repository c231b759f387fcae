"""Cross-site evaluation at the aggregator: a relay of signed consents and sealed models, and the matrix.

A job with ``evaluation: cross_site`` stays *finalizing* after its last round until this is done:

1. **consents**: every site (that has not declined the job) posts its signed consent (does it share its
   last local model?). The set is fixed when every site answered or after the job's round timeout;
   local models travel only if every site in it shares, and there are at least two.
2. **models**: each consenting site uploads its local model sealed to each other one
   (:mod:`secagg.crossval.seal`) through the rounds' streamed upload: the signed envelope in the
   header, the ciphertext in chunks of at most 4 MiB, the SHA-256 trailer. It is received into a
   0600 temporary file in the job's ``xsite/`` folder, checked against the signed digest and renamed;
   so a model of any size travels, and is never whole in the aggregator's memory. A site's inbox (the
   envelopes' headers) is published once every other site's model for it is in, or after the round
   timeout; the site then fetches each in chunks (``FetchSealed``).
3. **metrics**: each site posts what it measured of the global model and of each model in its inbox.
   After every site answered (or twice the round timeout), the matrix is written to the job's output
   (:mod:`secagg.crossval.matrix`) and the job finishes.

What the aggregator holds of a local model is only ever the sealed ciphertext, on disk under the job's
``xsite/`` folder until the matrix is written, then removed: it has no key that opens it, in any mode.
It checks each envelope's and consent's signature against the caller's mTLS certificate so that
garbage is refused at once, but the sites do not rely on that: they check every signature themselves.

**Restarts.** Everything the evaluation has taken (consents, which phase closed, the envelopes'
headers, metrics, and the sites' final metrics of the job) is written to ``xsite/state.json``
(atomically, 0600) before the post or upload that brought it is acknowledged. An aggregator killed
during the evaluation resumes it from there (:meth:`CrossSite.load`): temporary files of uploads cut
short and sealed files the state never recorded are removed, the phase in progress gets a fresh round
timeout, and each site's finalize task says what is held of it (:meth:`CrossSite.held`), so a site
that comes back sends only what is missing. Once the matrix is written, the sealed files go; the state
file stays (``done``) until the job is recorded finished, so a kill between the two writes the same
matrix again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509

from secagg.aggregator.rounds import JobRun, Signal
from secagg.crossval import wire
from secagg.crossval.matrix import JSON_FILE, PNG_FILE, Matrix
from secagg.crossval.seal import Consent, Envelope, EnvelopeError
from secagg.errors import UpdateRejected
from secagg.events import Event
from secagg.fsio import atomic_write, fsync_dir, remove_stale_temps
from secagg.reasons import Reason
from secagg.transport.chunks import copy_payload

#: the evaluation's progress, in the job's ``xsite/`` folder
STATE_FILE = "state.json"
STATE_FORMAT = "secagg-xsite-state/v1"
SEALED_SUFFIX = ".sealed"
PART_SUFFIX = ".part"
#: what :meth:`CrossSite.save` writes (and a failed save puts back)
_KEPT = frozenset(
    {
        "consents",
        "fixed",
        "share_all",
        "phase_started",
        "models_closed",
        "envelopes",
        "results",
        "refused",
        "final",
        "done",
    }
)
#: an audit line to write once the lock is released: (event, fields)
Note = tuple[Event, dict[str, Any]]


def _refuse(message: str, code: str = Reason.XSITE_PROTOCOL) -> UpdateRejected:
    return UpdateRejected(message, code=code)


class _Hashing:
    """A sink that hashes what it writes (the received ciphertext, checked against the signed digest)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.fh.write(data)


def receive_sealed(folder: Path, env: Envelope, chunks: Iterator[Any]) -> Path:
    """Stream one sealed model's ciphertext into a 0600 temporary file of ``folder``: exactly the
    announced length, trailer checked, and the signed digest; fsynced. Nothing is left if it fails.
    The caller renames it (:meth:`CrossSite.store_model`) or removes it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{env.sender}--{env.recipient}-", suffix=PART_SUFFIX)
    tmp = Path(name)  # mkstemp: 0600, created exclusively
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _Hashing(fh)
            n = env.sealed_bytes
            copy_payload(chunks, sink, max_bytes=n, expected_bytes=n)  # type: ignore[arg-type]
            if not hmac.compare_digest(sink.sha.hexdigest(), env.digest):
                raise _refuse(
                    f"the sealed model from {env.sender} is not the one its envelope signs",
                    Reason.XSITE_ENVELOPE,
                )
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


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
    #: the envelopes relayed, by (sender, recipient); the ciphertext is the file :meth:`sealed_path`
    envelopes: dict[tuple[str, str], Envelope] = field(default_factory=dict)
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    refused: dict[str, dict[str, str]] = field(default_factory=dict)
    #: the sites' final metrics of the job (kept here too, so a restart does not lose them)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: bool = False

    @property
    def folder(self) -> Path:
        return self.job_root / "xsite"

    @property
    def sharing(self) -> list[str]:
        """The sites whose local models travel (empty unless every consenting site shares)."""
        return sorted(self.fixed) if self.fixed is not None and self.share_all else []

    def sealed_path(self, sender: str, recipient: str) -> Path:
        return self.folder / f"{sender}--{recipient}{SEALED_SUFFIX}"

    # ------------------------------------------------------------------ posts
    def post(self, site: str, cert: x509.Certificate, project: str, topic: str, payload: bytes) -> Note:
        if topic == wire.CONSENT:
            return self._consent(site, cert, project, payload)
        if topic == wire.METRICS:
            return self._metrics(site, payload)
        raise _refuse(f"unknown topic {topic!r} (a sealed model is uploaded, not posted)", Reason.MALFORMED)

    def _consent(self, site: str, cert: x509.Certificate, project: str, payload: bytes) -> Note:
        consent = Consent.from_bytes(payload)
        if consent.site != site or consent.job != self.job_id:
            raise _refuse(f"consent names {consent.site} in {consent.job}", Reason.XSITE_ENVELOPE)
        consent.verify(cert, project)
        note = {"site": site, "share": consent.share, "code": consent.code}
        kept = self.consents.get(site)
        if kept is not None:
            if (kept.share, kept.code) == (consent.share, consent.code):
                return Event.XSITE_CONSENT, {**note, "again": True}  # its reply was lost: the same answer
            raise _refuse(f"{site} already sent another consent", Reason.DUPLICATE)
        if self.fixed is not None:
            raise _refuse("the consents of this evaluation are fixed already", Reason.LATE)
        with self._change():
            self.consents[site] = consent
        return Event.XSITE_CONSENT, note

    def begin_model(
        self, site: str, cert: x509.Certificate, project: str, header: dict[str, Any], max_plain: int
    ) -> Envelope:
        """The envelope of a sealed-model upload, checked before a byte of its ciphertext is taken:
        from a sharing site, to another, not yet relayed, signed by the caller, of a length the job's
        model can have."""
        sharing = self.sharing
        if self.models_closed or site not in sharing:
            raise _refuse(f"{site} is not sending local models now")
        env = Envelope.from_dict(header.get("envelope"))
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
        if env.plain_bytes > max_plain:
            raise _refuse(
                f"a sealed model of {env.plain_bytes} bytes; the job's model has at most {max_plain}",
                Reason.XSITE_TOO_LARGE,
            )
        env.verify_sender(cert, project)
        return env

    def store_model(self, site: str, env: Envelope, received: Path) -> Note:
        """Keep a received sealed model (ciphertext only: see the module docstring) under its name,
        then record it; the phase may have closed, or another upload won, while it streamed."""
        if self.models_closed or site not in self.sharing:
            raise _refuse("the models of this evaluation closed while the upload was streaming", Reason.LATE)
        if (site, env.recipient) in self.envelopes:
            raise _refuse(f"{site} already sealed its model to {env.recipient}", Reason.DUPLICATE)
        path = self.sealed_path(site, env.recipient)
        try:
            with self._change():
                os.replace(received, path)
                fsync_dir(path.parent)
                self.envelopes[(site, env.recipient)] = env
        except BaseException:
            path.unlink(missing_ok=True)  # not recorded: the site uploads it again
            raise
        return Event.XSITE_RELAYED, {"site": site, "to": env.recipient, "bytes": env.sealed_bytes}

    def _metrics(self, site: str, payload: bytes) -> Note:
        from secagg.aggregator.rpc import json_object

        if self.fixed is None or site not in self.fixed:
            raise _refuse(f"{site} has no evaluation to report now")
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
        codes = {str(k): str(v)[:64] for k, v in refused.items()}
        note = {"site": site, "models": sorted(clean), "refused": codes}
        if site in self.results:
            if (self.results[site], self.refused[site]) == (clean, codes):
                return Event.XSITE_METRICS, {**note, "again": True}  # its reply was lost: the same report
            raise _refuse(f"{site} already reported its evaluation", Reason.DUPLICATE)
        with self._change():
            self.results[site] = clean
            self.refused[site] = codes
        return Event.XSITE_METRICS, note

    def note_final(self, site: str, metrics: dict[str, Any]) -> None:
        """A site's final metrics of the job, kept with the evaluation's state."""
        with self._change():
            self.final[site] = metrics

    # ------------------------------------------------------------------ what a site is owed
    def held(self, site: str) -> dict[str, Any]:
        """What this evaluation holds of ``site`` (its finalize task carries it): a site that comes
        back after a restart sends only the rest."""
        return {
            "final": site in self.final,
            "consent": site in self.consents,
            "sealed_to": sorted(b for a, b in self.envelopes if a == site),
            "metrics": site in self.results,
        }

    def owes(self, site: str) -> bool:
        """Whether ``site`` still has a part to play (its metrics are not in, and it is not left out)."""
        if self.done or site in self.results:
            return False
        return self.fixed is None or site in self.fixed

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
            if not self._inbox_open(site):
                return None if site in self.sharing else Signal.NOT_FOR_YOU
            mine = {a: e for (a, b), e in self.envelopes.items() if b == site}
            return json.dumps({a: e.to_dict() for a, e in sorted(mine.items())}).encode()
        return Signal.CANCELLED

    def _inbox_open(self, site: str) -> bool:
        sharing = self.sharing
        if site not in sharing:
            return False
        mine = [a for a, b in self.envelopes if b == site]
        return self.models_closed or len(mine) >= len(sharing) - 1

    def sealed_for(self, site: str, sender: str) -> tuple[Envelope, BinaryIO] | Signal:
        """The envelope ``sender`` sealed to ``site`` and its ciphertext, opened (so it can be streamed
        outside the lock even if the evaluation ends meanwhile); a Signal where there is none."""
        if self.done:
            return Signal.CANCELLED
        env = self.envelopes.get((sender, site))
        if env is None or not self._inbox_open(site):
            return Signal.NOT_FOR_YOU
        return env, self.sealed_path(sender, site).open("rb")

    # ------------------------------------------------------------------ the driver
    def advance(self, expected: set[str], now: float) -> tuple[bool, list[Note]]:
        """Close whatever phase is over; ``(done, audit lines)``."""
        notes: list[Note] = []
        if self.done:
            return True, notes
        if self.fixed is None:
            if not (expected <= set(self.consents) or now - self.started > self.round_timeout):
                return False, notes
            with self._change():
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
            with self._change():
                self.models_closed = True
                self.phase_started = now
            return False, notes
        if not (set(self.fixed) <= set(self.results) or now - self.phase_started > 2 * self.round_timeout):
            return False, notes
        with self._change():
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
        """Write the matrix to the job's output; the sealed models are of no further use: removed
        (the state file stays until the job is recorded finished: :meth:`discard`)."""
        matrix = self.matrix(sites, final_metrics)
        written = matrix.write(self.job_root)
        for path in self.folder.glob(f"*{SEALED_SUFFIX}"):
            path.unlink(missing_ok=True)
        return matrix, written

    def discard(self) -> None:
        """Nothing of the evaluation is needed any more (the job finished, failed or was aborted)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "job": self.job_id,
            "consents": {s: c.to_dict() for s, c in sorted(self.consents.items())},
            "fixed": sorted(self.fixed) if self.fixed is not None else None,
            "share_all": self.share_all,
            "models_closed": self.models_closed,
            "envelopes": [e.to_dict() for _, e in sorted(self.envelopes.items())],
            "results": self.results,
            "refused": self.refused,
            "final": self.final,
            "done": self.done,
        }

    @contextlib.contextmanager
    def _change(self) -> Iterator[None]:
        """A change that counts only once it is saved: if the save fails (a full disk), the state is
        as it was, and the caller's refusal (or the driver's pause) says so; it is tried again."""
        before = {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items() if k in _KEPT}
        try:
            yield
            self.save()
        except BaseException:
            for k, v in before.items():
                setattr(self, k, v)
            raise

    def save(self) -> None:
        """The state, atomically (:func:`secagg.fsio.atomic_write`): a kill leaves the old or the new."""
        data = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        atomic_write(self.folder / STATE_FILE, data, mode=0o600)

    @classmethod
    def load(cls, job_id: str, job_root: Path, round_timeout: float, now: float) -> CrossSite | None:
        """The evaluation a killed aggregator left in ``job_root``, its folder cleaned (see the module
        docstring); None where it left none. The phase in progress starts its timeout again at ``now``."""
        folder = job_root / "xsite"
        path = folder / STATE_FILE
        if not path.is_file():
            return None
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or doc.get("job") != job_id:
            raise ValueError(f"{path} is not the cross-site state of {job_id}")
        consents = {str(s): Consent.from_dict(c) for s, c in doc["consents"].items()}
        fixed = None if doc["fixed"] is None else {s: consents[s] for s in doc["fixed"]}
        x = cls(
            job_id,
            job_root,
            round_timeout,
            now,
            consents=consents,
            fixed=fixed,
            share_all=bool(doc["share_all"]),
            phase_started=now,
            models_closed=bool(doc["models_closed"]),
            results=dict(doc["results"]),
            refused=dict(doc["refused"]),
            final=dict(doc["final"]),
            done=bool(doc["done"]),
        )
        for raw in doc["envelopes"]:
            env = Envelope.from_dict(raw)
            if x.done or x.sealed_path(env.sender, env.recipient).is_file():
                x.envelopes[(env.sender, env.recipient)] = env
        x._clean()
        return x

    def _clean(self) -> None:
        """Remove what a killed process left that the state does not hold: an upload cut short (its
        temporary file), a sealed model renamed but not yet recorded, a state write cut short."""
        remove_stale_temps(self.folder)
        kept = {self.sealed_path(a, b).name for a, b in self.envelopes} if not self.done else set()
        for entry in self.folder.iterdir():
            if entry.name.endswith(PART_SUFFIX) or (
                entry.name.endswith(SEALED_SUFFIX) and entry.name not in kept
            ):
                entry.unlink(missing_ok=True)


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


__all__ = ["STATE_FILE", "CrossSite", "EnvelopeError", "cross_site", "download_files", "receive_sealed"]

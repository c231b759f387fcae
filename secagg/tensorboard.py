"""TensorBoard scalars per round, written by the aggregator into the job's output folder.

An observer, driven by the audit log (``round_completed``, ``job_finished``) plus the metrics the store
keeps for each round (read through a callable, so this module imports nothing of the aggregator): the
federation code knows nothing of TensorBoard. What is plotted is only what sites
chose to report (validation / training metrics of the global model), never update values.

Layout: ``STATE/jobs/<job_id>/tensorboard/`` with tags ``site/<site>/<metric>`` (each site's reported
metrics, step = round), ``global/<metric>`` (the unweighted mean over the reporting sites, step = the
round whose global model was evaluated; the final evaluation lands at step = rounds) and
``round/seconds``, ``round/participants``.

Written with the ``tensorboard`` package's own event file writer and protos
(:class:`EventFileWriter`, ``Summary.Value.simple_value``: what ``torch.utils.tensorboard`` writes for
``add_scalar``), never through torch: the aggregator process does not load torch at all, about 200 MiB
of its resident memory under load (RELIABILITY.md F6). Without ``tensorboard``, scalars are skipped
with one warning and the federation runs on.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from secagg.events import Event

log = logging.getLogger(__name__)


def scalars_for_round(
    round_: int, metrics: dict[str, Any], seconds: float, participants: list[str]
) -> list[tuple[str, float, int]]:
    """Pure: (tag, value, step) triples for one completed round's stored metrics."""
    out: list[tuple[str, float, int]] = [
        ("round/seconds", float(seconds), round_),
        ("round/participants", float(len(participants)), round_),
    ]
    sites = metrics.get("sites") or {}
    out += _per_site("site", sites, round_)
    evaluated = metrics.get("evaluated_round")
    if isinstance(evaluated, int):
        out += _means(sites, evaluated)
    return out


def scalars_for_final(rounds: int, metrics: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Pure: the final evaluation of the last global model, reported by the sites after the last round."""
    final = metrics.get("final") or {}
    return _per_site("final", final, rounds) + _means(final, rounds)


def _numbers(m: Any) -> dict[str, float]:
    if not isinstance(m, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in m.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _per_site(prefix: str, sites: dict[str, Any], step: int) -> list[tuple[str, float, int]]:
    return [
        (f"{prefix}/{s}/{k}", v, step) for s in sorted(sites) for k, v in sorted(_numbers(sites[s]).items())
    ]


def _means(sites: dict[str, Any], step: int) -> list[tuple[str, float, int]]:
    values: dict[str, list[float]] = {}
    for m in sites.values():
        for k, v in _numbers(m).items():
            values.setdefault(k, []).append(v)
    return [(f"global/{k}", sum(vs) / len(vs), step) for k, vs in sorted(values.items())]


class RoundRecord(Protocol):
    """A completed round as the aggregator's store keeps it."""

    @property
    def round(self) -> int: ...

    @property
    def metrics(self) -> dict[str, Any]: ...

    @property
    def seconds(self) -> float: ...

    @property
    def participants(self) -> list[str]: ...


class ScalarWriter:
    """TensorBoard scalars into one event file in ``logdir``, without torch (nor TensorFlow).

    Each record is framed by the ``tensorboard`` package's own
    :class:`~tensorboard.summary.writer.record_writer.RecordWriter` (TFRecord framing, masked CRC32C),
    one ``Event`` per scalar as ``SummaryWriter.add_scalar`` makes it; not through its
    ``EventFileWriter``, whose writer thread dies with a traceback on the first failed write (a full
    disk: ``OSError: [Errno 28]``) and drops everything after it. Here events wait in memory until
    :meth:`flush`, which appends them all or nothing: a write the disk cuts short is cut back, so the
    file never holds a torn record, and what could not be written is kept for the next flush (at most
    ``MAX_PENDING`` events; more are counted in ``dropped``)."""

    #: events kept while the disk refuses them; a job's rounds make a few dozen each
    MAX_PENDING = 100_000

    def __init__(self, logdir: Path) -> None:
        # imported here: a federation without tensorboard installed runs on without scalars
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary, self._records = event_pb2.Event, summary_pb2.Summary, RecordWriter
        self.logdir = logdir
        # the name EventFileWriter gives (TensorBoard finds event files by "tfevents" in the name)
        self.path = logdir / (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_UID)}"
        )
        self._pending: list[bytes] = []
        self.dropped = 0
        source = event_pb2.SourceMetadata(writer="tensorboard.summary.writer.event_file_writer")
        self._add(self._event(wall_time=time.time(), file_version="brain.Event:2", source_metadata=source))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
        self._add(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def _add(self, event: Any) -> None:
        if len(self._pending) >= self.MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append(event.SerializeToString())

    def flush(self) -> None:
        """Append what is pending to the event file, all or nothing. Raises ``OSError`` (the disk
        full, or any refused write) with nothing of it in the file; it stays pending."""
        if not self._pending:
            return
        buf = io.BytesIO()
        records = self._records(buf)
        for data in self._pending:
            records.write(data)
        self.logdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(buf.getbuffer())
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                with contextlib.suppress(OSError):  # a torn record would spoil every one after it
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        self._pending.clear()

    def close(self) -> None:
        self.flush()


_UID = itertools.count()


class RoundScalars:
    """Audit listener that writes one TensorBoard event file per job, under ``jobs_dir/<job>``.

    ``rounds(job_id)`` reads the job's completed rounds (the aggregator's ``StateStore.rounds``).

    A write the disk refuses (full: ``ENOSPC``; or any ``OSError``) pauses that job's scalars with one
    warning line, never a traceback, and never touches a round (observers cannot break the audit
    trail); what was refused is kept and written, before anything newer, at the job's next scalars or
    at the first audit line ``RETRY_S`` or more after the last try, with one line saying so."""

    #: how often a paused writer is tried again on audit lines that bring no scalars of their own
    RETRY_S = 5.0

    def __init__(
        self,
        audit: Any,
        rounds: Callable[[str], Sequence[RoundRecord]],
        jobs_dir: Path,
    ) -> None:
        self.rounds = rounds
        self.jobs_dir = jobs_dir
        self._writers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._unavailable = False
        #: job -> ``time.monotonic()`` of its writer's last refused flush
        self._paused: dict[str, float] = {}
        audit.listeners.append(self.observe)

    def logdir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "tensorboard"

    def observe(self, record: dict[str, Any]) -> None:
        event, job_id = record.get("event"), record.get("job")
        if self._paused:
            self._retry_paused()
        if not isinstance(job_id, str):
            return
        if event == Event.ROUND_COMPLETED:
            row = next((r for r in self.rounds(job_id) if r.round == record.get("round")), None)
            if row is not None:
                self._write(job_id, scalars_for_round(row.round, row.metrics, row.seconds, row.participants))
        elif event == Event.JOB_FINISHED:
            rows = self.rounds(job_id)
            if rows:
                self._write(job_id, scalars_for_final(rows[-1].round, rows[-1].metrics))
            self.close(job_id)
        elif event in (Event.JOB_ABORTED, Event.JOB_FAILED):
            self.close(job_id)

    def _write(self, job_id: str, scalars: list[tuple[str, float, int]]) -> None:
        with self._lock:
            writer = self._writer(job_id)
            if writer is None:
                return
            for tag, value, step in scalars:
                writer.add_scalar(tag, value, step)
            self._flush(job_id, writer)

    def _flush(self, job_id: str, writer: Any) -> bool:
        """Under the lock: whether everything of ``job_id`` is written now."""
        try:
            writer.flush()
        except OSError as exc:
            if job_id not in self._paused:
                log.warning(
                    "TensorBoard scalars of job %s paused, %d events kept until they can be written: %s",
                    job_id,
                    getattr(writer, "pending", 0),
                    _why(exc),
                )
            self._paused[job_id] = time.monotonic()
            return False
        if self._paused.pop(job_id, None) is not None:
            log.info("TensorBoard scalars of job %s resumed: the events kept are written", job_id)
        return True

    def _retry_paused(self) -> None:
        with self._lock:
            now = time.monotonic()
            for job_id, since in list(self._paused.items()):
                writer = self._writers.get(job_id)
                if writer is None:
                    self._paused.pop(job_id, None)
                elif now - since >= self.RETRY_S:
                    self._flush(job_id, writer)

    def _writer(self, job_id: str) -> Any:
        if job_id in self._writers or self._unavailable:
            return self._writers.get(job_id)
        try:
            writer = ScalarWriter(self.logdir(job_id))
        except ImportError as exc:
            self._unavailable = True
            log.warning("TensorBoard scalars skipped: %s (pip install tensorboard)", exc)
            return None
        self._writers[job_id] = writer
        return writer

    def close(self, job_id: str | None = None) -> None:
        with self._lock:
            for jid in [job_id] if job_id else list(self._writers):
                writer = self._writers.get(jid) if jid else None
                if writer is None:
                    continue
                if not self._flush(jid, writer):
                    log.warning(
                        "TensorBoard scalars of job %s: %d events not written (%s)",
                        jid,
                        getattr(writer, "pending", 0),
                        "the disk still refuses them",
                    )
                self._paused.pop(jid, None)
                del self._writers[jid]
                dropped = getattr(writer, "dropped", 0)
                if dropped:
                    log.warning("TensorBoard scalars of job %s: %d events dropped while paused", jid, dropped)


def _why(exc: OSError) -> str:
    """One line: the disk full said so, any other refusal as the system words it."""
    if exc.errno == errno.ENOSPC:
        return f"the disk is full ({exc.strerror})"
    return f"{exc.strerror or type(exc).__name__}" + (f": {exc.filename}" if exc.filename else "")

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

import logging
import math
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

    The event file format (TFRecord framing, masked CRC32C) is the ``tensorboard`` package's own
    :class:`~tensorboard.summary.writer.event_file_writer.EventFileWriter`, not written here; this adds
    one ``Event`` per scalar, as ``SummaryWriter.add_scalar`` does."""

    def __init__(self, logdir: Path) -> None:
        # imported here: a federation without tensorboard installed runs on without scalars
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(logdir))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class RoundScalars:
    """Audit listener that writes one TensorBoard event file per job, under ``jobs_dir/<job>``.

    ``rounds(job_id)`` reads the job's completed rounds (the aggregator's ``StateStore.rounds``)."""

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
        audit.listeners.append(self.observe)

    def logdir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "tensorboard"

    def observe(self, record: dict[str, Any]) -> None:
        event, job_id = record.get("event"), record.get("job")
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
            writer.flush()

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
                writer = self._writers.pop(jid, None) if jid else None
                if writer is not None:
                    writer.close()

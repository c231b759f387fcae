"""The aggregator's TensorBoard observer on a disk that refuses its writes (RELIABILITY.md, "The
aggregator's state disk full mid-round"): one warning line, no thread dying with a traceback, the
refused scalars kept and written once the disk takes them again, and the event file never holding a
torn record (TensorBoard's own reader reads every scalar back).

Two ways to refuse: a real write refused by the kernel (a fresh process whose file size limit,
``RLIMIT_FSIZE``, is set to the event file's size and then raised again: ``EFBIG``, whatever writes
the file), and ``ENOSPC`` from the write call itself, cut short halfway."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg import tensorboard
from secagg.tensorboard import RoundScalars, scalars_for_round

pytest.importorskip("tensorboard")


@dataclass
class Row:
    round: int
    metrics: dict[str, Any]
    seconds: float
    participants: list[str]


SITES = ["site-1", "site-2"]
ROWS = [
    Row(r, {"sites": {s: {"loss": (i + 1.0) / r} for i, s in enumerate(SITES)}}, 1.5 * r, SITES)
    for r in (1, 2, 3)
]


class _Audit:
    def __init__(self) -> None:
        self.listeners: list[Any] = []


def _read(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(logdir.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _want(rows: list[Row]) -> dict[str, list[tuple[int, float]]]:
    want: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for tag, value, step in scalars_for_round(r.round, r.metrics, r.seconds, r.participants):
            want.setdefault(tag, []).append((step, float(np.float32(value))))
    return want


CHILD = textwrap.dedent(
    """
    import contextlib, json, logging, resource, signal, sys, threading
    from dataclasses import dataclass
    from pathlib import Path

    from secagg.tensorboard import RoundScalars

    logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no signal
    crashed = []
    threading.excepthook = lambda args: crashed.append(repr(args.exc_value))

    @dataclass
    class Row:
        round: int
        metrics: dict
        seconds: float
        participants: list

    class Audit:
        listeners = []

    def emit(record):  # as AuditLog calls its listeners: an observer's error never reaches the log
        for listener in Audit.listeners:
            with contextlib.suppress(Exception):
                listener(record)

    out, rows = Path(sys.argv[1]), [Row(**r) for r in json.loads(sys.argv[2])]
    obs = RoundScalars(Audit(), lambda job: rows, out / "jobs")
    logdir = out / "jobs" / "job-1" / "tensorboard"
    emit({"event": "round_completed", "job": "job-1", "round": 1})
    size = next(logdir.glob("events.out.tfevents.*")).stat().st_size
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))  # full: a record gets 10 bytes in
    emit({"event": "round_completed", "job": "job-1", "round": 2})
    full_size = next(logdir.glob("events.out.tfevents.*")).stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space is back
    emit({"event": "round_completed", "job": "job-1", "round": 3})
    with contextlib.suppress(Exception):
        obs.close()
    print(json.dumps({"crashed": crashed, "size": size, "full_size": full_size}))
    """
)


def test_a_refused_write_is_one_warning_no_dead_thread_and_written_when_space_returns(tmp_path: Path) -> None:
    rows = [r.__dict__ for r in ROWS]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(rows)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["crashed"] == []  # no thread died
    assert "Traceback" not in done.stderr and "Exception in thread" not in done.stderr, done.stderr[-3000:]
    warnings = [x for x in done.stderr.splitlines() if x.startswith("LOG WARNING")]
    assert len(warnings) == 1 and "job-1 paused" in warnings[0] and "File too large" in warnings[0], warnings
    assert any(x.startswith("LOG INFO") and "resumed" in x for x in done.stderr.splitlines())
    assert got["full_size"] == got["size"]  # the record the limit cut short was cut back
    assert _read(tmp_path / "jobs" / "job-1" / "tensorboard") == _want(ROWS)  # round 2 written late


def test_enospc_cut_halfway_is_cut_back_and_written_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    crashed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    obs = RoundScalars(_Audit(), lambda job: ROWS, tmp_path / "jobs")
    logdir = tmp_path / "jobs" / "job-1" / "tensorboard"
    obs.observe({"event": "round_completed", "job": "job-1", "round": 1})
    before = next(logdir.glob("events.out.tfevents.*")).read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tensorboard.os, "write", half_then_full)
    with caplog.at_level(logging.INFO, logger="secagg.tensorboard"):
        obs.observe({"event": "round_completed", "job": "job-1", "round": 2})
        obs.observe({"event": "site_ready", "job": "job-1", "round": 3})  # still full: no new line
        assert next(logdir.glob("events.out.tfevents.*")).read_bytes() == before  # nothing torn left
        monkeypatch.setattr(tensorboard.os, "write", real_write)
        obs.observe({"event": "round_completed", "job": "job-1", "round": 3})
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "the disk is full" in warned[0].getMessage() and warned[0].exc_info is None
    assert any("resumed" in r.getMessage() for r in caplog.records)
    assert crashed == []
    obs.close()
    assert _read(logdir) == _want(ROWS)


def test_a_paused_writer_is_tried_again_on_later_audit_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obs = RoundScalars(_Audit(), lambda job: ROWS[:1], tmp_path / "jobs")
    monkeypatch.setattr(RoundScalars, "RETRY_S", 0.0)
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tensorboard.os, "write", full)
    obs.observe({"event": "round_completed", "job": "job-1", "round": 1})
    monkeypatch.setattr(tensorboard.os, "write", real_write)
    obs.observe({"event": "site_registered", "site": "site-1"})  # no scalars of its own, no job
    assert _read(tmp_path / "jobs" / "job-1" / "tensorboard") == _want(ROWS[:1])

"""Durable aggregator state in SQLite, so a restarted aggregator resumes at the round it was in.

Round results (global model or encrypted aggregate) are files written atomically (temp, fsync,
rename) and referenced from the ``rounds`` table only once complete; the table row is the commit point.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg.aggregator.rounds import JobState
from secagg.fsio import atomic_write

#: the store's database file in the aggregator's state folder (health checks and demos read it too)
DB_NAME = "aggregator.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, name TEXT NOT NULL, submitter TEXT NOT NULL, spec_json TEXT NOT NULL,
    package_path TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, finished REAL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL, result_path TEXT NOT NULL,
    scale REAL NOT NULL, participants_json TEXT NOT NULL, metrics_json TEXT NOT NULL,
    seconds REAL NOT NULL, finished REAL NOT NULL, PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS declined (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, code TEXT NOT NULL,
    message TEXT NOT NULL, time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    name TEXT PRIMARY KEY, path TEXT NOT NULL, time REAL NOT NULL
);
"""


@dataclass(frozen=True)
class JobRow:
    job_id: str
    name: str
    submitter: str
    spec_json: str
    package_path: str
    state: str
    created: float
    finished: float | None
    reason: str | None


@dataclass(frozen=True)
class RoundRow:
    job_id: str
    round: int
    attempt: int
    result_path: str
    scale: float
    participants: list[str]
    metrics: dict[str, Any]
    seconds: float
    finished: float


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / DB_NAME, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # jobs
    def add_job(
        self,
        job_id: str,
        name: str,
        submitter: str,
        spec_json: str,
        package_path: str,
        state: JobState = JobState.RUNNING,
    ) -> None:
        self._exec(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            (job_id, name, submitter, spec_json, package_path, JobState(state).value, time.time()),
        )

    def set_job_state(self, job_id: str, state: str, reason: str | None = None) -> None:
        state = JobState(state)
        finished = time.time() if state.terminal else None
        self._exec(
            "UPDATE jobs SET state = ?, finished = ?, reason = ? WHERE job_id = ?",
            (state.value, finished, reason, job_id),
        )

    def jobs(self) -> list[JobRow]:
        return [JobRow(*r) for r in self._exec("SELECT * FROM jobs ORDER BY created")]

    def job(self, job_id: str) -> JobRow | None:
        rows = self._exec("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return JobRow(*rows[0]) if rows else None

    # rounds
    def add_round(
        self,
        job_id: str,
        round_: int,
        attempt: int,
        result_path: str,
        scale: float,
        participants: list[str],
        metrics: dict[str, Any],
        seconds: float,
    ) -> None:
        self._exec(
            "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                round_,
                attempt,
                result_path,
                scale,
                json.dumps(participants),
                json.dumps(metrics),
                seconds,
                time.time(),
            ),
        )

    def set_round_metrics(self, job_id: str, round_: int, metrics: dict[str, Any]) -> None:
        self._exec(
            "UPDATE rounds SET metrics_json = ? WHERE job_id = ? AND round = ?",
            (json.dumps(metrics), job_id, round_),
        )

    def rounds(self, job_id: str) -> list[RoundRow]:
        rows = self._exec("SELECT * FROM rounds WHERE job_id = ? ORDER BY round", (job_id,))
        return [_round_row(r) for r in rows]

    # declined tasks
    def add_declined(self, job_id: str, round_: int, site: str, code: str, message: str) -> None:
        self._exec(
            "INSERT INTO declined VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, round_, site, code, message, time.time()),
        )

    def declined(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._exec("SELECT round, site, code, message, time FROM declined WHERE job_id = ?", (job_id,))
        return [dict(zip(["round", "site", "code", "message", "time"], r, strict=True)) for r in rows]

    # named blobs (the HE key release, relayed sealed)
    def put_blob(self, name: str, data: bytes) -> None:
        path = self.root / "blobs" / name
        atomic_write(path, data)
        self._exec("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (name, str(path), time.time()))

    def get_blob(self, name: str) -> bytes | None:
        rows = self._exec("SELECT path FROM blobs WHERE name = ?", (name,))
        return Path(rows[0][0]).read_bytes() if rows else None


def _round_row(r: tuple[Any, ...]) -> RoundRow:
    return RoundRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]), r[7], r[8])


class StoreView:
    """Read-only access to an aggregator's store from another process (the demo's progress display).

    Opens the database read-only (``mode=ro``), never creates it, and never takes the writer's lock
    for long; :class:`StoreUnavailable` when there is no store (yet) or it cannot be read."""

    def __init__(self, root: Path, *, timeout: float = 1.0) -> None:
        db = root / DB_NAME
        if not db.is_file():
            raise StoreUnavailable(f"no aggregator store in {root}")
        try:
            self._db = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {db}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StoreView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rounds(self, job_id: str | None = None) -> list[RoundRow]:
        """Completed rounds of ``job_id`` (every job's, by round, when None)."""
        try:
            if job_id is None:
                rows = self._db.execute("SELECT * FROM rounds ORDER BY round").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM rounds WHERE job_id = ? ORDER BY round", (job_id,)
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot read the aggregator store: {exc}") from None
        return [_round_row(r) for r in rows]


class StoreUnavailable(Exception):
    """An aggregator store that is not there (yet) or cannot be read."""


__all__ = ["DB_NAME", "JobRow", "RoundRow", "StateStore", "StoreUnavailable", "StoreView"]

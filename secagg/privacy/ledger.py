"""The privacy-budget ledger: a durable, append-only record of every release, per data set.

Ordering is what makes it safe: the agent debits *before* it uploads, and the debit is one committed
SQLite transaction (WAL, ``synchronous=FULL``: on disk when ``debit`` returns). A crash between debit and
upload leaves a debit for a release that never happened, which over-counts; the reverse order could
under-count, which a budget must never do. Rows are never deleted or changed, except a status move from
``debited`` to ``released`` once the upload is acknowledged; triggers in the database refuse anything
else, so a bug elsewhere cannot quietly refund budget. Both statuses count against the budget.

The check and the insert run in one ``BEGIN IMMEDIATE`` transaction, so two processes debiting the same
data set at once cannot both squeeze under the budget.

Several jobs on one data set: admitting a job *reserves* its declared worst case (:meth:`Ledger.reserve`,
one transaction as well), and every later admission and debit counts what the other admitted jobs may
still spend (their worst case of the rounds they have not debited yet). So two jobs whose worst cases
together pass the budget are never both admitted, and no debit of one job can eat the part another job
was admitted with. A reservation is not spend: it goes away when its job ends
(:meth:`Ledger.release_reservation`); the ``entries`` stay for ever. Totals are computed by
:func:`secagg.privacy.accounting.compose` (basic composition for SVT/Laplace, Opacus RDP for Gaussian
mechanisms) at the budget's delta.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from secagg.errors import ConfigError, PolicyRefusal
from secagg.privacy.accounting import Composition, compose
from secagg.privacy.spend import Spend
from secagg.reasons import Reason

FILENAME = "privacy-ledger.sqlite"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budgets (
    dataset TEXT PRIMARY KEY,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    delta REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    debit_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    job TEXT NOT NULL,
    round INTEGER NOT NULL,
    mechanism TEXT NOT NULL,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    delta REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
    noise_multiplier REAL,
    sample_rate REAL,
    steps INTEGER,
    time TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('debited', 'released'))
);
CREATE INDEX IF NOT EXISTS entries_dataset ON entries (dataset);
CREATE TABLE IF NOT EXISTS reservations (
    dataset TEXT NOT NULL,
    job TEXT NOT NULL,
    rounds INTEGER NOT NULL CHECK (rounds >= 0),
    spends_json TEXT NOT NULL,
    time TEXT NOT NULL,
    PRIMARY KEY (dataset, job)
);
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_only_release BEFORE UPDATE ON entries
WHEN NOT (OLD.status = 'debited' AND NEW.status = 'released'
          AND NEW.id IS OLD.id AND NEW.debit_id IS OLD.debit_id AND NEW.dataset IS OLD.dataset
          AND NEW.job IS OLD.job AND NEW.round IS OLD.round AND NEW.mechanism IS OLD.mechanism
          AND NEW.epsilon IS OLD.epsilon AND NEW.delta IS OLD.delta
          AND NEW.noise_multiplier IS OLD.noise_multiplier AND NEW.sample_rate IS OLD.sample_rate
          AND NEW.steps IS OLD.steps AND NEW.time IS OLD.time)
BEGIN SELECT RAISE(ABORT, 'privacy ledger entries only move from debited to released'); END;
"""

_COLS = (
    "id, debit_id, dataset, job, round, mechanism, epsilon, delta, noise_multiplier, sample_rate, steps, "
    "time, status"
)


def debited_rounds(entries: Iterable[Entry], job_id: str) -> set[int]:
    """The rounds of ``job_id`` this data set's ledger already holds a debit for."""
    return {e.round for e in entries if e.job == job_id}


def remaining_worst_case(spends: Sequence[Spend], rounds: int, rounds_debited: int) -> list[Spend]:
    """The declared worst case of the rounds a job has not debited yet.

    ``spends`` is the whole job's worst case (the per-round chain repeated ``rounds`` times, as
    :func:`secagg.privacy.specs.worst_case_spends` makes it). What a job already debited is in the
    ledger's entries: counting its whole worst case again would count those rounds twice (a site that
    restarts re-admits its own running job, and another job's admission looks at this one's
    reservation). The debit check still refuses any round that would pass the budget."""
    if rounds <= 0 or not spends:
        return []
    per_round = len(spends) // rounds
    left = min(max(rounds - rounds_debited, 0), rounds)
    return list(spends[: per_round * left])


@dataclass(frozen=True)
class Reservation:
    """An admitted job's declared worst case (``rounds`` rounds, ``spends`` for all of them)."""

    dataset: str
    job: str
    rounds: int
    spends: tuple[Spend, ...]
    time: str


class BudgetExhausted(PolicyRefusal):
    """The release would take the data set past its privacy budget; nothing was recorded."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=Reason.BUDGET_EXHAUSTED)


@dataclass(frozen=True)
class Entry:
    id: int
    debit_id: str
    dataset: str
    job: str
    round: int
    spend: Spend
    time: str
    status: str

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("id", "debit_id", "dataset", "job", "round")}
        d.update(self.spend.to_dict())
        d.update(time=self.time, status=self.status)
        return d


def connect(path: Path) -> sqlite3.Connection:
    """Open with the durability settings every ledger connection must have (they are per connection)."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: cannot open privacy ledger ({exc})") from None
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"{path}: privacy ledger needs WAL journaling, got {mode}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConfigError(f"{path}: not a privacy ledger ({exc})") from None
    except ConfigError:
        conn.close()
        raise
    return conn


class Ledger:
    """One data set's account in a ledger file. ``budget_*`` of None: use the budget recorded last."""

    def __init__(
        self,
        path: Path | str,
        dataset: str,
        budget_epsilon: float | None = None,
        budget_delta: float | None = None,
    ) -> None:
        self.path = Path(path)
        if not dataset:
            raise ConfigError("privacy ledger: empty data set name")
        self.dataset = dataset
        if (budget_epsilon is None) != (budget_delta is None):
            raise ConfigError("privacy ledger: give both budget_epsilon and budget_delta, or neither")
        if (
            budget_epsilon is not None
            and budget_delta is not None
            and not (math.isfinite(budget_epsilon) and budget_epsilon >= 0 and 0 <= budget_delta < 1)
        ):
            raise ConfigError("privacy ledger: budget needs finite epsilon >= 0 and 0 <= delta < 1")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(self.path)
        try:
            self._init_schema(dataset, budget_epsilon, budget_delta)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ConfigError(f"{self.path}: not a privacy ledger ({exc})") from None
        except ConfigError:
            self._conn.close()
            raise

    def _init_schema(self, dataset: str, budget_epsilon: float | None, budget_delta: float | None) -> None:
        with self._tx() as cur:
            for stmt in _statements(_SCHEMA):
                cur.execute(stmt)
            cur.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            version = cur.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path}: privacy ledger schema {version}, this secagg reads {SCHEMA_VERSION}"
                )
            if budget_epsilon is not None:
                cur.execute(
                    "INSERT INTO budgets VALUES (?, ?, ?, ?) ON CONFLICT(dataset) DO UPDATE SET "
                    "epsilon=excluded.epsilon, delta=excluded.delta, updated=excluded.updated",
                    (dataset, float(budget_epsilon), float(budget_delta), _now()),  # type: ignore[arg-type]
                )
            row = cur.execute("SELECT epsilon, delta FROM budgets WHERE dataset=?", (dataset,)).fetchone()
        if row is None:
            raise ConfigError(f"{self.path}: no privacy budget recorded for data set {dataset!r}")
        self.budget_epsilon, self.budget_delta = float(row[0]), float(row[1])

    # -- plumbing -----------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction, taken up front (IMMEDIATE) so check-then-insert cannot race."""
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def datasets(path: Path | str) -> list[str]:
        """The data sets with a budget in the ledger at ``path`` (which must exist)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no privacy ledger at {path}")
        conn = connect(path)
        try:
            return [r[0] for r in conn.execute("SELECT dataset FROM budgets ORDER BY dataset")]
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: not a privacy ledger ({exc})") from None
        finally:
            conn.close()

    # -- reading ------------------------------------------------------------------------------------

    def _rows(self, cur: sqlite3.Cursor | sqlite3.Connection) -> list[Entry]:
        rows = cur.execute(f"SELECT {_COLS} FROM entries WHERE dataset=? ORDER BY id", (self.dataset,))  # noqa: S608
        return [
            Entry(
                id=r[0],
                debit_id=r[1],
                dataset=r[2],
                job=r[3],
                round=r[4],
                spend=Spend(r[5], r[6], r[7], r[8], r[9], r[10]),
                time=r[11],
                status=r[12],
            )
            for r in rows
        ]

    def entries(self) -> list[Entry]:
        return self._rows(self._conn)

    def _reservations(self, cur: sqlite3.Cursor | sqlite3.Connection) -> list[Reservation]:
        rows = cur.execute(
            "SELECT dataset, job, rounds, spends_json, time FROM reservations WHERE dataset=? ORDER BY time",
            (self.dataset,),
        )
        return [
            Reservation(r[0], r[1], r[2], tuple(Spend.from_dict(d) for d in json.loads(r[3])), r[4])
            for r in rows
        ]

    def reservations(self) -> list[Reservation]:
        """The admitted jobs' worst cases this data set holds budget for (oldest first)."""
        return self._reservations(self._conn)

    @staticmethod
    def _reserved_by_others(entries: list[Entry], reservations: list[Reservation], job: str) -> list[Spend]:
        """What the admitted jobs other than ``job`` may still spend: each one's worst case of the
        rounds it has not debited yet (what it did debit is among the entries already)."""
        out: list[Spend] = []
        for r in reservations:
            if r.job != job:
                done = len(debited_rounds(entries, r.job))
                out += remaining_worst_case(r.spends, r.rounds, done)
        return out

    def _projection(
        self, cur: sqlite3.Cursor | sqlite3.Connection, job: str, extra: Iterable[Spend]
    ) -> Composition:
        entries = self._rows(cur)
        held = self._reserved_by_others(entries, self._reservations(cur), job)
        return compose([e.spend for e in entries] + held + list(extra), self.budget_delta)

    def composition(self, extra: Iterable[Spend] = ()) -> Composition:
        spends = [e.spend for e in self.entries()] + list(extra)
        return compose(spends, self.budget_delta)

    def total(self) -> tuple[float, float, str]:
        """``(epsilon, delta, how it was computed)`` over every recorded release."""
        c = self.composition()
        return c.epsilon, c.delta, c.method

    def remaining(self) -> tuple[float, float]:
        """Budget minus total, floored at zero: a display, since RDP totals do not subtract.

        Once a Gaussian release is recorded its RDP part is converted at all the delta the basic part
        leaves, so the remaining delta reads 0; :meth:`would_exceed` recomputes for each new spend.
        """
        eps, delta, _ = self.total()
        return max(self.budget_epsilon - eps, 0.0), max(self.budget_delta - delta, 0.0)

    def _exceeds(self, c: Composition) -> bool:
        return not (c.epsilon <= self.budget_epsilon and c.delta <= self.budget_delta)

    def would_exceed(self, spends: Iterable[Spend]) -> bool:
        return self._exceeds(self.composition(spends))

    # -- writing ------------------------------------------------------------------------------------

    def debit(self, job: str, round: int, spends: Iterable[Spend], debit_id: str | None = None) -> str:
        """Record ``spends`` for ``(job, round)`` in one committed transaction; returns the debit id.

        ``debit_id``: chosen by the caller when something must name the debit before it commits (the
        agent's kept release, written first so that a crash right after the commit still has it).
        Raises :class:`BudgetExhausted` and records nothing if the total would pass the budget.
        """
        spends = list(spends)
        debit_id = debit_id or uuid.uuid4().hex
        with self._tx() as cur:
            # what other admitted jobs may still spend is held for them: this job cannot take it
            c = self._projection(cur, job, spends)
            if self._exceeds(c):
                raise BudgetExhausted(
                    f"data set {self.dataset!r}: job {job} round {round} would bring the privacy spend to "
                    f"eps={c.epsilon:.6g}, delta={c.delta:.3g}, over the budget "
                    f"eps={self.budget_epsilon:.6g}, delta={self.budget_delta:.3g}"
                )
            now = _now()
            cur.executemany(
                "INSERT INTO entries (debit_id, dataset, job, round, mechanism, epsilon, delta, "
                "noise_multiplier, sample_rate, steps, time, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'debited')",
                [
                    (
                        debit_id,
                        self.dataset,
                        job,
                        int(round),
                        s.mechanism,
                        s.epsilon,
                        s.delta,
                        s.noise_multiplier,
                        s.sample_rate,
                        s.steps,
                        now,
                    )
                    for s in spends
                ],
            )
        return debit_id

    def mark_released(self, debit_id: str) -> int:
        """Note that the upload of ``debit_id`` was acknowledged; the spend still counts. Returns rows."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE entries SET status='released' WHERE debit_id=? AND dataset=? AND status='debited'",
                (debit_id, self.dataset),
            )
            return cur.rowcount

    def admission_check(self, worst_case_spends: Iterable[Spend], job: str = "") -> Composition:
        """Refuse a job whose declared worst-case spend does not fit what is left (after what the other
        admitted jobs hold); returns the projection. Reads only: :meth:`reserve` is the check that
        admits, in the same transaction as its record."""
        c = self._projection(self._conn, job, worst_case_spends)
        if self._exceeds(c):
            raise self._refusal(c)
        return c

    def _refusal(self, c: Composition) -> BudgetExhausted:
        return BudgetExhausted(
            f"data set {self.dataset!r}: the job's declared worst case would bring the privacy spend to "
            f"eps={c.epsilon:.6g}, delta={c.delta:.3g}, over the budget "
            f"eps={self.budget_epsilon:.6g}, delta={self.budget_delta:.3g} "
            "(what this data set spent, plus what the other admitted jobs may still spend)"
        )

    def reserve(self, job: str, rounds: int, worst_case: Sequence[Spend]) -> Composition:
        """Admit ``job``: check its worst case of the rounds it has not debited yet against what is
        spent and what the other admitted jobs hold, and record it, in one ``BEGIN IMMEDIATE``
        transaction. Two jobs admitted at once (threads or processes) are decided one after the other,
        so they can never both be admitted on the same remaining budget. Re-reserving a job (a site
        restarted) replaces its record. Raises :class:`BudgetExhausted` and records nothing."""
        spends = list(worst_case)
        with self._tx() as cur:
            done = len(debited_rounds(self._rows(cur), job))
            c = self._projection(cur, job, remaining_worst_case(spends, rounds, done))
            if self._exceeds(c):
                raise self._refusal(c)
            cur.execute(
                "INSERT INTO reservations VALUES (?, ?, ?, ?, ?) ON CONFLICT(dataset, job) DO UPDATE SET "
                "rounds=excluded.rounds, spends_json=excluded.spends_json, time=excluded.time",
                (self.dataset, job, int(rounds), json.dumps([sp.to_dict() for sp in spends]), _now()),
            )
        return c

    def release_reservation(self, job: str) -> bool:
        """``job`` ended: what it did not spend is free for other jobs. True if it held a reservation."""
        with self._tx() as cur:
            cur.execute("DELETE FROM reservations WHERE dataset=? AND job=?", (self.dataset, job))
            return cur.rowcount > 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _statements(script: str) -> list[str]:
    """Split the schema on statement ends, keeping trigger bodies whole (executescript would commit)."""
    out, buf = [], ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        in_trigger = buf.lstrip().upper().startswith("CREATE TRIGGER")
        if line.rstrip().endswith(";") and (not in_trigger or "END;" in line):
            out.append(buf.strip())
            buf = ""
    return out

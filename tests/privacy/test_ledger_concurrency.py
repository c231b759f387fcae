"""Two jobs on one data set never together spend past its budget, whatever the interleaving.

The interleavings are forced, not hoped for: a stand-in for the sqlite3 connection stops a debit (or an
admission) at a chosen point inside its transaction until the test lets it go, while the other job's
call is started against the same ledger file from another thread or process. A process killed with
SIGKILL in the middle of its transaction leaves a ledger that reopens exact and unlocked.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from secagg.privacy import Ledger, Spend
from secagg.privacy.ledger import BudgetExhausted

BUDGET = 1.0
DELTA = 1e-5


def laplace(eps: float) -> Spend:
    return Spend("laplace", eps, 0.0)


class Paused:
    """Stands in for a ledger's sqlite3 connection: stops at ``point`` of the next write transaction
    (``insert``: before its INSERT/DELETE statements; ``commit``: after them, before COMMIT) until
    ``go`` is set, saying so through ``reached``."""

    def __init__(self, conn: Any, point: str) -> None:
        self.conn, self.point = conn, point
        self.reached, self.go = threading.Event(), threading.Event()

    def _stop(self, at: str) -> None:
        if at == self.point and not self.go.is_set():
            self.reached.set()
            assert self.go.wait(30), "the test never let the paused transaction go"

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self._stop("commit")
        return self.conn.execute(sql, *args)

    def cursor(self) -> Any:
        return _Cursor(self.conn.cursor(), self)

    def close(self) -> None:
        self.conn.close()


class _Cursor:
    def __init__(self, cur: Any, owner: Paused) -> None:
        self.cur, self.owner = cur, owner

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith(("INSERT INTO RESERVATIONS", "INSERT INTO ENTRIES")):
            self.owner._stop("insert")
        return self.cur.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        self.owner._stop("insert")
        return self.cur.executemany(sql, rows)

    @property
    def rowcount(self) -> int:
        return int(self.cur.rowcount)


def _race(path: Path, point: str, first: Any, second: Any) -> list[Any]:
    """``first(ledger)`` stops at ``point`` inside its transaction; ``second(ledger)`` starts while it
    is stopped; then ``first`` goes on. Each runs in a thread of its own with its own connection (as
    two jobs' threads of an agent do). Returns each call's result or the exception it raised."""
    out: list[Any] = [None, None]
    stand_in = Paused(None, point)

    def call(i: int, fn: Any) -> None:
        led = Ledger(path, "ds", BUDGET, DELTA)
        if i == 0:
            stand_in.conn, led._conn = led._conn, stand_in  # type: ignore[assignment]
        try:
            out[i] = fn(led)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out[i] = exc
        finally:
            stand_in.reached.set()  # a first call that failed early must not hang the test

    a = threading.Thread(target=call, args=(0, first))
    a.start()
    assert stand_in.reached.wait(30)
    b = threading.Thread(target=call, args=(1, second))
    b.start()  # blocks in BEGIN IMMEDIATE behind ``first``, or runs after it: both are interleavings
    stand_in.go.set()
    a.join(30)
    b.join(30)
    return out


@pytest.mark.parametrize("point", ["insert", "commit"])
def test_two_debits_racing_cannot_both_fit(tmp_path: Path, point: str) -> None:
    path = tmp_path / "ledger.sqlite"
    got = _race(
        path,
        point,
        lambda led: led.debit("job-a", 1, [laplace(0.6)]),
        lambda led: led.debit("job-b", 1, [laplace(0.6)]),
    )
    assert isinstance(got[0], str)  # the first in its transaction wins
    assert isinstance(got[1], BudgetExhausted)
    check = Ledger(path, "ds")
    assert [(e.job, e.spend.epsilon) for e in check.entries()] == [("job-a", 0.6)]
    assert check.total()[0] <= BUDGET


@pytest.mark.parametrize("point", ["insert", "commit"])
def test_two_admissions_whose_worst_cases_pass_the_budget_admit_one(tmp_path: Path, point: str) -> None:
    worst = [laplace(0.3)] * 2  # 2 rounds of 0.3: 0.6 each, 1.2 together
    got = _race(
        tmp_path / "ledger.sqlite",
        point,
        lambda led: led.reserve("job-a", 2, worst),
        lambda led: led.reserve("job-b", 2, worst),
    )
    assert not isinstance(got[0], Exception)
    assert isinstance(got[1], BudgetExhausted)
    assert [r.job for r in Ledger(tmp_path / "ledger.sqlite", "ds").reservations()] == ["job-a"]


def test_a_debit_cannot_take_what_another_admitted_job_holds(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path, "ds", BUDGET, DELTA)
    led.reserve("job-a", 2, [laplace(0.4)] * 2)  # holds 0.8
    with pytest.raises(BudgetExhausted):
        led.debit("job-b", 1, [laplace(0.3)])  # an unadmitted job's round would eat into it
    led.debit("job-b", 1, [laplace(0.2)])  # what is left is free
    # job-a's own rounds fit, and what it debits stops being held for it
    led.debit("job-a", 1, [laplace(0.4)])
    led.debit("job-a", 2, [laplace(0.4)])
    assert led.total()[0] == pytest.approx(1.0)
    with pytest.raises(BudgetExhausted):
        led.debit("job-b", 2, [laplace(0.01)])


def test_a_finished_job_gives_back_what_it_did_not_spend(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.sqlite", "ds", BUDGET, DELTA)
    led.reserve("job-a", 3, [laplace(0.3)] * 3)
    led.debit("job-a", 1, [laplace(0.3)])
    with pytest.raises(BudgetExhausted):
        led.reserve("job-b", 1, [laplace(0.5)])  # 0.3 spent + 0.6 held + 0.5 > 1
    assert led.release_reservation("job-a")  # aborted after round 1
    assert not led.release_reservation("job-a")
    led.reserve("job-b", 1, [laplace(0.5)])  # 0.3 spent + 0.5
    # a re-admitted job (a restarted site) counts only the rounds it has not debited
    led.reserve("job-b", 1, [laplace(0.5)])
    assert [r.job for r in led.reservations()] == ["job-b"]


SEQUENCES = list(
    itertools.permutations(["reserve-a", "reserve-b", "debit-a-1", "debit-a-2", "debit-b-1", "debit-b-2"])
)


@pytest.mark.parametrize("order", SEQUENCES[::37])  # 20 of the 720 orders, spread over all of them
def test_every_order_stays_within_the_budget(tmp_path: Path, order: tuple[str, ...]) -> None:
    """Whatever the order of two jobs' admissions and rounds, the data set's total never passes the
    budget and an admitted job's declared rounds are never refused."""
    led = Ledger(tmp_path / "ledger.sqlite", "ds", BUDGET, DELTA)
    admitted: set[str] = set()
    for step in order:
        kind, job, *rnd = step.split("-")
        try:
            if kind == "reserve":
                led.reserve(f"job-{job}", 2, [laplace(0.3)] * 2)
                admitted.add(job)
            else:
                led.debit(f"job-{job}", int(rnd[0]), [laplace(0.3)])
        except BudgetExhausted:
            assert kind == "reserve" or job not in admitted, f"{step} refused for an admitted job ({order})"
        assert led.total()[0] <= BUDGET + 1e-12


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from secagg.privacy import Ledger, Spend

    path, job, what, point = sys.argv[1:5]

    class DieAt:
        # the sqlite3 connection, except that the process SIGKILLs itself at ``point``
        def __init__(self, conn):
            self.conn = conn
        def execute(self, sql, *args):
            if sql == "COMMIT" and point == "commit":
                print("ready", flush=True)
                time.sleep(0.2)  # the other process is now waiting on the lock this one holds
                os.kill(os.getpid(), signal.SIGKILL)
            return self.conn.execute(sql, *args)
        def cursor(self):
            return self.conn.cursor()
        def close(self):
            self.conn.close()

    led = Ledger(path, "ds", 1.0, 1e-5)
    led._conn = DieAt(led._conn)
    if what == "debit":
        led.debit(job, 1, [Spend("laplace", 0.6, 0.0)])
    else:
        led.reserve(job, 2, [Spend("laplace", 0.3, 0.0)] * 2)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("what", ["debit", "reserve"])
def test_kill_9_mid_transaction_while_another_job_waits(tmp_path: Path, what: str) -> None:
    """A process SIGKILLed after its INSERT, before COMMIT, while holding the write lock: nothing of
    its transaction is kept, the lock goes with it, and the other job's call (started while it held
    the lock) then fits and is recorded exactly once."""
    path = tmp_path / "ledger.sqlite"
    Ledger(path, "ds", BUDGET, DELTA).close()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "job-a", what, "commit"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    other = Ledger(path, "ds", BUDGET, DELTA)
    if what == "debit":
        other.debit("job-b", 1, [laplace(0.6)])  # waits for the lock until the child is killed
    else:
        other.reserve("job-b", 2, [laplace(0.3)] * 2)
    assert child.wait(30) == -signal.SIGKILL
    reopened = Ledger(path, "ds")
    if what == "debit":
        assert [(e.job, e.spend.epsilon) for e in reopened.entries()] == [("job-b", 0.6)]
    else:
        assert [r.job for r in reopened.reservations()] == ["job-b"]
        assert reopened.entries() == []
    assert reopened.total()[0] <= BUDGET


def test_processes_racing_on_one_ledger_spend_exactly_the_budget(tmp_path: Path) -> None:
    """Four processes debit 0.1 until refused: exactly ten debits, whatever the scheduler did."""
    path = tmp_path / "ledger.sqlite"
    Ledger(path, "ds", BUDGET, DELTA).close()
    code = textwrap.dedent(
        """
        import sys
        from secagg.privacy import Ledger, Spend
        from secagg.privacy.ledger import BudgetExhausted
        led = Ledger(sys.argv[1], "ds", 1.0, 1e-5)
        for r in range(1, 100):
            try:
                led.debit(sys.argv[2], r, [Spend("laplace", 0.1, 0.0)])
            except BudgetExhausted:
                break
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), f"job-{i}"]) for i in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    led = Ledger(path, "ds")
    assert len(led.entries()) == 10
    assert led.total()[0] == pytest.approx(1.0)

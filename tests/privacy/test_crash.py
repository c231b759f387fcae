"""kill -9 at every point of a round: the ledger never shows less than what was released.

A child process runs rounds of "debit, then upload"; the upload is simulated by writing a ``released``
marker file, which only happens after the debit committed. In the last round the child SIGKILLs itself
at one point. Any marker that exists, even half-written, counts as a release (the aggregator may have
received part of it), so the ledger must hold at least one debit per marker.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from secagg.privacy import Ledger

ROUNDS = 3
EPS = 0.5

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from secagg.privacy import Ledger, Spend

    path, out, point, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class DieOnCommit:
        # stands in for the sqlite3 connection: dies at the debit's COMMIT, after the INSERTs ran
        def __init__(self, conn):
            self.conn = conn
        def execute(self, sql, *args):
            if sql == "COMMIT":
                die()
            return self.conn.execute(sql, *args)
        def cursor(self):
            return self.conn.cursor()

    led = Ledger(path, "ds", 100.0, 1e-5)
    for r in range(rounds):
        last = r == rounds - 1
        if last and point == "before_debit":
            die()
        if last and point == "in_commit":
            led._conn = DieOnCommit(led._conn)
        debit_id = led.debit("job-1", r, [Spend("svt", EPS, 0.0)])
        if last and point == "after_debit":
            die()
        with open(out / f"released-{r}", "wb") as f:  # the 'upload'
            f.write(b"part of the update")
            if last and point == "during_upload":
                f.flush()
                os.fsync(f.fileno())
                die()
            f.write(b" and the rest")
        led.mark_released(debit_id)
    if point == "after_upload":
        die()
    """
).replace("EPS", repr(EPS))


@pytest.mark.parametrize(
    ("point", "debits", "released"),
    [
        ("before_debit", ROUNDS - 1, ROUNDS - 1),
        ("in_commit", ROUNDS - 1, ROUNDS - 1),
        ("after_debit", ROUNDS, ROUNDS - 1),
        ("during_upload", ROUNDS, ROUNDS),
        ("after_upload", ROUNDS, ROUNDS),
    ],
)
def test_sigkill_never_leaves_the_ledger_short(
    tmp_path: Path, point: str, debits: int, released: int
) -> None:
    path = tmp_path / "privacy-ledger.sqlite"
    out = tmp_path / "uploads"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(out), point, str(ROUNDS)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    markers = sorted(out.iterdir())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Ledger(path, "ds") as led:
        entries = led.entries()
        eps, _, _ = led.total()
    assert len(markers) == released
    assert len(entries) == debits
    # the invariant itself: never less debited than released, for every released round
    assert eps >= EPS * len(markers)
    assert {int(m.name.split("-")[1]) for m in markers} <= {e.round for e in entries}
    # a round killed after its debit is still 'debited' (counted) — never silently refunded
    statuses = [e.status for e in entries]
    fully_done = ROUNDS if point == "after_upload" else ROUNDS - 1
    assert statuses == ["released"] * fully_done + ["debited"] * (debits - fully_done)

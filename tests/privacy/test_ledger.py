"""The budget ledger: composition against Opacus, refusal that writes nothing, append-only storage."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from secagg.errors import ConfigError, PolicyRefusal
from secagg.privacy import BudgetExhausted, Ledger, Spend, compose


def _svt(eps: float) -> Spend:
    return Spend("svt", eps, 0.0)


def _gauss(z: float, q: float = 1.0, steps: int = 1) -> Spend:
    return Spend("gaussian", 1.0, 1e-5, z, q, steps)


def test_basic_composition_adds_svt_spends(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite", "ds", 1.0, 1e-5) as led:
        for r in range(10):
            led.debit("job-a", r, [_svt(0.1)])
        eps, delta, method = led.total()
        assert eps == 1.0 and delta == 0.0  # fsum: ten 0.1s are exactly the budget
        assert "basic composition of 10" in method
        assert led.remaining() == (0.0, 1e-5)
        with pytest.raises(BudgetExhausted):
            led.debit("job-a", 10, [_svt(1e-9)])


def test_rdp_total_matches_opacus_for_the_same_history(tmp_path: Path) -> None:
    history = [(1.1, 0.01, 500), (1.1, 0.01, 500), (2.0, 1.0, 1), (0.8, 0.05, 40)]
    with Ledger(tmp_path / "l.sqlite", "ds", 100.0, 1e-5) as led:
        for i, (z, q, s) in enumerate(history):
            led.debit("job", i, [Spend("dpsgd" if q < 1 else "gaussian", 1.0, 1e-5, z, q, s)])
        eps, delta, method = led.total()
    acc = RDPAccountant()
    acc.history = list(history)
    assert eps == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-12)
    assert delta == pytest.approx(1e-5)
    assert "RDP (Opacus RDPAccountant) of 4" in method
    # and RDP is tighter than adding each release's own epsilon
    separate = sum(RDPAccountant_eps([h], 1e-5 / 4) for h in history)
    assert eps < separate


def RDPAccountant_eps(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = RDPAccountant()
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


def test_mixed_composition_adds_the_two_parts(tmp_path: Path) -> None:
    spends = [_svt(0.3), Spend("laplace", 0.2, 1e-6), _gauss(3.0), _gauss(3.0)]
    c = compose(spends, target_delta=1e-5)
    assert c.basic_epsilon == pytest.approx(0.5) and c.basic_delta == pytest.approx(1e-6)
    assert c.rdp_delta == pytest.approx(9e-6)
    assert c.rdp_epsilon == pytest.approx(RDPAccountant_eps([(3.0, 1.0, 1), (3.0, 1.0, 1)], 9e-6))
    assert c.epsilon == pytest.approx(c.basic_epsilon + c.rdp_epsilon)
    assert c.delta == pytest.approx(1e-5)
    # a Gaussian spend without its noise multiplier falls back to basic composition of its own (eps, delta)
    c2 = compose([Spend("gaussian", 0.7, 1e-7)], target_delta=1e-5)
    assert c2.epsilon == 0.7 and c2.n_basic == 1 and c2.n_rdp == 0
    # basic deltas that use up the target leave nothing for RDP: infinite, never optimistic
    assert math.isinf(compose([Spend("laplace", 0.1, 1e-5), _gauss(5.0)], 1e-5).epsilon)


def test_overspend_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    led = Ledger(path, "ds", 2.0, 1e-5)
    led.debit("job", 0, [_svt(1.5)])
    before = path.read_bytes(), list(led.entries())
    assert led.would_exceed([_svt(0.6)])
    assert not led.would_exceed([_svt(0.5)])
    with pytest.raises(BudgetExhausted) as ei:
        led.debit("job", 1, [_svt(0.25), _svt(0.25), _svt(0.1)])  # all or nothing
    assert isinstance(ei.value, PolicyRefusal) and ei.value.code == "budget_exhausted"
    assert "ds" in str(ei.value) and "budget" in str(ei.value)
    assert led.entries() == before[1]
    led.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 1
    conn.close()
    # an RDP overspend too
    with Ledger(path, "ds2", 1.0, 1e-5) as led2, pytest.raises(BudgetExhausted):
        led2.debit("job", 0, [_gauss(0.5, 1.0, 10)])
    with Ledger(path, "ds2") as led2:
        assert led2.entries() == []


def test_admission_check_uses_worst_case(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite", "ds", 1.0, 1e-5) as led:
        led.debit("old", 0, [_svt(0.5)])
        proj = led.admission_check([_svt(0.1)] * 5)
        assert proj.epsilon == pytest.approx(1.0)
        with pytest.raises(BudgetExhausted, match="worst case"):
            led.admission_check([_svt(0.1)] * 6)
        assert len(led.entries()) == 1  # admission never writes


def test_datasets_are_separate_accounts_and_budget_persists(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path, "a", 1.0, 1e-5) as a, Ledger(path, "b", 5.0, 1e-6) as b:
        a.debit("j", 0, [_svt(0.9)])
        b.debit("j", 0, [_svt(4.0)])
        assert a.total()[0] == pytest.approx(0.9) and b.total()[0] == pytest.approx(4.0)
    assert Ledger.datasets(path) == ["a", "b"]
    with Ledger(path, "b") as b:  # budget as recorded
        assert (b.budget_epsilon, b.budget_delta) == (5.0, 1e-6)
        assert len(b.entries()) == 1
    with pytest.raises(ConfigError, match="no privacy budget"):
        Ledger(path, "c")
    with pytest.raises(ConfigError, match="no privacy ledger"):
        Ledger.datasets(tmp_path / "missing.sqlite")


def test_ledger_is_append_only_and_only_moves_to_released(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path, "ds", 10.0, 1e-5) as led:
        debit = led.debit("job", 3, [_svt(1.0), _gauss(2.0)])
        assert {e.status for e in led.entries()} == {"debited"}
        assert led.mark_released(debit) == 2
        assert led.mark_released(debit) == 0
        entries = led.entries()
        assert {e.status for e in entries} == {"released"}
        assert [e.spend for e in entries] == [_svt(1.0), _gauss(2.0)]
        assert entries[0].job == "job" and entries[0].round == 3 and entries[0].debit_id == debit
    conn = sqlite3.connect(path)
    for stmt in (
        "DELETE FROM entries",
        "UPDATE entries SET epsilon = 0",
        "UPDATE entries SET status = 'debited'",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="privacy ledger"):
            conn.execute(stmt)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_concurrent_debits_cannot_both_fit(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path, "ds", 1.0, 1e-5).close()
    results: list[str] = []

    def worker() -> None:
        with Ledger(path, "ds") as led:
            try:
                led.debit("job", 0, [_svt(0.6)])
                results.append("ok")
            except BudgetExhausted:
                results.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "refused", "refused", "refused"]
    with Ledger(path, "ds") as led:
        assert led.total()[0] == pytest.approx(0.6)


def test_bad_budgets_are_refused(tmp_path: Path) -> None:
    for eps, delta in ((math.nan, 1e-5), (-1.0, 1e-5), (1.0, 1.0)):
        with pytest.raises(ConfigError):
            Ledger(tmp_path / "l.sqlite", "ds", eps, delta)
    with pytest.raises(ConfigError):
        Ledger(tmp_path / "l.sqlite", "ds", 1.0, None)


def test_durability_settings_and_garbage_files(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite", "ds", 1.0, 1e-5) as led:
        assert led._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert led._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a privacy ledger"):
        Ledger(junk, "ds", 1.0, 1e-5)
    with pytest.raises(ConfigError, match="not a privacy ledger"):
        Ledger.datasets(junk)
    conn = sqlite3.connect(tmp_path / "l.sqlite")
    conn.execute("UPDATE meta SET value='99' WHERE key='schema'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="schema 99"):
        Ledger(tmp_path / "l.sqlite", "ds")


def test_prepare_release_debits_before_handing_back(tmp_path: Path) -> None:
    import numpy as np

    from secagg.privacy import SvtSpec, build_chain, prepare_release

    path = tmp_path / "l.sqlite"
    chain = build_chain([SvtSpec(fraction=0.5, epsilon=0.1, noise_var=0.01, gamma=0.1, tau=0.0)])
    upd = {"w": np.ones(10, dtype=np.float32)}
    with Ledger(path, "ds", 2.0, 1e-5) as led:  # one round costs 1.0 + 0.614: two do not fit
        rel = prepare_release(led, chain, upd, np.random.default_rng(0), "job", 0, [Spend("dpsgd", 1.0, 0.0)])
        assert np.count_nonzero(rel.update["w"]) == 5
        assert [s.mechanism for s in rel.spends] == ["dpsgd", "svt"]
        # already durable: another connection sees it before any upload happens
        with Ledger(path, "ds") as other:
            assert [e.debit_id for e in other.entries()] == [rel.debit_id] * 2
        with pytest.raises(BudgetExhausted):  # the second round does not fit: nothing to upload
            prepare_release(led, chain, upd, np.random.default_rng(1), "job", 1)
        assert len(led.entries()) == 2

"""Release order (invariant 3): filters, then the durable debit, then the update; one bookkeeping path."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from secagg.agent.release import Releaser
from secagg.agent.state import SiteState
from secagg.auditlog import AuditLog
from secagg.bundle import BundleSpec
from secagg.errors import PolicyRefusal
from secagg.jobs.filters import DpsgdFilter, GaussianFilter
from secagg.policy.model import SitePolicy
from secagg.privacy.ledger import BudgetExhausted, Ledger
from secagg.privacy.spend import Spend
from secagg.privacy.streamed import UpdateFile

GAUSS = GaussianFilter(name="gaussian", clip=1.0, noise_multiplier=1.1)


def _policy(budget: dict[str, float] | None) -> SitePolicy:
    body: dict[str, Any] = {"version": 1, "signers": {"submitters": ["a@b"]}, "modes": ["plain"]}
    if budget is not None:
        body["privacy"] = {"budget": budget}
    return SitePolicy.model_validate(body)


def _adm(*filters: Any) -> Any:
    return SimpleNamespace(decision=SimpleNamespace(effective_privacy=list(filters)))


_N = iter(range(10**6))


def _update(tmp: Path) -> UpdateFile:
    """The trained update as the agent holds it: a float32 file in the job's folder."""
    upd = OrderedDict(w=np.full(100, 10.0, dtype=np.float32))
    return UpdateFile.of(tmp / f"update-{next(_N)}.safetensors", BundleSpec.of(upd), upd)


def _w(release: Any) -> np.ndarray:
    return release.update.load()["w"]


def _releaser(tmp: Path) -> Releaser:
    state = SiteState(tmp / "state")
    return Releaser(state=state, audit=AuditLog(tmp / "state" / "audit.jsonl"), data_name="data")


def _events(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp / "state" / "audit.jsonl").read_text().splitlines() if x]


def test_filters_run_and_the_debit_is_durable_before_anything_is_returned(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    out = rel.release(_adm(GAUSS), _policy({"epsilon": 50.0, "delta": 1e-3}), "job", 1, _update(tmp_path), [])
    # clipped to norm 1 plus noise: nowhere near the raw norm of 100
    assert np.linalg.norm(_w(out)) < 30
    assert out.debit_id
    rel.close()
    entries = Ledger(rel.path, "data").entries()  # a fresh connection: committed, not cached
    assert [(e.job, e.round) for e in entries] == [("job", 1)]


def test_an_exhausted_budget_refuses_and_records_nothing(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    with pytest.raises(BudgetExhausted):
        rel.release(_adm(GAUSS), _policy({"epsilon": 0.01, "delta": 1e-3}), "job", 1, _update(tmp_path), [])
    rel.close()
    assert Ledger(rel.path, "data").entries() == []


def test_without_a_budget_the_filters_still_run_through_the_same_path(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    out = rel.release(_adm(GAUSS), _policy(None), "job", 1, _update(tmp_path), [])
    assert np.linalg.norm(_w(out)) < 30
    assert out.debit_id == ""
    assert not rel.path.exists()
    assert any(e["event"] == "spend_without_budget" for e in _events(tmp_path))


def test_uploaded_is_the_one_place_that_settles_a_round(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    out = rel.release(_adm(GAUSS), _policy({"epsilon": 50.0, "delta": 1e-3}), "job", 1, _update(tmp_path), [])
    rel.uploaded(out, "job", 1, 2, size=123, accepted=True)
    assert rel.state.progress("job")["round"] == 1 and rel.state.progress("job")["attempt"] == 2
    up = [e for e in _events(tmp_path) if e["event"] == "uploaded"]
    assert len(up) == 1 and up[0]["bytes"] == 123 and up[0]["epsilon"] > 0
    assert rel.ledger is not None and [e.status for e in rel.ledger.entries()] == ["released"]


def test_dpsgd_required_but_not_applied_or_overspent_is_refused() -> None:
    dp = DpsgdFilter(name="dpsgd", target_epsilon=2.0, target_delta=1e-5, max_grad_norm=1.0)
    with pytest.raises(PolicyRefusal) as none:
        Releaser.training_spends(_adm(dp), ())
    assert none.value.code == "dpsgd_not_applied"
    over = Spend(mechanism="dpsgd", epsilon=2.5, delta=1e-5, steps=10).__dict__
    with pytest.raises(PolicyRefusal) as exc:
        Releaser.training_spends(_adm(dp), (over,))
    assert exc.value.code == "dpsgd_overspent"


# ---- F3 (RELIABILITY.md): a retried attempt of a round already debited re-sends, never re-debits


def test_a_retried_attempt_resends_the_kept_release_without_a_second_debit(tmp_path: Path) -> None:
    policy = _policy({"epsilon": 50.0, "delta": 1e-3})
    rel = _releaser(tmp_path)
    first = rel.release(_adm(GAUSS), policy, "job", 2, _update(tmp_path), [])
    first_w = _w(first)  # its file is a temporary one: a restarted agent sweeps it
    rel.close()  # the agent is killed after its debit, before (or during, or after) its upload
    again = _releaser(tmp_path)  # restarted on the same state; the round is retried as attempt 2
    second = again.release(_adm(GAUSS), policy, "job", 2, _update(tmp_path), [])
    assert second.debit_id == first.debit_id
    assert np.array_equal(_w(second), first_w)  # the same released vector
    assert second.update.path == again.kept.path("job", 2)  # re-sent from the kept file itself
    assert second.spends == first.spends
    assert again.ledger is not None
    assert len({e.debit_id for e in again.ledger.entries()}) == 1  # one debit for the round
    assert any(e["event"] == "release_reused" for e in _events(tmp_path))
    # the next round is a new release and a new debit; the kept round-2 file goes
    third = again.release(_adm(GAUSS), policy, "job", 3, _update(tmp_path), [])
    assert third.debit_id != first.debit_id
    assert [(e.job, e.round) for e in again.ledger.entries()] == [("job", 2), ("job", 3)]
    assert not again.kept.path("job", 2).exists()
    again.end_job("job")
    assert not again.kept.path("job", 3).exists()


def test_a_kept_release_is_not_reused_under_another_chain_or_without_its_debit(tmp_path: Path) -> None:
    policy = _policy({"epsilon": 50.0, "delta": 1e-3})
    rel = _releaser(tmp_path)
    first = rel.release(_adm(GAUSS), policy, "job", 1, _update(tmp_path), [])
    # the policy now requires more noise: the kept vector did not go through it, so a new release
    stronger = GaussianFilter(name="gaussian", clip=1.0, noise_multiplier=2.0)
    second = rel.release(_adm(stronger), policy, "job", 1, _update(tmp_path), [])
    assert second.debit_id != first.debit_id
    # a kept file whose debit the ledger does not hold (another ledger, or a forged file) is ignored
    other = tmp_path / "other"
    rel2 = Releaser(state=SiteState(other / "state"), audit=AuditLog(other / "audit.jsonl"), data_name="data")
    rel2.kept.path("job", 1).write_bytes(rel.kept.path("job", 1).read_bytes())
    third = rel2.release(_adm(stronger), policy, "job", 1, _update(tmp_path), [])
    assert third.debit_id not in (first.debit_id, second.debit_id)
    # a torn file is ignored too
    rel2.kept.path("job", 1).write_bytes(b"\x08\x00\x00")
    assert rel2.kept.reuse("job", 1, "x", rel2.ledger) is None


def test_without_a_budget_nothing_is_kept(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    rel.release(_adm(GAUSS), _policy(None), "job", 1, _update(tmp_path), [])
    assert not rel.kept.path("job", 1).exists()


def test_a_crash_the_moment_the_debit_commits_still_finds_the_kept_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release is kept before the debit commits (under the debit's id): an agent killed right after
    the commit (another job's thread dying took it, RELIABILITY.md F13) resends it, no second debit."""
    policy = _policy({"epsilon": 50.0, "delta": 1e-3})
    rel = _releaser(tmp_path)
    real = Ledger.debit

    class Killed(BaseException):
        pass

    def commit_then_die(self: Ledger, *a: Any, **k: Any) -> str:
        real(self, *a, **k)
        raise Killed  # the process is gone between the commit and anything after it

    monkeypatch.setattr(Ledger, "debit", commit_then_die)
    with pytest.raises(Killed):
        rel.release(_adm(GAUSS), policy, "job", 2, _update(tmp_path), [])
    monkeypatch.setattr(Ledger, "debit", real)
    rel.close()
    again = _releaser(tmp_path)
    second = again.release(_adm(GAUSS), policy, "job", 2, _update(tmp_path), [])
    assert again.ledger is not None
    (debit,) = {e.debit_id for e in again.ledger.entries()}
    assert second.debit_id == debit  # the committed debit, reused: one debit for the round
    assert second.update.path == again.kept.path("job", 2)


def test_a_refused_debit_leaves_no_kept_release(tmp_path: Path) -> None:
    policy = _policy({"epsilon": 0.01, "delta": 1e-3})
    rel = _releaser(tmp_path)
    with pytest.raises(BudgetExhausted):
        rel.release(_adm(GAUSS), policy, "job", 2, _update(tmp_path), [])
    assert not rel.kept.path("job", 2).exists()

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
from secagg.errors import PolicyRefusal
from secagg.jobs.filters import DpsgdFilter, GaussianFilter
from secagg.policy.model import SitePolicy
from secagg.privacy.ledger import BudgetExhausted, Ledger
from secagg.privacy.spend import Spend

GAUSS = GaussianFilter(name="gaussian", clip=1.0, noise_multiplier=1.1)


def _policy(budget: dict[str, float] | None) -> SitePolicy:
    body: dict[str, Any] = {"version": 1, "signers": {"submitters": ["a@b"]}, "modes": ["plain"]}
    if budget is not None:
        body["privacy"] = {"budget": budget}
    return SitePolicy.model_validate(body)


def _adm(*filters: Any) -> Any:
    return SimpleNamespace(decision=SimpleNamespace(effective_privacy=list(filters)))


def _update() -> OrderedDict[str, np.ndarray]:
    return OrderedDict(w=np.full(100, 10.0, dtype=np.float32))


def _releaser(tmp: Path) -> Releaser:
    state = SiteState(tmp / "state")
    return Releaser(state=state, audit=AuditLog(tmp / "state" / "audit.jsonl"), data_name="data")


def _events(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp / "state" / "audit.jsonl").read_text().splitlines() if x]


def test_filters_run_and_the_debit_is_durable_before_anything_is_returned(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    out = rel.release(_adm(GAUSS), _policy({"epsilon": 50.0, "delta": 1e-3}), "job", 1, _update(), [])
    # clipped to norm 1 plus noise: nowhere near the raw norm of 100
    assert np.linalg.norm(out.update["w"]) < 30
    assert out.debit_id
    rel.close()
    entries = Ledger(rel.path, "data").entries()  # a fresh connection: committed, not cached
    assert [(e.job, e.round) for e in entries] == [("job", 1)]


def test_an_exhausted_budget_refuses_and_records_nothing(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    with pytest.raises(BudgetExhausted):
        rel.release(_adm(GAUSS), _policy({"epsilon": 0.01, "delta": 1e-3}), "job", 1, _update(), [])
    rel.close()
    assert Ledger(rel.path, "data").entries() == []


def test_without_a_budget_the_filters_still_run_through_the_same_path(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    out = rel.release(_adm(GAUSS), _policy(None), "job", 1, _update(), [])
    assert np.linalg.norm(out.update["w"]) < 30
    assert out.debit_id == ""
    assert not rel.path.exists()
    assert any(e["event"] == "spend_without_budget" for e in _events(tmp_path))


def test_uploaded_is_the_one_place_that_settles_a_round(tmp_path: Path) -> None:
    rel = _releaser(tmp_path)
    out = rel.release(_adm(GAUSS), _policy({"epsilon": 50.0, "delta": 1e-3}), "job", 1, _update(), [])
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

"""Issue #18: a site that restarts after a debit re-admits its own running job, counting only the
rounds it has not debited yet against the budget; the ledger's debit check still refuses any round
that would pass the budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from secagg.agent import admission as admission_mod
from secagg.agent.admission import Admission
from secagg.policy.admit import debited_rounds, remaining_worst_case
from secagg.privacy.ledger import BudgetExhausted, Ledger
from secagg.privacy.spend import Spend

ROUNDS = 4
PER_ROUND = [Spend("laplace", 0.25, 0.0)]
WORST = [s for _ in range(ROUNDS) for s in PER_ROUND]  # what decide() declares for the whole job


def test_remaining_worst_case_counts_only_the_rounds_not_debited() -> None:
    assert remaining_worst_case(WORST, ROUNDS, 0) == WORST
    assert remaining_worst_case(WORST, ROUNDS, 3) == PER_ROUND
    assert remaining_worst_case(WORST, ROUNDS, ROUNDS) == []
    assert remaining_worst_case(WORST, ROUNDS, ROUNDS + 5) == []
    assert remaining_worst_case([], ROUNDS, 1) == []
    two = [Spend("laplace", 0.1, 0.0), Spend("svt", 0.2, 0.0)]
    assert remaining_worst_case(two * 3, 3, 1) == two * 2


def test_a_restarted_site_readmits_its_job_and_the_ledger_never_overspends(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", "ds", 1.0, 1e-6)
    ledger.admission_check(WORST)  # the job's worst case fits exactly at first admission
    ledger.debit("job-1", 1, PER_ROUND)
    ledger.debit("job-1", 2, PER_ROUND)
    ledger.debit("other-job", 1, [])  # other jobs' rows do not count as this job's rounds
    # what the agent did before: its whole worst case on top of what it spent, refused
    with pytest.raises(BudgetExhausted):
        ledger.admission_check(WORST)
    done = debited_rounds(ledger.entries(), "job-1")
    assert done == {1, 2}
    ledger.admission_check(remaining_worst_case(WORST, ROUNDS, len(done)))  # accepted
    ledger.debit("job-1", 3, PER_ROUND)
    ledger.debit("job-1", 4, PER_ROUND)
    with pytest.raises(BudgetExhausted):
        ledger.debit("job-1", 5, PER_ROUND)  # one round past the job: the budget holds
    eps, _, _ = ledger.total()
    assert eps <= ledger.budget_epsilon + 1e-12
    ledger.close()


@dataclass
class _Audit:
    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def append(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


class _Relay:
    declined: list[Any] = []

    def fetch_job_to(self, job_id: str, dest: Path) -> None:
        dest.write_bytes(b"package")

    def decline(self, *args: Any) -> None:
        self.declined.append(args)


def test_admission_of_a_job_already_debited_counts_its_remaining_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission.admit itself, as a restarted agent calls it (package check and policy faked)."""
    policy = SimpleNamespace(privacy=SimpleNamespace(budget=object()))
    job = SimpleNamespace(spec=SimpleNamespace(rounds=ROUNDS, mode="plain"), signers=[])
    decision = SimpleNamespace(spends=WORST, effective_privacy=[], raise_if_refused=lambda: None)
    monkeypatch.setattr(admission_mod, "load_policy", lambda path: policy)
    monkeypatch.setattr(admission_mod, "admit_job", lambda *a, **k: (job, decision))
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("version: 1\n")
    ledger = Ledger(tmp_path / "ledger.sqlite", "ds", 1.0, 1e-6)
    state = SimpleNamespace(job_dir=lambda job_id: tmp_path)

    def fresh_agent() -> tuple[Admission, _Audit]:
        audit = _Audit()
        adm = Admission(
            kit=SimpleNamespace(ca_cert=None),  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
            relay=_Relay(),  # type: ignore[arg-type]
            audit=audit,  # type: ignore[arg-type]
            policy_path=policy_file,
            ledger_for=lambda p: ledger,
        )
        return adm, audit

    first, _ = fresh_agent()
    first.admit("job-1")
    ledger.debit("job-1", 1, PER_ROUND)
    ledger.debit("job-1", 2, PER_ROUND)
    restarted, audit = fresh_agent()  # the agent crashed after its debit and starts again
    restarted.admit("job-1")
    assert audit.lines[-1][0] == "job_admitted" and audit.lines[-1][1]["rounds_debited"] == 2
    # another job's whole worst case still counts against what was spent
    other, audit = fresh_agent()
    with pytest.raises(BudgetExhausted):
        other.admit("job-2")
    assert audit.lines[-1][0] == "job_refused"
    ledger.close()

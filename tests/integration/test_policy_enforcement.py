"""The site, not the aggregator, decides what it takes part in: each site enforces its own policy at
admission and before every upload, and debits its privacy budget once per uploaded round, while the
other sites of the job carry on."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from secagg.aggregator.store import StateStore
from secagg.privacy.ledger import Ledger
from secagg.privacy.spend import Spend
from tests.integration.harness import INIT, SAMPLES, Run, start
from tests.integration.test_strategies import fast_job
from tests.integration.tinyjob_train import delta

pytestmark = pytest.mark.slow

ALL = ["site-1", "site-2", "site-3"]


def _policy(
    tmp: Path,
    site: str,
    *,
    submitters: tuple[str, ...] = ("submitter@org-1", "admin@lead"),
    modes: tuple[str, ...] = ("plain", "he"),
    privacy: dict[str, Any] | None = None,
) -> Path:
    doc: dict[str, Any] = {
        "version": 1,
        "signers": {"submitters": list(submitters)},
        "modes": list(modes),
        "limits": {"max_rounds": 50, "min_sites_per_round": 2},
    }
    if privacy is not None:
        doc["privacy"] = privacy
    path = tmp / "policies" / f"{site}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _policies(tmp: Path, **special: Path) -> dict[str, Path]:
    """Every site gets an explicit policy (the relaxed one unless ``special`` names another)."""
    return {s: special.get(s.replace("-", "_")) or _policy(tmp, s) for s in ALL}


def _audit(tmp: Path, who: str) -> list[dict[str, Any]]:
    path = tmp / "state" / who / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _expected(
    per_round: list[list[str]], zero_head: frozenset[str] = frozenset()
) -> OrderedDict[str, np.ndarray]:
    """Weighted FedAvg where round r (1-based) averages the sites ``per_round[r-1]``; the sites in
    ``zero_head`` send a zero ``head`` delta (the exclude filter zeroes, it does not drop)."""
    shapes = {k: v.shape for k, v in INIT.items()}
    g = OrderedDict((k, v.astype(np.float64)) for k, v in INIT.items())
    for r, sites in enumerate(per_round, start=1):
        total = sum(SAMPLES[s] for s in sites)
        ds = {s: delta(s, r, shapes) for s in sites}
        for s in zero_head:
            if s in ds:
                ds[s]["head"] = np.zeros_like(ds[s]["head"])
        for k in g:
            g[k] = g[k] + sum(SAMPLES[s] / total * ds[s][k].astype(np.float64) for s in sites)
    return g


def _max_err(got: dict[str, Any], want: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) for k in want)


def _job_id(run: Run) -> str:
    job = run.server.fed.job
    assert job is not None
    return job.job_id


def _assert_refused_before_running(tmp: Path, run: Run, site: str, code: str) -> None:
    job_id = _job_id(run)
    err = run.errors.get(site)
    assert err is not None and getattr(err, "code", None) == code, run.errors
    jdir = tmp / "state" / site / "jobs" / job_id
    # invariant 1: nothing of the job ran or was even left unpacked at the refusing site
    assert not (jdir / "train.log").exists()
    assert not (jdir / "io").exists()
    assert not (jdir / "pkg").exists()
    refused = [r for r in _audit(tmp, site) if r["event"] == "job_refused"]
    assert refused and refused[0]["job"] == job_id and refused[0]["code"] == code
    assert not any(r["event"] in ("job_admitted", "uploaded") for r in _audit(tmp, site))
    declined = run.server.fed.store.declined(job_id)
    assert any(d["site"] == site and d["code"] == code for d in declined), declined


def _assert_finished_without(run: Run, site: str, rounds: int) -> None:
    job_id = _job_id(run)
    others = [s for s in ALL if s != site]
    rows = run.server.fed.store.rounds(job_id)
    assert [r.round for r in rows] == list(range(1, rounds + 1))
    assert all(r.participants == others for r in rows)
    assert run.server.fed.job.state == "finished"  # type: ignore[union-attr]
    want = _expected([others] * rounds)
    for s in others:
        assert _max_err(run.final(s), want) < 1e-6


@pytest.mark.parametrize(
    ("code", "policy_kw"),
    [
        ("signer_untrusted", {"submitters": ("admin@lead",)}),  # the job is signed by submitter@org-1
        ("mode_not_allowed", {"modes": ("he",)}),  # the job is plain
    ],
)
def test_site_refuses_a_job_its_policy_does_not_allow_and_the_others_finish(
    tmp_path: Path, workspace: Path, code: str, policy_kw: dict[str, Any]
) -> None:
    job = fast_job(tmp_path / "job", workspace, mode="plain", rounds=1, min_sites=2, round_timeout=15)
    policies = _policies(tmp_path, site_3=_policy(tmp_path, "site-3", **policy_kw))
    run = start(tmp_path, workspace, job, policies=policies)
    try:
        run.join()
        assert set(run.errors) == {"site-3"}, run.errors
        _assert_refused_before_running(tmp_path, run, "site-3", code)
        _assert_finished_without(run, "site-3", rounds=1)
    finally:
        run.stop()


def test_sites_with_different_policies_aggregate_correctly(tmp_path: Path, workspace: Path) -> None:
    """site-1 requires that ``head`` never leaves; the others are relaxed. The job does not ask for
    the filter: site-1 adds it itself, and the global model shows exactly site-1's zeroed head."""
    job = fast_job(tmp_path / "job", workspace, mode="plain", rounds=2, round_timeout=30)
    strict = _policy(tmp_path, "site-1", privacy={"required": [{"name": "exclude", "tensors": ["head"]}]})
    run = start(tmp_path, workspace, job, policies=_policies(tmp_path, site_1=strict))
    try:
        run.join()
        assert not run.errors, run.errors
        want = _expected([ALL, ALL], zero_head=frozenset({"site-1"}))
        unfiltered = _expected([ALL, ALL])
        for s in ALL:
            got = run.final(s)
            assert _max_err(got, want) < 1e-6
        # the filter made a visible difference on head, and only there
        assert float(np.max(np.abs(want["head"] - unfiltered["head"]))) > 1e-3
        assert (
            _max_err(
                {k: v for k, v in run.final("site-2").items() if k != "head"},
                {k: v for k, v in unfiltered.items() if k != "head"},
            )
            < 1e-6
        )
        admitted = [r for r in _audit(tmp_path, "site-1") if r["event"] == "job_admitted"]
        assert admitted and admitted[0]["filters"] == ["exclude"]
    finally:
        run.stop()


def _when_round_1_is_recorded(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> None:
    """Run ``action`` in the aggregator's driver thread right after round 1 is stored and before
    round 2 exists, so no site can have fetched round 2 yet: "between the rounds", deterministically
    (polling from the test thread would race the sites' next fetch)."""
    add_round = StateStore.add_round

    def hooked(self: StateStore, job_id: str, round_: int, *args: Any, **kw: Any) -> None:
        add_round(self, job_id, round_, *args, **kw)
        if round_ == 1:
            action()

    monkeypatch.setattr(StateStore, "add_round", hooked)


def test_policy_changed_mid_job_stops_the_site_at_the_next_round(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = fast_job(tmp_path / "job", workspace, mode="plain", rounds=3, min_sites=2, round_timeout=20)
    policy = _policy(tmp_path, "site-3")
    # the security officer removes plain from the allowed modes (the size changes too, so the agent's
    # (mtime, size) stamp sees it even on a coarse-mtime file system)
    _when_round_1_is_recorded(monkeypatch, lambda: _policy(tmp_path, "site-3", modes=("he",)))
    run = start(tmp_path, workspace, job, policies=_policies(tmp_path, site_3=policy))
    try:
        fed = run.server.fed
        job_id = _job_id(run)
        run.join()
        assert set(run.errors) == {"site-3"}, run.errors
        assert getattr(run.errors["site-3"], "code", None) == "mode_not_allowed"
        assert "from round 2" in str(run.errors["site-3"])
        rows = fed.store.rounds(job_id)
        assert [r.round for r in rows] == [1, 2, 3]
        assert rows[0].participants == ALL
        assert all(r.participants == ["site-1", "site-2"] for r in rows[1:])
        assert fed.job.state == "finished"  # type: ignore[union-attr]
        want = _expected([ALL, ["site-1", "site-2"], ["site-1", "site-2"]])
        for s in ("site-1", "site-2"):
            assert _max_err(run.final(s), want) < 1e-6
        declined = fed.store.declined(job_id)
        assert [(d["site"], d["round"], d["code"]) for d in declined] == [("site-3", 2, "mode_not_allowed")]
        events = _audit(tmp_path, "site-3")
        uploads = [r["round"] for r in events if r["event"] == "uploaded"]
        assert uploads == [1]
        reload = [r for r in events if r["event"] == "policy_reloaded"]
        assert reload and reload[0]["round"] == 2 and reload[0]["accept"] is False
        assert any(r["event"] == "round_declined" and r["code"] == "mode_not_allowed" for r in events)
    finally:
        run.stop()


GAUSSIAN = {"name": "gaussian", "clip": 1.0, "noise_multiplier": 2.0}
BUDGET = {"epsilon": 10.0, "delta": 1.0e-5}


def test_privacy_budget_is_debited_per_round_and_an_exhausted_site_declines(
    tmp_path: Path, workspace: Path
) -> None:
    rounds = 2
    job = fast_job(tmp_path / "job", workspace, mode="plain", rounds=rounds, min_sites=2, round_timeout=15)
    privacy = {"required": [GAUSSIAN], "budget": BUDGET}
    policies = _policies(
        tmp_path,
        site_1=_policy(tmp_path, "site-1", privacy=privacy),
        site_2=_policy(tmp_path, "site-2", privacy=privacy),
    )
    # site-2's data set has already spent nearly all of its budget on earlier work
    spent = Spend("laplace", 9.5, 0.0)
    with Ledger(tmp_path / "state" / "site-2" / "privacy-ledger.sqlite", "site-2", 10.0, 1e-5) as pre:
        pre.debit("earlier-job", 1, [spent])
    run = start(tmp_path, workspace, job, policies=policies)
    try:
        run.join()
        assert set(run.errors) == {"site-2"}, run.errors
        code = getattr(run.errors["site-2"], "code", None)
        assert code in ("budget_exhausted", "budget_exceeded"), run.errors
        _assert_refused_before_running(tmp_path, run, "site-2", code)
        job_id = _job_id(run)
        rows = run.server.fed.store.rounds(job_id)
        assert [r.participants for r in rows] == [["site-1", "site-3"]] * rounds
        # the noise really went out with site-1's update (std 2 per entry, weight 100/350)
        noiseless = _expected([["site-1", "site-3"]] * rounds)
        assert _max_err(run.final("site-3"), noiseless) > 0.1
    finally:
        run.stop()

    with Ledger(tmp_path / "state" / "site-1" / "privacy-ledger.sqlite", "site-1") as ledger:
        entries = ledger.entries()
        assert [(e.job, e.round, e.spend.mechanism) for e in entries] == [
            (job_id, r, "gaussian") for r in range(1, rounds + 1)
        ]
        assert all(e.status == "released" for e in entries)
        assert all(e.spend.noise_multiplier == GAUSSIAN["noise_multiplier"] for e in entries)
        eps, _, _ = ledger.total()
        assert 0 < eps <= BUDGET["epsilon"]
    # invariant 3: each round's debit was durable before the aggregator had the upload
    accepted = {
        r["round"]: datetime.fromisoformat(r["time"])
        for r in _audit(tmp_path, "aggregator")
        if r["event"] == "upload_accepted" and r.get("site") == "site-1"
    }
    for e in entries:
        assert datetime.fromisoformat(e.time) <= accepted[e.round] + timedelta(milliseconds=1)
    uploaded = [r for r in _audit(tmp_path, "site-1") if r["event"] == "uploaded"]
    assert [r["round"] for r in uploaded] == list(range(1, rounds + 1))
    assert all(r["epsilon"] and r["epsilon"] > 0 for r in uploaded)
    # the refusing site spent nothing more: its ledger holds only what it held before
    with Ledger(tmp_path / "state" / "site-2" / "privacy-ledger.sqlite", "site-2") as ledger:
        assert [(e.job, e.spend.epsilon) for e in ledger.entries()] == [("earlier-job", 9.5)]
    # the relaxed site (no budget) keeps no ledger at all
    assert not (tmp_path / "state" / "site-3" / "privacy-ledger.sqlite").exists()


def test_a_filter_added_to_the_policy_mid_job_applies_from_the_next_round(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stricter policy takes effect too, not only a refusing one: site-1's head stops leaving it
    from round 2 on, and the job goes on with it."""
    job = fast_job(tmp_path / "job", workspace, mode="plain", rounds=2, round_timeout=30)
    strict = {"required": [{"name": "exclude", "tensors": ["head"]}]}
    _when_round_1_is_recorded(monkeypatch, lambda: _policy(tmp_path, "site-1", privacy=strict))
    run = start(tmp_path, workspace, job, policies=_policies(tmp_path))
    try:
        run.join()
        assert not run.errors, run.errors
        # round 1 as it was, round 2 with site-1's head zeroed: two rounds of FedAvg computed apart
        shapes = {k: v.shape for k, v in INIT.items()}
        total = sum(SAMPLES.values())
        want = OrderedDict((k, v.astype(np.float64)) for k, v in INIT.items())
        for r in (1, 2):
            for s in ALL:
                d = delta(s, r, shapes)
                if r == 2 and s == "site-1":
                    d["head"] = np.zeros_like(d["head"])
                for k in want:
                    want[k] = want[k] + SAMPLES[s] / total * d[k].astype(np.float64)
        for s in ALL:
            assert _max_err(run.final(s), want) < 1e-6
        reload = [r for r in _audit(tmp_path, "site-1") if r["event"] == "policy_reloaded"]
        assert reload and reload[0]["round"] == 2 and reload[0]["accept"] is True
    finally:
        run.stop()


def test_a_round_the_ledger_cannot_pay_for_is_not_uploaded(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission passed, then another job spent from the same data set: the debit before round 2's
    upload is refused, nothing is recorded for it, and nothing is uploaded (invariant 3)."""
    from secagg.privacy.accounting import compose
    from secagg.privacy.specs import GaussianSpec, spend_of

    # (computed first: the RDP accountant's first import is slow, and the round clock runs from submit)
    one = spend_of(GaussianSpec.model_validate(GAUSSIAN), 39)
    assert one is not None
    e1 = compose([one], BUDGET["delta"]).epsilon
    e2 = compose([one, one], BUDGET["delta"]).epsilon
    # fits next to round 1, not next to rounds 1 and 2
    other = Spend("laplace", BUDGET["epsilon"] - (e1 + e2) / 2, 0.0)
    privacy = {"required": [GAUSSIAN], "budget": BUDGET}
    job = fast_job(tmp_path / "job", workspace, mode="plain", rounds=2, min_sites=2, round_timeout=15)
    ledger_path = tmp_path / "state" / "site-1" / "privacy-ledger.sqlite"

    def other_job_spends() -> None:
        with Ledger(ledger_path, "site-1") as ledger:
            # the admitted job holds its round 2 (its reservation): no other job's debit can take it
            # (tests/privacy/test_ledger_concurrency.py). To reach the refused debit anyway, the
            # spend here ignores that hold, as a tool writing the ledger file without reserving could
            for r in ledger.reservations():
                ledger.release_reservation(r.job)
            ledger.debit("other-job", 1, [other])

    _when_round_1_is_recorded(monkeypatch, other_job_spends)
    run = start(
        tmp_path,
        workspace,
        job,
        policies=_policies(tmp_path, site_1=_policy(tmp_path, "site-1", privacy=privacy)),
    )
    try:
        run.join()
        assert set(run.errors) == {"site-1"}, run.errors
        assert getattr(run.errors["site-1"], "code", None) == "budget_exhausted"
        job_id = _job_id(run)
        rows = run.server.fed.store.rounds(job_id)
        assert [r.participants for r in rows] == [ALL, ["site-2", "site-3"]]
        declined = run.server.fed.store.declined(job_id)
        assert [(d["site"], d["round"], d["code"]) for d in declined] == [("site-1", 2, "budget_exhausted")]
    finally:
        run.stop()
    with Ledger(ledger_path, "site-1") as ledger:
        assert [(e.job, e.round) for e in ledger.entries()] == [(job_id, 1), ("other-job", 1)]
        eps, _, _ = ledger.total()
        assert eps <= BUDGET["epsilon"]
    assert [r["round"] for r in _audit(tmp_path, "site-1") if r["event"] == "uploaded"] == [1]

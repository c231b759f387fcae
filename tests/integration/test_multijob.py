"""Two jobs at once on one aggregator with three sites: both finish with exact results, the sites'
ledgers hold exactly what each job spent, a site at its limit or its budget declines one job (which
goes on without it), and aborting one job leaves the other to finish."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from secagg.bundle import from_safetensors
from secagg.commands._jobs import submit_verified
from secagg.privacy.ledger import Ledger
from secagg.provision.kit import load_kit
from tests.integration.harness import (
    TEST_POLICY,
    Run,
    expected_global,
    make_tiny_job,
    start,
    write_policies,
)

pytestmark = pytest.mark.slow

SITES = ["site-1", "site-2", "site-3"]
GAUSSIAN = {"required": [{"name": "gaussian", "clip": 1.0, "noise_multiplier": 1.0}]}


def _policy(**extra: Any) -> str:
    return TEST_POLICY + yaml.safe_dump(extra) if extra else TEST_POLICY


def _two_jobs(
    tmp: Path,
    workspace: Path,
    policies: dict[str, Path],
    rounds: tuple[int, int] = (2, 3),
    min_sites: int = 2,
) -> tuple[Run, list[str]]:
    jobs = [
        make_tiny_job(tmp / f"job-{i}", workspace, rounds=r, min_sites=min_sites)
        for i, r in enumerate(rounds)
    ]
    run = start(tmp, workspace, jobs[0], policies=policies)
    second = submit_verified(run.server.fed, jobs[1], load_kit(tmp / "ws" / "aggregator"))
    first = run.server.fed.store.jobs()[0].job_id
    return run, [first, second]


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _final(tmp: Path, site: str, job_id: str) -> OrderedDict[str, Any]:
    return from_safetensors((tmp / "state" / site / "jobs" / job_id / "final.safetensors").read_bytes())


def _close(got: OrderedDict[str, Any], want: OrderedDict[str, np.ndarray]) -> None:
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6)


def _overlapped(events: list[dict[str, Any]], a: str, b: str) -> bool:
    """Some round of each job completed while the other job was running."""
    seq = {(e["event"], e.get("job")): i for i, e in enumerate(events)}
    rounds_b = [i for i, e in enumerate(events) if e["event"] == "round_completed" and e.get("job") == b]
    return any(seq[("job_started", a)] < i < seq[("job_finished", a)] for i in rounds_b)


def test_two_jobs_at_once_exact_results_and_a_site_at_its_limit_declines_one(
    tmp_path: Path, workspace: Path
) -> None:
    pols = write_policies(
        tmp_path,
        {
            "site-1": _policy(),
            "site-2": _policy(),
            "site-3": TEST_POLICY + "  max_concurrent_jobs: 1\n",  # the last section is limits
        },
    )
    run, (a, b) = _two_jobs(tmp_path, workspace, pols)
    try:
        run.join(timeout=180)
        assert not run.errors, run.errors
        store = run.server.fed.store
        assert [store.job(j).state for j in (a, b)] == ["finished", "finished"]  # type: ignore[union-attr]
    finally:
        run.stop()
    events = _audit(run.server.fed.audit.path)
    assert _overlapped(events, a, b) or _overlapped(events, b, a)
    declined = [e for e in events if e["event"] == "task_declined" and e["site"] == "site-3"]
    assert [e["code"] for e in declined] == ["max_concurrent_jobs"]
    out = declined[0]["job"]
    for job_id, rounds in ((a, 2), (b, 3)):
        sites = ["site-1", "site-2"] if job_id == out else SITES
        want = expected_global(rounds, sites)
        for site in sites:
            _close(_final(tmp_path, site, job_id), want)
    # sites 1 and 2 ran both jobs at once, each in a training worker of its own
    for site in ("site-1", "site-2"):
        for job_id in (a, b):
            assert (tmp_path / "state" / site / "jobs" / job_id / "train.log").is_file()


def test_ledgers_are_exact_and_a_budget_for_one_job_admits_one(tmp_path: Path, workspace: Path) -> None:
    """Both jobs' worst cases (2 rounds each, eps 5.42) fit sites 1 and 2 (budget 100) but not together
    site 3 (budget 7): site 3 admits exactly one, whichever asks first, and refuses the other."""
    pols = write_policies(
        tmp_path,
        {
            "site-1": _policy(privacy={**GAUSSIAN, "budget": {"epsilon": 100.0, "delta": 1e-3}}),
            "site-2": _policy(privacy={**GAUSSIAN, "budget": {"epsilon": 100.0, "delta": 1e-3}}),
            "site-3": _policy(privacy={**GAUSSIAN, "budget": {"epsilon": 7.0, "delta": 1e-3}}),
        },
    )
    run, (a, b) = _two_jobs(tmp_path, workspace, pols, rounds=(2, 2))
    try:
        run.join(timeout=180)
        assert set(run.errors) <= {"site-3"}, run.errors
        assert getattr(run.errors.get("site-3"), "code", None) == "budget_exhausted"
        store = run.server.fed.store
        assert [store.job(j).state for j in (a, b)] == ["finished", "finished"]  # type: ignore[union-attr]
    finally:
        run.stop()
    for site in SITES:
        led = Ledger(tmp_path / "state" / site / "privacy-ledger.sqlite", site)
        entries = sorted((e.job, e.round, e.status) for e in led.entries())
        assert led.reservations() == []  # both jobs ended: nothing held any more
        eps, _, _ = led.total()
        assert eps <= led.budget_epsilon
        if site != "site-3":
            assert entries == sorted((j, r, "released") for j in (a, b) for r in (1, 2)), site
            continue
        refused = [
            e for e in _audit(tmp_path / "state" / site / "audit.jsonl") if e["event"] == "job_refused"
        ]
        assert [e["code"] for e in refused] == ["budget_exhausted"]
        kept = b if refused[0]["job"] == a else a
        assert entries == [(kept, 1, "released"), (kept, 2, "released")]


def test_aborting_one_job_leaves_the_other_to_finish(tmp_path: Path, workspace: Path) -> None:
    pols = write_policies(tmp_path, _policy())
    run, (a, b) = _two_jobs(tmp_path, workspace, pols, rounds=(4, 3), min_sites=3)
    fed = run.server.fed

    def abort_a_after_round_1(record: dict[str, Any]) -> None:
        if record["event"] == "round_completed" and record.get("job") == a and record.get("round") == 1:
            threading.Thread(target=fed.abort, args=(a, "admin@lead"), daemon=True).start()

    fed.audit.listeners.append(abort_a_after_round_1)
    try:
        run.join(timeout=180)
        assert not run.errors, run.errors
        assert fed.store.job(a).state == "aborted"  # type: ignore[union-attr]
        assert fed.store.job(b).state == "finished"  # type: ignore[union-attr]
        assert [r.round for r in fed.store.rounds(a)] == [1]
    finally:
        run.stop()
    want = expected_global(3, SITES)
    for site in SITES:
        _close(_final(tmp_path, site, b), want)
        uploads = [e for e in _audit(tmp_path / "state" / site / "audit.jsonl") if e["event"] == "uploaded"]
        assert [e["round"] for e in uploads if e["job"] == a] == [1], site
        assert [e["round"] for e in uploads if e["job"] == b] == [1, 2, 3], site

"""Two jobs at once on one aggregator in every protected mode (he, mask, tee and tee-mask with the dev
TEE), each job's result the one it has alone.

Each mode runs the same two jobs twice on fresh federations of three sites: once one after the other
(``max_jobs`` 1: the second queues until the first has finished) and once at the same time
(``max_jobs`` 2). The jobs train different updates (their ``params.salt`` seeds them), so a round of one
job summed into the other, or a roster, weight or mask of one used for the other, changes the result.
Every site's policy requires the Gaussian filter under a budget: the noise is seeded by (site, job
name, round) through a stand-in for ``prepare_release`` (the sites run in this process), so a job's
released updates are the same in both runs and its global model must be too: bit for bit where the
sum is exact or in a fixed site order (mask, tee-mask, tee), within CKKS's error in he. Both runs'
ledgers must hold exactly one released debit per (job, round), nothing reserved any more.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import secagg.agent.release as release_module
from secagg.bundle import from_safetensors
from secagg.commands._jobs import submit_verified
from secagg.privacy.ledger import Ledger
from secagg.provision.kit import load_kit
from secagg.tee.attester import DevTeeAttester
from secagg.tee.enclave import Enclave
from tests.integration.harness import TEST_POLICY, Run, make_tiny_job, start, write_policies

pytestmark = pytest.mark.slow

SITES = ["site-1", "site-2", "site-3"]
MEASUREMENT = hashlib.sha384(b"aggregator image").digest()
POLICY = TEST_POLICY.replace("modes: [plain, he]", "modes: [plain, he, mask, tee, tee-mask]") + (
    f"""attestation:
  types: [dev-tee]
  measurements: [{MEASUREMENT.hex()}]
  allow_insecure_dev_tee: true
  max_age_s: 600
privacy:
  required: [{{name: gaussian, clip: 1.0, noise_multiplier: 1.0}}]
  budget: {{epsilon: 100.0, delta: 1.0e-3}}
"""
)
MASK = {"mask": {"threshold": 2, "clip": 4.0}}
#: mode -> (job.yaml extras, runs in an enclave)
MODES: dict[str, tuple[dict[str, Any], bool]] = {
    "he": ({}, False),
    "mask": (MASK, False),
    "tee": ({}, True),
    "tee-mask": (MASK, True),
}
#: job name -> rounds (different lengths: one job's rounds go on after the other has finished)
JOBS = {"job-a": 2, "job-b": 3}
#: CKKS's error on a sum of three updates over three rounds (the other modes are compared exactly)
HE_BOUND = 1e-4


def _name(job_id: str) -> str:
    return job_id.rsplit("-", 1)[0]


@pytest.fixture
def seeded_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Gaussian filter's noise, seeded by (data set, job name, round): the same release in both
    runs of a job, whatever order its rounds and the other job's interleave in."""
    real = release_module.prepare_release

    def seeded(
        ledger: Any, chain: Any, update: Any, rng: Any, job: str, round: int, *a: Any, **kw: Any
    ) -> Any:
        assert ledger is not None  # every site has a budget
        key = f"{ledger.dataset}/{_name(job)}/{round}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
        return real(ledger, chain, update, np.random.default_rng(seed), job, round, *a, **kw)

    monkeypatch.setattr(release_module, "prepare_release", seeded)


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _federate(tmp: Path, workspace: Path, mode: str, max_jobs: int) -> tuple[Run, dict[str, str]]:
    """Both jobs submitted at once to a fresh federation running at most ``max_jobs``; run to the end."""
    extra, attested = MODES[mode]
    jobs = [
        make_tiny_job(
            tmp / name,
            workspace,
            mode=mode,
            rounds=rounds,
            round_timeout=60,
            script="salted_train.py",
            extra={**extra, "name": name, "params": {"salt": name}},
        )
        for name, rounds in JOBS.items()
    ]
    enclave = (
        Enclave(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), MEASUREMENT)) if attested else None
    )
    run = start(tmp, workspace, jobs[0], policies=write_policies(tmp, POLICY), enclave=enclave)
    fed = run.server.fed
    fed.scheduler.max_jobs = max_jobs
    submit_verified(fed, jobs[1], load_kit(tmp / "ws" / "aggregator"))
    try:
        run.join(timeout=300)
        assert not run.errors, run.errors
        rows = {_name(r.job_id): r for r in fed.store.jobs()}
        assert {n: r.state for n, r in rows.items()} == {n: "finished" for n in JOBS}
    finally:
        run.stop()
    return run, {n: r.job_id for n, r in rows.items()}


def _finals(tmp: Path, ids: dict[str, str]) -> dict[str, OrderedDict[str, Any]]:
    """Each job's global model, the same at every site."""
    out = {}
    for name, job_id in ids.items():
        got = [
            from_safetensors((tmp / "state" / s / "jobs" / job_id / "final.safetensors").read_bytes())
            for s in SITES
        ]
        for other in got[1:]:
            assert all(np.array_equal(other[k], got[0][k]) for k in got[0]), name
        out[name] = got[0]
    return out


def _check_audit_and_ledgers(tmp: Path, ids: dict[str, str]) -> list[dict[str, Any]]:
    """Every job has its own lines (start, each round once, finish) at the aggregator and its own
    uploads at each site, and each site's ledger holds exactly one released debit per (job, round)."""
    events = _audit(tmp / "state" / "aggregator" / "audit.jsonl")
    for name, job_id in ids.items():
        mine = [e for e in events if e.get("job") == job_id]
        kinds = Counter(e["event"] for e in mine)
        assert kinds["job_started"] == 1 and kinds["job_finished"] == 1, (name, kinds)
        done = [e["round"] for e in mine if e["event"] == "round_completed"]
        assert done == list(range(1, JOBS[name] + 1)), (name, done)
    untagged = [
        e for e in events if e["event"] in ("round_completed", "upload_accepted") and not e.get("job")
    ]
    assert not untagged, untagged
    want_entries = sorted((ids[n], r, "released") for n, rounds in JOBS.items() for r in range(1, rounds + 1))
    for site in SITES:
        uploads = [e for e in _audit(tmp / "state" / site / "audit.jsonl") if e["event"] == "uploaded"]
        for name, job_id in ids.items():
            assert [e["round"] for e in uploads if e["job"] == job_id] == list(range(1, JOBS[name] + 1))
        with Ledger(tmp / "state" / site / "privacy-ledger.sqlite", site) as led:
            assert sorted((e.job, e.round, e.status) for e in led.entries()) == want_entries, site
            assert led.reservations() == []
            eps, _, _ = led.total()
            assert 0 < eps <= led.budget_epsilon
            per_round = {e.spend.epsilon for e in led.entries()}
            assert len(per_round) == 1, per_round  # every round the same filter: the same epsilon
    return events


def _check_metrics(run: Run, ids: dict[str, str], mode: str) -> None:
    """Each site's metrics have one series per job: its own rounds, round times and bytes."""
    for site, agent in run.agents.items():
        get = agent.metrics.registry.get_sample_value
        for name, job_id in ids.items():
            labels = {"job": job_id, "mode": mode}
            assert get("secagg_site_rounds_completed_total", labels) == JOBS[name], (site, name)
            assert get("secagg_site_round_seconds_count", labels) == JOBS[name], (site, name)
            assert (get("secagg_site_bytes_sent_total", labels) or 0) > 0, (site, name)
            assert (get("secagg_site_bytes_received_total", labels) or 0) > 0, (site, name)


def _overlapped(events: list[dict[str, Any]], a: str, b: str) -> bool:
    """Some round of ``b`` completed while ``a`` was running."""
    seq = {(e["event"], e.get("job")): i for i, e in enumerate(events)}
    rounds_b = [i for i, e in enumerate(events) if e["event"] == "round_completed" and e.get("job") == b]
    return any(seq[("job_started", a)] < i < seq[("job_finished", a)] for i in rounds_b)


@pytest.mark.parametrize("mode", list(MODES))
def test_two_jobs_at_once_each_end_where_it_ends_alone(
    tmp_path: Path, workspace: Path, mode: str, seeded_noise: None
) -> None:
    _, alone_ids = _federate(tmp_path / "alone", workspace, mode, max_jobs=1)
    both_run, both_ids = _federate(tmp_path / "both", workspace, mode, max_jobs=2)

    alone_events = _check_audit_and_ledgers(tmp_path / "alone", alone_ids)
    both_events = _check_audit_and_ledgers(tmp_path / "both", both_ids)
    _check_metrics(both_run, both_ids, mode)
    a, b = alone_ids["job-a"], alone_ids["job-b"]
    assert not _overlapped(alone_events, a, b) and not _overlapped(alone_events, b, a)  # queued: one by one
    assert [e["job"] for e in alone_events if e["event"] == "job_queued"] == [b]
    a, b = both_ids["job-a"], both_ids["job-b"]
    assert _overlapped(both_events, a, b) or _overlapped(both_events, b, a)

    alone, both = _finals(tmp_path / "alone", alone_ids), _finals(tmp_path / "both", both_ids)
    for name in JOBS:
        for k, want in alone[name].items():
            if mode == "he":
                assert float(np.max(np.abs(both[name][k] - want))) < HE_BOUND, (name, k)
            else:
                assert np.array_equal(both[name][k], want), (name, k)
    # the jobs' results are their own: different salts, different models
    assert not np.allclose(both["job-a"]["head"], both["job-b"]["head"])

"""Security invariant 7 against a malicious aggregator: one that hands one site a model of its own
choosing, forges a site's signed fingerprint, or hides one from the roster is caught by every honest
site before any update leaves it.

The aggregator here is the real in-process ``Federation`` with one method wrapped (patched on the
class before the server starts, so no site can fetch a task from an honest one first)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.agent.consistency import ModelInconsistent, sign_fingerprint
from secagg.aggregator.federation import Federation
from secagg.bundle import from_safetensors, to_safetensors
from tests.integration.harness import TEST_POLICY, Run, start, write_policies
from tests.integration.test_strategies import fast_job

pytestmark = pytest.mark.slow

ALL = ["site-1", "site-2", "site-3"]
POLICY = TEST_POLICY


def _audit(tmp: Path, who: str) -> list[dict[str, Any]]:
    path = tmp / "state" / who / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _uploaded(tmp: Path, site: str, round_: int | None = None) -> list[dict[str, Any]]:
    return [
        r for r in _audit(tmp, site) if r["event"] == "uploaded" and (round_ is None or r["round"] == round_)
    ]


def _settle(tmp: Path, run: Run, round_: int = 1, timeout: float = 120) -> None:
    """Until every site has either stopped or uploaded ``round_`` (whichever the code under test does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(not t.is_alive() or _uploaded(tmp, s, round_) for s, t in run.threads.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"sites neither stopped nor uploaded; errors: {run.errors}")


def _assert_every_site_stopped(tmp: Path, run: Run, differing: dict[str, list[str]], round_: int = 1) -> None:
    """Every site stopped in ``round_`` before uploading it; ``differing[site]``: the sites the
    error of ``site`` must name."""
    job = run.server.fed.job
    assert job is not None
    for site in ALL:
        assert not _uploaded(tmp, site, round_), f"{site} uploaded in spite of an inconsistent model"
        err = run.errors.get(site)
        assert isinstance(err, ModelInconsistent), (site, run.errors)
        assert err.code == "model_inconsistent"
        assert f"round {round_} " in str(err), str(err)
        for other in differing[site]:
            assert other in str(err), (site, other, str(err))
        events = _audit(tmp, site)
        assert not any(r["event"] == "model_consistent" and r["round"] == round_ for r in events)
        assert any(
            r["event"] == "round_declined" and r["code"] == "model_inconsistent" and r["round"] == round_
            for r in events
        )
    # nothing of the round reached the aggregator: no upload accepted, no result, every site said why
    agg = _audit(tmp, "aggregator")
    assert not any(
        r["event"] in ("upload_accepted", "round_completed") and r.get("round") == round_ for r in agg
    )
    assert [r.round for r in run.server.fed.store.rounds(job.job_id)] == list(range(1, round_))
    declined = run.server.fed.store.declined(job.job_id)
    assert sorted(d["site"] for d in declined if d["code"] == "model_inconsistent") == ALL
    assert all(d["round"] == round_ for d in declined)


def _run(
    tmp: Path,
    workspace: Path,
    *,
    min_sites: int = 3,
    mode: str = "plain",
    rounds: int = 1,
    policy: str = POLICY,
) -> Run:
    extra = {"mask": {"threshold": 2}} if mode == "mask" else None
    job = fast_job(
        tmp / "job", workspace, mode=mode, rounds=rounds, min_sites=min_sites, round_timeout=60, extra=extra
    )
    return start(tmp, workspace, job, policies=write_policies(tmp, policy, ALL))


def _give_site_3_its_own_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The aggregator sends site-3 a model of its choosing (Pasquini et al., CCS 2022)."""
    served: dict[int, tuple[dict[str, Any], str]] = {}
    next_task, payload = Federation.next_task, Federation.payload

    def remember(self: Federation, site: str, *args: Any, **kw: Any) -> dict[str, Any]:
        header = next_task(self, site, *args, **kw)
        served[id(header)] = (header, site)  # the header is kept alive, so its id stays unique
        return header

    def tampered(self: Federation, header: dict[str, Any]) -> Iterator[bytes]:
        data = b"".join(payload(self, header))
        if header.get("kind") == "train" and served.get(id(header), ({}, ""))[1] == "site-3":
            bundle = from_safetensors(data)
            bundle["head"] = bundle["head"] + np.float32(0.25)
            data = to_safetensors(bundle)  # same names, shapes and size: only the values differ
        yield data

    monkeypatch.setattr(Federation, "next_task", remember)
    monkeypatch.setattr(Federation, "payload", tampered)


def test_a_site_given_its_own_global_model_is_caught_by_every_site(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _give_site_3_its_own_model(monkeypatch)
    run = _run(tmp_path, workspace)
    try:
        _settle(tmp_path, run)
        _assert_every_site_stopped(
            tmp_path, run, {"site-1": ["site-3"], "site-2": ["site-3"], "site-3": ["site-1", "site-2"]}
        )
        # the victim really held another model, and it trained on it
        job_id = run.server.fed.job.job_id  # type: ignore[union-attr]
        g1 = from_safetensors((tmp_path / "state/site-1/jobs" / job_id / "global-0.safetensors").read_bytes())
        g3 = from_safetensors((tmp_path / "state/site-3/jobs" / job_id / "global-0.safetensors").read_bytes())
        assert np.allclose(g3["head"] - g1["head"], 0.25)
    finally:
        run.stop()


def test_a_site_given_its_own_global_model_sends_nothing_computed_from_it(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _give_site_3_its_own_model(monkeypatch)
    seen: list[tuple[str, dict[str, Any]]] = []
    post_ready = Federation.post_ready

    def recording(self: Federation, site: str, job_id: str, round_: int, payload: bytes) -> None:
        seen.append((site, json.loads(payload)))
        post_ready(self, site, job_id, round_, payload)

    monkeypatch.setattr(Federation, "post_ready", recording)
    run = _run(tmp_path, workspace)
    try:
        _settle(tmp_path, run)
        assert isinstance(run.errors.get("site-3"), ModelInconsistent), run.errors
        # everything the aggregator got from site-3 before the check: no data-dependent metrics
        from_site_3 = [msg for site, msg in seen if site == "site-3"]
        assert from_site_3 and not any("metrics" in msg for msg in from_site_3), from_site_3
    finally:
        run.stop()


def test_he_a_site_told_another_scale_for_the_encrypted_average_is_caught(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In ``he`` the aggregator cannot pick a site's model, but it can lie about how to read it: it
    tells site-3 another scale for round 1's encrypted sum, so site-3 computes another global model."""
    next_task = Federation.next_task

    def lying(self: Federation, site: str, *args: Any, **kw: Any) -> dict[str, Any]:
        header = next_task(self, site, *args, **kw)
        if site == "site-3" and header.get("kind") == "train" and header.get("updates"):
            header = copy.deepcopy(header)
            for u in header["updates"]:
                u["scale"] = float(u["scale"]) * 1.5
        return header

    monkeypatch.setattr(Federation, "next_task", lying)
    run = _run(tmp_path, workspace, mode="he", rounds=2)
    try:
        _settle(tmp_path, run, round_=2)
        _assert_every_site_stopped(
            tmp_path,
            run,
            {"site-1": ["site-3"], "site-2": ["site-3"], "site-3": ["site-1", "site-2"]},
            round_=2,
        )
        for site in ALL:  # round 1, with one model everywhere, went through
            assert [r["round"] for r in _uploaded(tmp_path, site)] == [1]
    finally:
        run.stop()


def _patch_roster(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    roster = Federation.roster

    def forged(self: Federation, job_id: str, round_: int, wait_s: float) -> dict[str, Any] | None:
        real = roster(self, job_id, round_, wait_s)
        if real is None or real.get("cancelled"):
            return real
        fake = copy.deepcopy(real)
        change(self, fake)
        return fake

    monkeypatch.setattr(Federation, "roster", forged)


def test_a_forged_fingerprint_in_the_roster_stops_every_site(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator claims site-2 holds another model and signs that claim with its own key (the
    only key it has): site-2 sees its own fingerprint replaced, the others a signature that fails."""

    def forge(fed: Federation, roster: dict[str, Any]) -> None:
        assert fed.job is not None
        fake_fp = "ab" * 32
        roster["ready"]["site-2"] = sign_fingerprint(
            fed.kit.private_key,
            fake_fp,
            fed.job.job_id,
            roster["round"],
            roster["attempt"],
            "site-2",
            n_samples=roster["ready"]["site-2"]["n_samples"],
        )

    _patch_roster(monkeypatch, forge)
    run = _run(tmp_path, workspace)
    try:
        _settle(tmp_path, run)
        _assert_every_site_stopped(tmp_path, run, {s: ["site-2"] for s in ALL})
        assert "signature does not verify" in str(run.errors["site-1"])
        assert "another fingerprint for this site" in str(run.errors["site-2"])
    finally:
        run.stop()


def test_a_fingerprint_copied_onto_another_site_is_refused(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real signature is bound to its signer's name: site-1's entry relayed as site-3's fails."""

    def swap(fed: Federation, roster: dict[str, Any]) -> None:
        roster["ready"]["site-3"] = roster["ready"]["site-1"]

    _patch_roster(monkeypatch, swap)
    run = _run(tmp_path, workspace)
    try:
        _settle(tmp_path, run)
        # the fingerprint value is the right one, so site-3 itself cannot tell; the others can
        for site in ("site-1", "site-2"):
            assert isinstance(run.errors.get(site), ModelInconsistent), run.errors
            assert "site-3 (signature does not verify" in str(run.errors[site])
            assert not _uploaded(tmp_path, site)
    finally:
        run.stop()


def test_a_dropped_fingerprint_stops_every_site_when_all_sites_are_needed(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """site-3 stays in the roster's weights (its update would be summed) but its signed fingerprint
    is withheld from everyone. With min_sites = 3 the two remaining proofs are not enough."""

    def drop(fed: Federation, roster: dict[str, Any]) -> None:
        del roster["ready"]["site-3"]

    _patch_roster(monkeypatch, drop)
    run = _run(tmp_path, workspace, min_sites=3)
    try:
        _settle(tmp_path, run)
        _assert_every_site_stopped(tmp_path, run, {"site-1": [], "site-2": [], "site-3": ["site-3"]})
        assert "site-3 (in the roster without a signed fingerprint)" in str(run.errors["site-1"])
    finally:
        run.stop()


def test_a_dropped_fingerprint_of_a_weighted_site_stops_every_site(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same attack with min_sites = 2: every site in the weights must have proved the model."""

    def drop(fed: Federation, roster: dict[str, Any]) -> None:
        del roster["ready"]["site-3"]

    _patch_roster(monkeypatch, drop)
    run = _run(tmp_path, workspace, min_sites=2)
    try:
        _settle(tmp_path, run)
        _assert_every_site_stopped(tmp_path, run, {s: ["site-3"] for s in ALL})
    finally:
        run.stop()


def test_an_honest_roster_passes_the_check(tmp_path: Path, workspace: Path) -> None:
    """The control: with the same harness and no tampering every site proves the model and uploads."""
    run = _run(tmp_path, workspace)
    try:
        run.join()
        assert not run.errors, run.errors
        for site in ALL:
            ok = [r for r in _audit(tmp_path, site) if r["event"] == "model_consistent"]
            assert ok and ok[0]["sites"] == ALL
            assert [r["round"] for r in _uploaded(tmp_path, site)] == [1]
    finally:
        run.stop()


# ------------------------------------------------------------------ the aggregator choosing the weights
MASK_POLICY = POLICY.replace("modes: [plain, he]", "modes: [plain, he, mask]")


def _assert_refused_before_upload(tmp: Path, run: Run, code: str, sites: list[str] = ALL) -> None:
    for site in sites:
        err = run.errors.get(site)
        assert getattr(err, "code", None) == code, (site, run.errors)
        assert not _uploaded(tmp, site), f"{site} uploaded under weights the aggregator chose"
        events = _audit(tmp, site)
        assert any(r["event"] == "round_declined" and r["code"] == code for r in events)
        # refused inside the roster check, before the release (no budget spent, nothing sent)
        assert not any(r["event"] == "model_consistent" for r in events)
    agg = _audit(tmp, "aggregator")
    assert not any(r["event"] in ("upload_accepted", "round_completed") for r in agg)


@pytest.mark.parametrize("mode", ["mask", "he"])
def test_skewed_weights_that_would_unmask_one_site_stop_every_site(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The attack: weights {site-1: 1, others: 1e-12} make the unmasked sum (mask) or the decrypted
    average (he) site-1's own update. Every site recomputes the weights from the signed counts."""

    def skew(fed: Federation, roster: dict[str, Any]) -> None:
        roster["weights"] = {"site-1": 1.0, "site-2": 1e-12, "site-3": 1e-12}

    _patch_roster(monkeypatch, skew)
    run = _run(tmp_path, workspace, mode=mode, policy=MASK_POLICY)
    try:
        _settle(tmp_path, run)
        _assert_refused_before_upload(tmp_path, run, "weights_mismatch")
        assert "site-2 (announced 1e-12, signed counts give 0.125)" in str(run.errors["site-1"])
    finally:
        run.stop()


def test_a_forged_sample_count_fails_its_signature_at_every_other_site(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator raises site-1's relayed count (and weighs by it): the count is under site-1's
    signature, so every other site refuses; site-1 sees its own count changed."""

    def forge(fed: Federation, roster: dict[str, Any]) -> None:
        roster["ready"]["site-1"]["n_samples"] = 10**9
        roster["weights"] = {
            s: w for s, w in zip(ALL, (10**9 / (10**9 + 300), 50 / (10**9 + 300), 250 / (10**9 + 300)))
        }

    _patch_roster(monkeypatch, forge)
    run = _run(tmp_path, workspace, mode="mask", policy=MASK_POLICY)
    try:
        _settle(tmp_path, run)
        _assert_refused_before_upload(tmp_path, run, "model_inconsistent")
        assert "site-1 (signature does not verify" in str(run.errors["site-2"])
        assert "another sample count for this site" in str(run.errors["site-1"])
    finally:
        run.stop()


def test_a_dropped_signed_count_stops_every_site(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator relays site-3's proof without its count (as an older agent would send it)."""

    def drop(fed: Federation, roster: dict[str, Any]) -> None:
        del roster["ready"]["site-3"]["n_samples"]

    _patch_roster(monkeypatch, drop)
    run = _run(tmp_path, workspace, mode="he")
    try:
        _settle(tmp_path, run)
        _assert_refused_before_upload(tmp_path, run, "model_inconsistent")
        assert "site-3 (no signed sample count" in str(run.errors["site-1"])
    finally:
        run.stop()


def test_a_policy_minimum_share_refuses_a_round_dominated_by_this_site(
    tmp_path: Path, workspace: Path
) -> None:
    """Honest weights, but site-2 holds 50 of 400 samples (0.125): a site that wants every other site
    to hold at least 0.2 of the sum refuses; the others, without that rule, are not stopped by it."""
    strict = MASK_POLICY + "  min_weight_share: 0.2\n"
    policies = write_policies(tmp_path, {"site-1": strict, "site-2": MASK_POLICY, "site-3": MASK_POLICY})
    job = fast_job(
        tmp_path / "job",
        workspace,
        mode="mask",
        rounds=1,
        min_sites=2,
        round_timeout=20,
        extra={"mask": {"threshold": 2}},
    )
    run = start(tmp_path, workspace, job, policies=policies)
    try:
        _settle(tmp_path, run)
        err = run.errors.get("site-1")
        assert getattr(err, "code", None) == "weight_share_too_small", run.errors
        assert "site-2 (0.125)" in str(err)
        assert not _uploaded(tmp_path, "site-1")
    finally:
        run.stop()

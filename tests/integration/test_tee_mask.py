"""tee-mask end to end with the (insecure) dev TEE: the mask protocol with its server in the attested
enclave. Every site attests the enclave before it sends anything, every message it posts is sealed to
the enclave, everything it collects is signed by it, and a site drops out and is recovered as in mask.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.agent.site import SimulatedDropout
from secagg.aggregator.modes.tee_mask import TeeMaskMode
from secagg.errors import PolicyRefusal
from secagg.mask.messages import MaskedInput
from secagg.tee.attester import DevTeeAttester
from secagg.tee.enclave import Enclave
from tests.integration.harness import TEST_POLICY, expected_global, make_tiny_job, start, write_policies

pytestmark = pytest.mark.slow

MEASUREMENT = hashlib.sha384(b"aggregator image").digest()
POLICY = TEST_POLICY.replace("modes: [plain, he]", "modes: [plain, he, tee-mask]") + (
    f"""attestation:
  types: [dev-tee]
  measurements: [{MEASUREMENT.hex()}]
  allow_insecure_dev_tee: true
  max_age_s: 600
"""
)
#: a real site: accepts only hardware evidence, so the dev TEE's host is a host without evidence
PRODUCTION = TEST_POLICY.replace("modes: [plain, he]", "modes: [plain, he, tee-mask]") + (
    f"""attestation:
  types: [sev-snp, tdx]
  measurements: [{MEASUREMENT.hex()}]
"""
)
JOB = {"mask": {"threshold": 2, "clip": 1.0}}
SITES = ["site-1", "site-2", "site-3"]


class RecordingEnclave(Enclave):
    """The dev enclave, plus a log of everything it opened: what a broken enclave could reveal."""

    def __init__(self) -> None:
        super().__init__(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), MEASUREMENT))
        self.opened: list[tuple[str, str, bytes]] = []

    def open_update(self, chunks: Any, job: str, round: int, site: str, **kw: Any) -> bytes:
        data = super().open_update(chunks, job, round, site, **kw)
        self.opened.append(("update", site, data))
        return data

    def open_message(self, chunks: Any, job: str, round: int, site: str, purpose: str, **kw: Any) -> bytes:
        data = super().open_message(chunks, job, round, site, purpose, **kw)
        self.opened.append((purpose, site, data))
        return data


def _audit(tmp: Path, node: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp / "state" / node / "audit.jsonl").read_text().splitlines()]


def test_tee_mask_federation_matches_fedavg_and_the_enclave_sees_only_masked_vectors(
    tmp_path: Path, workspace: Path
) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="tee-mask", rounds=2, extra=JOB)
    enclave = RecordingEnclave()
    run = start(tmp_path, workspace, job, policies=write_policies(tmp_path, POLICY), enclave=enclave)
    try:
        run.join()
        assert not run.errors, run.errors
        want = expected_global(2, SITES)
        got = run.final("site-1")
        assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-6
    finally:
        run.stop()
    # every site attested the enclave in every round before it sent anything
    for site in SITES:
        attested = [r for r in _audit(tmp_path, site) if r["event"] == "aggregator_attested"]
        assert len(attested) >= 2 and all(r["insecure_dev_tee"] for r in attested)
    phases = [r["phase"] for r in _audit(tmp_path, "aggregator") if r["event"] == "mask_phase"]
    assert phases[:4] == ["mask-keys", "mask-shares", "upload", "mask-unmask"]
    # a simulated enclave break: the host reads everything the enclave ever opened. Each site's
    # upload opened only as a masked vector, which differs from every honest quantised update
    opened_updates = [(site, data) for kind, site, data in enclave.opened if kind == "update"]
    assert sorted({s for s, _ in opened_updates}) == SITES
    for _site, data in opened_updates:
        vec = MaskedInput.from_bytes(data).vector.astype(np.uint64)
        # the tiny job's updates are small numbers: in fixed point they sit near 0 or near 2^32;
        # a masked vector is uniform on Z_2^32, so most of its entries are far from both
        far = np.minimum(vec, 2**32 - vec) > 2**28
        assert far.mean() > 0.5
    # the messages it opened are phase messages, each opened only for its own phase
    purposes = {kind.split("/")[0] for kind, _, _ in enclave.opened if kind != "update"}
    assert purposes == {"mask-keys", "mask-shares", "mask-unmask-resp"}
    # nothing was spooled in the clear
    assert not list((tmp_path / "state" / "aggregator" / "spool").rglob("*.upload"))


def test_a_site_dropping_after_sharing_is_recovered(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(
        tmp_path / "job", workspace, mode="tee-mask", rounds=2, min_sites=2, round_timeout=20, extra=JOB
    )
    run = start(
        tmp_path, workspace, job, policies=write_policies(tmp_path, POLICY), enclave=RecordingEnclave()
    )
    run.agents["site-3"].simulate_dropout = (1, "upload")
    try:
        run.join(timeout=120)
        assert set(run.errors) == {"site-3"}, run.errors
        assert isinstance(run.errors["site-3"], SimulatedDropout)
        want = expected_global(2, ["site-1", "site-2"])
        got = run.final("site-2")
        assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-6
    finally:
        run.stop()


def test_a_site_refuses_a_host_without_acceptable_evidence_before_sending_anything(
    tmp_path: Path, workspace: Path
) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="tee-mask", rounds=1, min_sites=2, extra=JOB)
    pols = write_policies(tmp_path, {"site-1": POLICY, "site-2": POLICY, "site-3": PRODUCTION})
    enclave = RecordingEnclave()
    run = start(tmp_path, workspace, job, policies=pols, enclave=enclave)
    try:
        run.join(timeout=120)
        err = run.errors.get("site-3")
        assert isinstance(err, PolicyRefusal), run.errors
        assert err.code in ("tee_dev_not_allowed", "tee_type")
        assert set(run.errors) == {"site-3"}
    finally:
        run.stop()
    assert not any(r["event"] == "uploaded" for r in _audit(tmp_path, "site-3"))
    # it refused at attestation, before its first mask message: the enclave never heard from it
    assert not [kind for kind, site, _ in enclave.opened if site == "site-3"]


def test_the_mode_needs_an_enclave() -> None:
    from secagg.errors import ConfigError

    with pytest.raises(ConfigError):
        TeeMaskMode.check_aggregator(None)

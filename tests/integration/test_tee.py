"""tee mode end to end with the (insecure) dev TEE: sites attest the aggregator with their own nonce,
seal to the bound key, and check the signed global model; a production policy refuses the dev TEE."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import PolicyRefusal
from secagg.tee.attester import DevTeeAttester
from secagg.tee.enclave import Enclave
from tests.integration.harness import TEST_POLICY, expected_global, make_tiny_job, start, write_policies

pytestmark = pytest.mark.slow

MEASUREMENT = hashlib.sha384(b"aggregator image").digest()
TEE_BASE = TEST_POLICY.replace("modes: [plain, he]", "modes: [plain, he, tee]")
DEV_TEE = (
    TEE_BASE
    + f"""attestation:
  types: [dev-tee]
  measurements: [{MEASUREMENT.hex()}]
  allow_insecure_dev_tee: true
  max_age_s: 600
"""
)
PRODUCTION = (
    TEE_BASE
    + f"""attestation:
  types: [sev-snp, tdx]
  measurements: [{MEASUREMENT.hex()}]
"""
)


def _policies(tmp: Path, text_by_site: dict[str, str]) -> dict[str, Path]:
    return write_policies(tmp, text_by_site)


def _enclave() -> Enclave:
    return Enclave(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), MEASUREMENT))


def test_tee_federation_with_dev_tee_matches_fedavg(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="tee", rounds=2)
    pols = _policies(tmp_path, {s: DEV_TEE for s in ("site-1", "site-2", "site-3")})
    run = start(tmp_path, workspace, job, policies=pols, enclave=_enclave())
    try:
        run.join()
        assert not run.errors, run.errors
        want = expected_global(2, ["site-1", "site-2", "site-3"])
        got = run.final("site-3")
        assert max(float(np.max(np.abs(got[k] - want[k]))) for k in want) < 1e-6
    finally:
        run.stop()
    site_audit = [
        json.loads(x) for x in (tmp_path / "state" / "site-1" / "audit.jsonl").read_text().splitlines()
    ]
    attested = [r for r in site_audit if r["event"] == "aggregator_attested"]
    assert len(attested) >= 2 and all(r["insecure_dev_tee"] for r in attested)
    # the sealed uploads never hit the aggregator's disk in the clear: only HPKE chunks were spooled
    assert not list((tmp_path / "state" / "aggregator" / "spool").rglob("*.upload"))


def test_production_policy_refuses_the_dev_tee_aggregator(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="tee", rounds=1, min_sites=2)
    pols = _policies(tmp_path, {"site-1": DEV_TEE, "site-2": DEV_TEE, "site-3": PRODUCTION})
    run = start(tmp_path, workspace, job, policies=pols, enclave=_enclave())
    try:
        run.join()
        err = run.errors.get("site-3")
        assert isinstance(err, PolicyRefusal), run.errors
        assert err.code in ("tee_dev_not_allowed", "tee_type")
        assert "dev" in str(err).lower()
        assert set(run.errors) == {"site-3"}
        # site-3 never uploaded; the others finished the round without it
        site3 = (tmp_path / "state" / "site-3" / "audit.jsonl").read_text()
        assert '"event":"uploaded"' not in site3 and '"event":"aggregator_refused"' in site3
        fed = run.server.fed
        assert fed.store.rounds(fed.job.job_id)[0].participants == ["site-1", "site-2"]  # type: ignore[union-attr]
    finally:
        run.stop()

"""distributed_gaussian end to end: a mask federation adds Skellam shares at each site, the unmasked
integer sum is the uniform mean plus the honest sum's noise, every site's ledger charges exactly the
sum-level epsilon accounting computes, the same in tee-mask (the sum formed in the dev-TEE enclave from
masked shares), and an ``he`` job with the filter is refused at admission."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.events import Event
from secagg.privacy.accounting import rdp_epsilon
from secagg.privacy.distributed import effective_noise_multiplier
from secagg.privacy.ledger import Ledger
from secagg.reasons import Reason
from secagg.tee.attester import DevTeeAttester
from secagg.tee.enclave import Enclave
from tests.integration.harness import INIT, SAMPLES, make_tiny_job, start, write_policies
from tests.integration.tinyjob_train import delta

pytestmark = pytest.mark.slow

#: tiny noise so the test can see the mean through it; the accounting is the same function at any z
DDG = {"name": "distributed_gaussian", "clip": 1.0, "noise_multiplier": 0.002, "min_honest_sites": 2}
BUDGET = {"epsilon": 1.0e7, "delta": 1.0e-5}
N_PARAMS = sum(v.size for v in INIT.values())


def _policy(**over: Any) -> str:
    doc: dict[str, Any] = {
        "version": 1,
        "signers": {"submitters": ["submitter@org-1", "admin@lead"]},
        "modes": ["plain", "he", "mask"],
        "privacy": {"required": [DDG], "budget": BUDGET},
        "limits": {"max_rounds": 50, "min_sites_per_round": 2},
    }
    doc.update(over)
    return yaml.safe_dump(doc, sort_keys=False)


def _uniform_mean(rounds: int) -> dict[str, np.ndarray]:
    shapes = {k: v.shape for k, v in INIT.items()}
    g = {k: v.astype(np.float64) for k, v in INIT.items()}
    for r in range(1, rounds + 1):
        for k in g:
            g[k] = g[k] + sum(delta(s, r, shapes)[k].astype(np.float64) for s in SAMPLES) / len(SAMPLES)
    return g


MEASUREMENT = hashlib.sha384(b"aggregator image").digest()
#: tee-mask: the mask protocol with its server in the (insecure, software) dev-TEE enclave
TEE_MASK_POLICY = _policy(
    modes=["plain", "tee-mask"],
    attestation={
        "types": ["dev-tee"],
        "measurements": [MEASUREMENT.hex()],
        "allow_insecure_dev_tee": True,
        "max_age_s": 600,
    },
)


@pytest.mark.parametrize("mode", ["mask", "tee-mask"])
def test_masked_federation_charges_the_sum_level_epsilon(tmp_path: Path, workspace: Path, mode: str) -> None:
    rounds = 2
    job = make_tiny_job(
        tmp_path / "job", workspace, mode=mode, rounds=rounds, extra={"mask": {"threshold": 2, "clip": 1.0}}
    )
    if mode == "mask":
        policies, enclave = write_policies(tmp_path, _policy()), None
    else:
        policies = write_policies(tmp_path, TEE_MASK_POLICY)
        enclave = Enclave(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), MEASUREMENT))
    run = start(tmp_path, workspace, job, policies=policies, enclave=enclave)
    try:
        run.join()
        assert not run.errors, run.errors
        got = run.final("site-1")
        job_id = run.server.fed.job.job_id  # type: ignore[union-attr]
    finally:
        run.stop()
    # the integer shares were summed exactly and read back as the *uniform* mean (noise std ~1e-3)
    want = _uniform_mean(rounds)
    err = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
    assert 0 < err < 0.01
    z_eff = effective_noise_multiplier(DDG["noise_multiplier"], DDG["clip"], 16, N_PARAMS)
    expected = rdp_epsilon([(z_eff, 1.0, 1)] * rounds, BUDGET["delta"])
    for site in SAMPLES:
        with Ledger(tmp_path / "state" / site / "privacy-ledger.sqlite", site) as ledger:
            entries = ledger.entries()
            assert [(e.job, e.round, e.spend.mechanism) for e in entries] == [
                (job_id, r, "distributed_gaussian") for r in range(1, rounds + 1)
            ]
            assert all(e.spend.noise_multiplier == z_eff for e in entries)
            assert ledger.total()[0] == expected
        if mode == "tee-mask":  # every site attested the enclave each round before it sent anything
            audit = (tmp_path / "state" / site / "audit.jsonl").read_text().splitlines()
            attested = [r for r in map(json.loads, audit) if r["event"] == Event.AGGREGATOR_ATTESTED]
            assert len(attested) >= rounds


def test_he_job_with_distributed_gaussian_is_refused_at_admission(tmp_path: Path, workspace: Path) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode="he", rounds=1, round_timeout=10)
    run = start(tmp_path, workspace, job, policies=write_policies(tmp_path, _policy()))
    try:
        run.join(timeout=60)
        assert set(run.errors) == set(SAMPLES), run.errors
        assert {getattr(e, "code", None) for e in run.errors.values()} == {Reason.DISTRIBUTED_DP_MODE}
    finally:
        run.stop()
    for site in SAMPLES:
        ledger = tmp_path / "state" / site / "privacy-ledger.sqlite"
        if ledger.exists():
            with Ledger(ledger, site) as led:
                assert led.entries() == []

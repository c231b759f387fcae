"""distributed_gaussian end to end: a mask federation adds Skellam shares at each site, the unmasked
integer sum is the uniform mean plus the honest sum's noise, every site's ledger charges exactly the
sum-level epsilon accounting computes, the same in tee-mask (the sum formed in the dev-TEE enclave from
masked shares) and in tee (the shares sealed to the dev-TEE enclave, which sums them in Z_2^32: the
global model is exactly the mean of the integer shares it opened, and each share carries only its
site's share of the noise), and ``he`` and ``plain`` jobs with the filter are refused at admission."""

from __future__ import annotations

import hashlib
import json
import math
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
ATTESTATION = {
    "types": ["dev-tee"],
    "measurements": [MEASUREMENT.hex()],
    "allow_insecure_dev_tee": True,
    "max_age_s": 600,
}
#: tee-mask: the mask protocol with its server in the (insecure, software) dev-TEE enclave
TEE_MASK_POLICY = _policy(modes=["plain", "tee-mask"], attestation=ATTESTATION)
#: tee: the shares sealed to the dev-TEE enclave, which sums them itself
TEE_POLICY = _policy(modes=["plain", "tee"], attestation=ATTESTATION)


class RecordingEnclave(Enclave):
    """The dev-TEE enclave with a window on what it opens: the test plays a broken enclave that
    reads every upload's plaintext (chunk by chunk, as the windowed combine opens them)."""

    def __init__(self) -> None:
        super().__init__(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), MEASUREMENT))
        #: (round, site) -> upload id -> chunk index -> plaintext
        self.seen: dict[tuple[int, str], dict[bytes, dict[int, bytes]]] = {}

    def open_update_chunk(self, raw: bytes, expect: Any, job: str, round: int, site: str) -> bytes:
        out = super().open_update_chunk(raw, expect, job, round, site)
        self.seen.setdefault((round, site), {}).setdefault(expect.upload_id, {})[expect.index] = bytes(out)
        return out

    def upload(self, round_: int, site: str) -> bytes:
        """The one upload a site sealed in a round, as the enclave opened it."""
        (chunks,) = self.seen[(round_, site)].values()
        return b"".join(chunks[i] for i in range(len(chunks)))


@pytest.mark.parametrize("mode", ["mask", "tee-mask", "tee"])
def test_share_summing_federation_charges_the_sum_level_epsilon(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    rounds = 2
    extra = {} if mode == "tee" else {"mask": {"threshold": 2, "clip": 1.0}}
    job = make_tiny_job(tmp_path / "job", workspace, mode=mode, rounds=rounds, extra=extra)
    enclave: RecordingEnclave | None = None
    if mode == "mask":
        policies = write_policies(tmp_path, _policy())
    else:
        policies = write_policies(tmp_path, TEE_POLICY if mode == "tee" else TEE_MASK_POLICY)
        enclave = RecordingEnclave()
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
        if mode != "mask":  # every site attested the enclave each round before it sent anything
            audit = (tmp_path / "state" / site / "audit.jsonl").read_text().splitlines()
            attested = [r for r in map(json.loads, audit) if r["event"] == Event.AGGREGATOR_ATTESTED]
            assert len(attested) >= rounds
    if mode == "tee":
        assert enclave is not None
        _check_tee_shares(enclave, rounds, got)


def _check_tee_shares(enclave: RecordingEnclave, rounds: int, got: dict[str, np.ndarray]) -> None:
    """What the enclave opened were the sites' integer shares (U32 residues at 2^-16, never floats);
    the global model is exactly INIT plus, each round, their sum read as signed 32-bit over the
    number of shares; and one share, all a broken enclave sees of a site, carries that site's share
    of the noise only: standard deviation z D2 / sqrt(m) in integer units, sqrt(m) below the sum's."""
    from safetensors.numpy import load as st_load

    from secagg.privacy.distributed import norm_bound, share_mu
    from secagg.privacy.shares import FRAC_BITS_KEY, SHARE_KEY

    shapes = {k: v.shape for k, v in INIT.items()}
    names = list(INIT)
    want = np.concatenate([INIT[k].astype(np.float64).ravel() for k in names])
    residual: list[np.ndarray] = []
    for r in range(1, rounds + 1):
        total = np.zeros(N_PARAMS, np.uint32)
        for site in SAMPLES:
            raw = enclave.upload(r, site)
            head = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
            assert head["__metadata__"][SHARE_KEY] == "distributed_gaussian"
            assert head["__metadata__"][FRAC_BITS_KEY] == "16"
            assert {head[k]["dtype"] for k in names} == {"U32"}
            tensors = st_load(raw)
            share = np.concatenate([tensors[k].ravel() for k in names]).astype(np.uint32)
            np.add(total, share, out=total)
            exact = share.view(np.int32).astype(np.float64) * 2.0**-16
            true = np.concatenate([delta(site, r, shapes)[k].astype(np.float64).ravel() for k in names])
            residual.append(exact - true)
        want = want + total.view(np.int32).astype(np.float64) * 2.0**-16 / len(SAMPLES)
    flat = np.concatenate([got[k].astype(np.float64).ravel() for k in names])
    assert np.allclose(flat, want, rtol=0, atol=1e-6)  # float32 rounding of the stored model only
    d2 = norm_bound(DDG["clip"], 16, N_PARAMS)
    per_share = math.sqrt(2 * share_mu(DDG["noise_multiplier"], d2, DDG["min_honest_sites"])) * 2.0**-16
    spread = float(np.std(np.concatenate(residual)))
    assert 0.7 * per_share < spread < 1.4 * per_share, (spread, per_share)


@pytest.mark.parametrize("mode", ["he", "plain"])
def test_a_job_where_one_update_is_visible_is_refused_at_admission(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    job = make_tiny_job(tmp_path / "job", workspace, mode=mode, rounds=1, round_timeout=10)
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

"""RELIABILITY.md F7 (a) at the federation: a tee job's keys are sealed when it starts, before any
site attests; an aggregator restarted on the same state resumes the job with them; an ended job
leaves none at rest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.aggregator.federation import Federation
from secagg.aggregator.rounds import JobState
from secagg.provision.kit import load_kit
from secagg.tee import DevTeeAttester, Enclave, EvidenceMessage
from secagg.tee.vault import SEALED_FILE, DevTeeSealingKey, JobKeyVault

MEASUREMENT = bytes.fromhex("33" * 48)
NONCE = bytes(range(32))


def _enclave(state: Path) -> Enclave:
    """As ``aggregator serve --insecure-dev-tee`` makes one: a fresh signing key each start."""
    vault = JobKeyVault(state / "jobs", DevTeeSealingKey.open(state / "dev-tee", MEASUREMENT))
    return Enclave(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), MEASUREMENT), vault=vault)


def _announced(fed: Federation, job_id: str) -> bytes:
    return EvidenceMessage.from_bytes(fed.attest("site-1", job_id, NONCE)).announcement.digest()


@pytest.fixture
def tee_fed(tmp_path: Path, make_fed: Callable[..., Federation]) -> Federation:
    return make_fed("tee", enclave=_enclave(tmp_path / "state-0"))


def test_a_tee_job_is_sealed_at_start_and_resumed_with_the_same_keys(
    tee_fed: Federation, workspace: Path
) -> None:
    job = tee_fed.job
    assert job is not None
    sealed = tee_fed.state_dir / "jobs" / job.job_id / SEALED_FILE
    assert sealed.is_file()  # before any site has attested
    before = _announced(tee_fed, job.job_id)
    tee_fed.store.close()
    # killed and restarted on the same state: a new process, a new enclave
    again = Federation(
        load_kit(workspace / "aggregator"), tee_fed.state_dir, enclave=_enclave(tee_fed.state_dir)
    )
    try:
        assert again.job is not None and again.job.job_id == job.job_id
        assert _announced(again, job.job_id) == before
    finally:
        again.store.close()


def test_sealed_keys_another_image_cannot_open_fail_the_job_at_resume(
    tee_fed: Federation, workspace: Path
) -> None:
    job = tee_fed.job
    assert job is not None
    tee_fed.store.close()
    state = tee_fed.state_dir
    other = JobKeyVault(state / "jobs", DevTeeSealingKey.open(state / "dev-tee", bytes(48)))
    enclave = Enclave(DevTeeAttester(ec.generate_private_key(ec.SECP384R1()), bytes(48)), vault=other)
    again = Federation(load_kit(workspace / "aggregator"), state, enclave=enclave)
    try:
        assert again.job is None  # the aggregator serves on; the job did not resume
        row = again.store.job(job.job_id)
        assert row is not None and row.state == JobState.FAILED
        assert row.reason is not None and "SealedKeysInvalid" in row.reason
        assert (state / "jobs" / job.job_id / SEALED_FILE).is_file()  # kept, never replaced
    finally:
        again.store.close()


def test_an_ended_tee_job_leaves_no_sealed_keys(tee_fed: Federation) -> None:
    job = tee_fed.job
    assert job is not None
    tee_fed.abort(job.job_id, by="test")
    assert not (tee_fed.state_dir / "jobs" / job.job_id / SEALED_FILE).exists()

"""RELIABILITY.md F7 (a): a job's enclave keys survive a restart sealed to the TEE's sealing key, and
open only for that job, that measurement and that sealing key; never on disk or in a log in the clear."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import ConfigError, UpdateRejected
from secagg.tee import (
    AttestationRefused,
    DevTeeAttester,
    Enclave,
    EnclaveKeys,
    KeyPin,
    keyseal,
    verify_aggregator,
)
from secagg.tee.keyseal import SealedKeysInvalid
from secagg.tee.vault import SEALED_FILE, DevTeeSealingKey, JobKeyVault

from .conftest import MEASUREMENT, NOW, NOW_TS, policy

JOB = "demo-0123abcd"
SEAL_KEY = bytes(range(32))
OTHER_MEASUREMENT = bytes.fromhex("22" * 32)


def test_keys_follow_from_their_seed() -> None:
    seed = os.urandom(32)
    a, b = EnclaveKeys.from_seed(seed), EnclaveKeys.from_seed(seed)
    assert a.announcement() == b.announcement()
    assert EnclaveKeys.generate().announcement() != a.announcement()
    assert EnclaveKeys.from_seed(seed, ["p384"]).suites == ("p384",)
    assert seed.hex() not in repr(a) and "redacted" in repr(a)


def test_sealed_keys_open_to_the_same_keys() -> None:
    keys = EnclaveKeys.generate()
    blob = keyseal.seal(keys, SEAL_KEY, MEASUREMENT, JOB)
    back = keyseal.unseal(blob, SEAL_KEY, MEASUREMENT, JOB)
    assert back.announcement() == keys.announcement() and back.suites == keys.suites
    # the seed never appears in the clear, raw or encoded
    assert (
        keys.seed not in blob
        and base64.b64encode(keys.seed) not in blob
        and keys.seed.hex().encode() not in blob
    )


@pytest.mark.parametrize(
    "change",
    ["job", "measurement", "key", "flip", "truncate", "magic", "version", "empty", "huge"],
)
def test_sealed_keys_open_only_where_they_were_sealed(change: str) -> None:
    blob = keyseal.seal(EnclaveKeys.generate(), SEAL_KEY, MEASUREMENT, JOB)
    job, measurement, key = JOB, MEASUREMENT, SEAL_KEY
    if change == "job":
        job = "demo-0123abce"
    elif change == "measurement":
        measurement = OTHER_MEASUREMENT
    elif change == "key":
        key = bytes(32)
    elif change == "flip":
        blob = blob[:-20] + bytes([blob[-20] ^ 1]) + blob[-19:]
    elif change == "truncate":
        blob = blob[:-1]
    elif change == "magic":
        blob = b"XXXX" + blob[4:]
    elif change == "version":
        blob = blob[:4] + b"\x02" + blob[5:]
    elif change == "empty":
        blob = b""
    else:
        blob = blob + bytes(keyseal.MAX_SEALED_BYTES)
    with pytest.raises(SealedKeysInvalid) as info:
        keyseal.unseal(blob, key, measurement, job)
    assert info.value.code == "tee_sealed_keys"


def _vault(state: Path, measurement: bytes = MEASUREMENT) -> JobKeyVault:
    return JobKeyVault(state / "jobs", DevTeeSealingKey.open(state / "dev-tee", measurement))


def test_vault_keeps_a_jobs_keys_sealed_across_a_restart(tmp_path: Path) -> None:
    (tmp_path / "jobs" / JOB).mkdir(parents=True)
    keys = _vault(tmp_path).open_or_create(JOB, ["mlkem768-x25519", "p384"])
    sealed = tmp_path / "jobs" / JOB / SEALED_FILE
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert keys.seed not in sealed.read_bytes()
    root = tmp_path / "dev-tee" / DevTeeSealingKey.ROOT_FILE
    assert stat.S_IMODE(root.stat().st_mode) == 0o600
    # a restart: everything rebuilt from the state folder
    again = _vault(tmp_path).open_or_create(JOB, ["mlkem768-x25519", "p384"])
    assert again.announcement() == keys.announcement()
    # another image (measurement) gets no key of the job
    with pytest.raises(SealedKeysInvalid):
        _vault(tmp_path, OTHER_MEASUREMENT).load(JOB)


@pytest.mark.parametrize("job", ["../x", "..", "a/b", "", ".hidden", "x" * 300, "nojob-00000000"])
def test_vault_never_makes_a_path_from_a_name_it_does_not_know(tmp_path: Path, job: str) -> None:
    (tmp_path / "jobs").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UpdateRejected) as info:
        _vault(tmp_path).open_or_create(job, ["p384"])
    assert info.value.code == "no_such_job"
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "dev-tee" not in p.parts)
    assert after == before


def test_dev_sealing_root_is_refused_when_others_can_read_it(tmp_path: Path) -> None:
    key = DevTeeSealingKey.open(tmp_path, MEASUREMENT)
    assert "redacted" in repr(key) and (tmp_path / DevTeeSealingKey.ROOT_FILE).read_bytes().hex() not in repr(
        key
    )
    assert DevTeeSealingKey.open(tmp_path, OTHER_MEASUREMENT).key() != key.key()  # bound to the measurement
    (tmp_path / DevTeeSealingKey.ROOT_FILE).chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        DevTeeSealingKey.open(tmp_path, MEASUREMENT)
    (tmp_path / DevTeeSealingKey.ROOT_FILE).chmod(0o600)
    (tmp_path / DevTeeSealingKey.ROOT_FILE).write_bytes(b"short")
    with pytest.raises(ConfigError, match="not 32 bytes"):
        DevTeeSealingKey.open(tmp_path, MEASUREMENT)


def _enclave(state: Path | None) -> Enclave:
    """A fresh enclave as a (re)started aggregator makes one: a new process, so a new dev-TEE
    signing key; with ``state``, the job keys kept sealed there."""
    att = DevTeeAttester(
        ec.generate_private_key(ec.SECP384R1()),
        MEASUREMENT,
        tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        clock=lambda: NOW_TS,
    )
    return Enclave(att, vault=_vault(state) if state is not None else None)


def _site_accepts(enclave: Enclave, pin: KeyPin, agg_cert: bytes, job: str = JOB):  # type: ignore[no-untyped-def]
    nonce = os.urandom(32)
    msg = enclave.answer_challenge(nonce, agg_cert, job)
    return verify_aggregator(
        msg.to_bytes(), nonce, agg_cert, policy(), allow_insecure_dev_tee=True, now=NOW, key_pin=pin, job=job
    )


def test_a_restarted_enclave_answers_with_the_keys_the_sites_pinned(
    tmp_path: Path, agg_cert: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "jobs" / JOB).mkdir(parents=True)
    first = _enclave(tmp_path)
    first.open_job(JOB)
    pin = KeyPin()
    trusted = _site_accepts(first, pin, agg_cert)
    update = os.urandom(5000)
    sealed = list(trusted.seal_update(update, JOB, 2, "site-1"))  # sealed before the kill

    restarted = _enclave(tmp_path)  # killed and restarted on the same state
    restarted.open_job(JOB)
    again = _site_accepts(restarted, pin, agg_cert)  # the pin holds: no tee_key_changed
    assert again.announcement == trusted.announcement
    assert restarted.open_update(sealed, JOB, 2, "site-1") == update
    fp = "ab" * 32
    again.verify_model(restarted.sign_model(fp, JOB, 3), fp, JOB, 3)
    seed = restarted._job(JOB)[0].seed  # noqa: SLF001 - the secret itself, to look for it in the log
    assert seed.hex() not in caplog.text and base64.b64encode(seed).decode() not in caplog.text


def test_without_sealed_keys_a_restart_is_refused_by_the_pin(agg_cert: bytes) -> None:
    """What F7 was, and what a TEE without a sealing key (configfs-tsm) still does."""
    pin = KeyPin()
    _site_accepts(_enclave(None), pin, agg_cert)
    with pytest.raises(AttestationRefused) as info:
        _site_accepts(_enclave(None), pin, agg_cert)
    assert info.value.code == "tee_key_changed"


def test_each_job_has_keys_of_its_own_and_unknown_jobs_none(tmp_path: Path, agg_cert: bytes) -> None:
    for job in (JOB, "other-00000000"):
        (tmp_path / "jobs" / job).mkdir(parents=True)
    enc = _enclave(tmp_path)
    enc.open_job(JOB)
    enc.open_job("other-00000000")
    assert enc.announcement_for(JOB) != enc.announcement_for("other-00000000")
    (tmp_path / "jobs" / "never-opened0").mkdir()
    with pytest.raises(UpdateRejected) as info:  # a job whose keys were never made gets none made now
        enc.answer_challenge(os.urandom(32), agg_cert, "never-opened0")
    assert info.value.code == "no_such_job"
    assert not (tmp_path / "jobs" / "never-opened0" / SEALED_FILE).exists()
    with pytest.raises(ValueError):
        enc.answer_challenge(os.urandom(32), agg_cert)  # per-job keys: the job must be named


def test_sealed_keys_another_image_cannot_open_fail_open_job(tmp_path: Path) -> None:
    (tmp_path / "jobs" / JOB).mkdir(parents=True)
    _enclave(tmp_path).open_job(JOB)
    sealed = tmp_path / "jobs" / JOB / SEALED_FILE
    blob = bytearray(sealed.read_bytes())
    blob[-1] ^= 1
    sealed.write_bytes(bytes(blob))
    with pytest.raises(SealedKeysInvalid):
        _enclave(tmp_path).open_job(JOB)
    assert sealed.read_bytes() == bytes(blob)  # kept as it was: never replaced by fresh keys


def test_an_ended_jobs_sealed_keys_are_removed_and_the_process_keeps_them(
    tmp_path: Path, agg_cert: bytes
) -> None:
    (tmp_path / "jobs" / JOB).mkdir(parents=True)
    enc = _enclave(tmp_path)
    enc.open_job(JOB)
    pin = KeyPin()
    trusted = _site_accepts(enc, pin, agg_cert)
    enc.close_job(JOB)
    assert not (tmp_path / "jobs" / JOB / SEALED_FILE).exists()
    fp = "cd" * 32
    trusted.verify_model(enc.sign_model(fp, JOB, 2), fp, JOB, 2)  # a late site still gets it signed
    enc.close_job(JOB)  # twice: nothing to do
    enc.close_job("never-made-00")  # a job without a folder: nothing to do

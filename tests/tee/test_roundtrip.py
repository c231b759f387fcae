"""The happy path with the dev TEE, and what the evidence binds."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict

import numpy as np
import pytest

from secagg.bundle import fingerprint
from secagg.errors import IntegrityError
from secagg.tee import (
    DevTeeAttester,
    Enclave,
    EnclaveKeys,
    EvidenceMessage,
    KeyAnnouncement,
    TrustedAggregator,
    report_data,
)
from secagg.tee.sealing import MAX_CHUNK
from tests.tee.conftest import MEASUREMENT


def test_round_trip_dev_tee(trusted: TrustedAggregator, enclave: Enclave) -> None:
    assert trusted.evidence_type == "dev-tee"
    assert trusted.measurement == MEASUREMENT.hex()
    assert trusted.suite == "mlkem768-x25519"
    update = os.urandom(50_000)
    chunks = list(trusted.seal_update(update, "job-1", 3, "site-1", chunk_size=16_384))
    assert len(chunks) == 4 and all(len(c) <= 16_384 for c in chunks)
    assert update not in b"".join(chunks)  # sealed, not copied
    assert enclave.open_update(chunks, "job-1", 3, "site-1") == update

    model = OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.ones(3, dtype=np.float32))
    fpr = fingerprint(model)
    sig = enclave.sign_model(fpr, "job-1", 3)
    trusted.verify_model(sig, fpr, "job-1", 3)  # does not raise


def test_streamed_payload_with_and_without_size(trusted: TrustedAggregator, enclave: Enclave) -> None:
    pieces = [os.urandom(n) for n in (10, 7000, 1, 3000)]
    whole = b"".join(pieces)
    for size in (len(whole), None):
        chunks = list(trusted.seal_update(iter(pieces), "j", 1, "s", size=size, chunk_size=4096))
        assert enclave.open_update(chunks, "j", 1, "s") == whole
    with pytest.raises(ValueError, match="longer than the declared size"):
        list(trusted.seal_update(iter(pieces), "j", 1, "s", size=len(whole) - 1, chunk_size=4096))
    with pytest.raises(ValueError, match="differs"):
        list(trusted.seal_update(whole, "j", 1, "s", size=len(whole) + 1))
    with pytest.raises(ValueError, match="shorter"):
        list(trusted.seal_update(iter(pieces), "j", 1, "s", size=len(whole) + 1, chunk_size=4096))


def test_default_chunks_fit_4_mib(trusted: TrustedAggregator, enclave: Enclave) -> None:
    update = bytes(MAX_CHUNK + 100)
    chunks = list(trusted.seal_update(update, "j", 1, "s"))
    assert len(chunks) == 2 and max(len(c) for c in chunks) <= MAX_CHUNK
    assert enclave.open_update(chunks, "j", 1, "s") == update


def test_empty_update_is_one_authenticated_chunk(trusted: TrustedAggregator, enclave: Enclave) -> None:
    chunks = list(trusted.seal_update(b"", "j", 1, "s"))
    assert len(chunks) == 1
    assert enclave.open_update(chunks, "j", 1, "s") == b""


def test_report_data_formula(keys: EnclaveKeys) -> None:
    nonce, cert = os.urandom(32), b"certificate DER"
    ann = keys.announcement()
    want = hashlib.sha512(
        nonce + hashlib.sha256(ann.to_bytes()).digest() + hashlib.sha256(cert).digest()
    ).digest()
    assert report_data(nonce, ann, cert) == want and len(want) == 64
    # every part of the announcement is bound: the model-signing key and each HPKE key
    other = EnclaveKeys.generate()
    swapped_model = KeyAnnouncement(ann.hpke_keys, other.announcement().model_key)
    swapped_hpke = KeyAnnouncement((ann.hpke_keys[0], other.announcement().hpke_keys[1]), ann.model_key)
    for changed in (swapped_model, swapped_hpke):
        assert report_data(nonce, changed, cert) != want
    assert report_data(nonce, ann, cert + b"x") != want
    with pytest.raises(ValueError, match="32 bytes"):
        report_data(nonce[:16], ann, cert)


def test_evidence_message_wire_round_trip(enclave: Enclave, agg_cert: bytes, nonce: bytes) -> None:
    msg = enclave.answer_challenge(nonce, agg_cert)
    raw = msg.to_bytes()
    assert EvidenceMessage.from_bytes(raw) == msg
    assert KeyAnnouncement.from_bytes(msg.announcement.to_bytes()) == msg.announcement
    with pytest.raises(IntegrityError, match="canonical"):
        EvidenceMessage.from_bytes(raw.replace(b'{"announcement"', b'{ "announcement"'))
    with pytest.raises(IntegrityError, match="exactly"):
        KeyAnnouncement.from_bytes(b'{"format":"secagg-tee-keys/1"}')


def test_private_keys_never_in_repr(keys: EnclaveKeys) -> None:
    assert "redacted" in repr(keys)


def test_dev_attester_is_named_insecure(caplog: pytest.LogCaptureFixture, dev_key) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING, logger="secagg.tee.attester"):
        att = DevTeeAttester(dev_key, MEASUREMENT)
    assert "INSECURE dev TEE: not a hardware TEE" in caplog.text
    assert "INSECURE" in repr(att) and "INSECURE" in (DevTeeAttester.__doc__ or "")

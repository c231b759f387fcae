"""Sites accept a global model only with the attested aggregator's signature for that job and round."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.bundle import fingerprint
from secagg.tee import Enclave, ModelSignatureInvalid, TrustedAggregator, modelsig

MODEL = OrderedDict(w=np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
FPR = fingerprint(MODEL)


def test_signed_model_verifies(trusted: TrustedAggregator, enclave: Enclave) -> None:
    trusted.verify_model(enclave.sign_model(FPR, "job-1", 4), FPR, "job-1", 4)


def test_forged_signature(trusted: TrustedAggregator) -> None:
    forger = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ModelSignatureInvalid) as info:
        trusted.verify_model(modelsig.sign(forger, FPR, "job-1", 4), FPR, "job-1", 4)
    assert info.value.code == "tee_model_signature"
    with pytest.raises(ModelSignatureInvalid):
        trusted.verify_model(b"\x30\x00", FPR, "job-1", 4)


def test_wrong_round_job_or_model(trusted: TrustedAggregator, enclave: Enclave) -> None:
    sig = enclave.sign_model(FPR, "job-1", 4)
    other = fingerprint(OrderedDict(w=MODEL["w"] + 1))
    for fpr, job, rnd in ((FPR, "job-1", 5), (FPR, "job-2", 4), (other, "job-1", 4)):
        with pytest.raises(ModelSignatureInvalid, match="does not verify"):
            trusted.verify_model(sig, fpr, job, rnd)


def test_fingerprint_must_be_sha256_hex(enclave: Enclave) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        enclave.sign_model("abc", "job-1", 1)

"""Shared fixtures: a dev-TEE enclave, a site policy, a TLS certificate, fixed times."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation.options import ValidationOptions
from secagg.policy.model import Attestation
from secagg.tee import DevTeeAttester, Enclave, EnclaveKeys, TrustedAggregator, verify_aggregator

SNP = Path(__file__).resolve().parent.parent / "vectors" / "sev-snp"
MEASUREMENT = bytes.fromhex("11" * 32)
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
NOW_TS = int(NOW.timestamp())


def tls_cert(cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def policy(**overrides: object) -> ValidationOptions:
    """Options from a real site-policy attestation section (dev TEE accepted, pinned measurement)."""
    section: dict[str, object] = {
        "types": ["dev-tee"],
        "measurements": [MEASUREMENT.hex()],
        "min_tcb": {"snp": 8},
        "max_age_s": 300,
        "allow_insecure_dev_tee": True,
    }
    section.update(overrides)
    return Attestation.model_validate(section).validation_options()


@pytest.fixture(scope="session")
def dev_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def dev_key_pem(dev_key: ec.EllipticCurvePrivateKey) -> bytes:
    return dev_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="session")
def agg_cert() -> bytes:
    return tls_cert("aggregator")


@pytest.fixture(scope="session")
def keys() -> EnclaveKeys:
    return EnclaveKeys.generate()


MakeEnclave = Callable[..., Enclave]


@pytest.fixture(scope="session")
def make_enclave(dev_key: ec.EllipticCurvePrivateKey, keys: EnclaveKeys) -> MakeEnclave:
    def make(
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        measurement: bytes = MEASUREMENT,
        debug: bool = False,
        tcb: dict[str, int] | None = None,
        timestamp: int = NOW_TS,
        enclave_keys: EnclaveKeys | None = None,
    ) -> Enclave:
        att = DevTeeAttester(
            key or dev_key,
            measurement,
            debug=debug,
            tcb=tcb or {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            clock=lambda: timestamp,
        )
        return Enclave(att, enclave_keys or keys)

    return make


@pytest.fixture(scope="session")
def enclave(make_enclave: MakeEnclave) -> Enclave:
    return make_enclave()


@pytest.fixture
def nonce() -> bytes:
    return os.urandom(32)


@pytest.fixture
def trusted(enclave: Enclave, nonce: bytes, agg_cert: bytes, dev_key_pem: bytes) -> TrustedAggregator:
    msg = enclave.answer_challenge(nonce, agg_cert)
    return verify_aggregator(
        msg.to_bytes(),
        nonce,
        agg_cert,
        policy(),
        allow_insecure_dev_tee=True,
        now=NOW,
        trusted_dev_keys=[dev_key_pem],
    )

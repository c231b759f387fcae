"""Suite negotiation: post-quantum hybrid by default, DHKEM(P-384) when the policy or aggregator demands."""

from __future__ import annotations

import os

import pytest

from secagg.errors import IntegrityError
from secagg.tee import AttestationRefused, Enclave, EnclaveKeys, KeyAnnouncement, verify_aggregator
from secagg.tee.site import TrustedAggregator
from tests.tee.conftest import NOW, MakeEnclave, policy


def accept(enc: Enclave, cert: bytes, **kw: object) -> TrustedAggregator:
    n = os.urandom(32)
    return verify_aggregator(
        enc.answer_challenge(n, cert),
        n,
        cert,
        policy(),
        allow_insecure_dev_tee=True,
        now=NOW,
        **kw,  # type: ignore[arg-type]
    )


def test_pq_hybrid_is_the_default(enclave: Enclave, agg_cert: bytes) -> None:
    assert enclave.announcement.suites == ("mlkem768-x25519", "p384")
    assert accept(enclave, agg_cert).suite == "mlkem768-x25519"
    # whatever order the aggregator lists them in, the site takes the strongest
    rev = EnclaveKeys.generate(["p384", "mlkem768-x25519"])
    assert accept(Enclave(enclave.attester, rev), agg_cert).suite == "mlkem768-x25519"


def test_p384_when_policy_demands(enclave: Enclave, agg_cert: bytes) -> None:
    trusted = accept(enclave, agg_cert, allowed_suites=["p384"])
    assert trusted.suite == "p384"
    chunks = list(trusted.seal_update(b"update", "j", 1, "s"))
    assert chunks[0][5] == 2  # suite code in the header
    assert enclave.open_update(chunks, "j", 1, "s") == b"update"


def test_p384_when_aggregator_has_only_that(make_enclave: MakeEnclave, agg_cert: bytes) -> None:
    enc = make_enclave(enclave_keys=EnclaveKeys.generate(["p384"]))
    trusted = accept(enc, agg_cert)
    assert trusted.suite == "p384"
    assert enc.open_update(trusted.seal_update(b"x" * 100, "j", 1, "s"), "j", 1, "s") == b"x" * 100


def test_no_common_suite(make_enclave: MakeEnclave, agg_cert: bytes) -> None:
    enc = make_enclave(enclave_keys=EnclaveKeys.generate(["p384"]))
    with pytest.raises(AttestationRefused) as info:
        accept(enc, agg_cert, allowed_suites=["mlkem768-x25519"])
    assert info.value.code == "tee_suite"


def test_announcement_refuses_bad_keys(keys: EnclaveKeys) -> None:
    ann = keys.announcement()
    with pytest.raises(IntegrityError, match="unknown HPKE suite"):
        KeyAnnouncement((("rsa", b"k"),), ann.model_key)
    with pytest.raises(IntegrityError, match="must be 1216 bytes"):
        KeyAnnouncement((("mlkem768-x25519", ann.hpke_keys[0][1][:-1]),), ann.model_key)
    with pytest.raises(IntegrityError, match="distinct"):
        KeyAnnouncement((ann.hpke_keys[1], ann.hpke_keys[1]), ann.model_key)
    with pytest.raises(ValueError):
        EnclaveKeys.generate([])

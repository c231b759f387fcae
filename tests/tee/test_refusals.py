"""Every way a site must refuse an aggregator, each with its reason code."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.options import ValidationOptions
from secagg.errors import PolicyRefusal
from secagg.tee import (
    AttestationRefused,
    Enclave,
    EnclaveKeys,
    EvidenceMessage,
    KeyPin,
    TrustedAggregator,
    verify_aggregator,
)
from tests.tee.conftest import NOW, NOW_TS, SNP, MakeEnclave, policy, tls_cert


def refused(
    msg: EvidenceMessage | bytes,
    nonce: bytes,
    cert: bytes,
    options: ValidationOptions | None = None,
    *,
    allow: bool = True,
    **kw: object,
) -> AttestationRefused:
    with pytest.raises(AttestationRefused) as info:
        verify_aggregator(
            msg,
            nonce,
            cert,
            options or policy(),
            allow_insecure_dev_tee=allow,
            now=NOW,
            **kw,  # type: ignore[arg-type]
        )
    assert isinstance(info.value, PolicyRefusal)
    return info.value


def test_replay_of_evidence_for_another_nonce(enclave: Enclave, agg_cert: bytes, nonce: bytes) -> None:
    old = enclave.answer_challenge(os.urandom(32), agg_cert)
    err = refused(old, nonce, agg_cert)
    assert err.codes == ("tee_replay",) and err.code == "tee_replay"
    assert "another nonce" in str(err)
    # lying about which nonce it answered does not help: still refused, and named a key-binding failure
    lied = EvidenceMessage(old.evidence, old.announcement, nonce, old.tls_cert_sha256, old.certs)
    assert "tee_key_binding" in refused(lied, nonce, agg_cert).codes


def test_evidence_binding_another_key(enclave: Enclave, agg_cert: bytes, nonce: bytes) -> None:
    """A man in the middle swaps in its own keys but must reuse the genuine evidence."""
    genuine = enclave.answer_challenge(nonce, agg_cert)
    mitm_keys = EnclaveKeys.generate().announcement()
    for ann in (mitm_keys, type(mitm_keys)(genuine.announcement.hpke_keys, mitm_keys.model_key)):
        swapped = EvidenceMessage(genuine.evidence, ann, nonce, genuine.tls_cert_sha256)
        err = refused(swapped, nonce, agg_cert)
        assert err.codes == ("tee_key_binding",)
        assert "does not bind the announced keys" in str(err)


def test_evidence_binding_another_tls_certificate(enclave: Enclave, agg_cert: bytes, nonce: bytes) -> None:
    relayed = enclave.answer_challenge(nonce, agg_cert)
    err = refused(relayed, nonce, tls_cert("mitm"))
    assert err.codes == ("tee_channel_binding",)
    assert "TLS certificate" in str(err)


def test_debug_guest(make_enclave: MakeEnclave, agg_cert: bytes, nonce: bytes) -> None:
    msg = make_enclave(debug=True).answer_challenge(nonce, agg_cert)
    assert refused(msg, nonce, agg_cert).codes == ("tee_debug",)
    verify_aggregator(msg, nonce, agg_cert, policy(debug_allowed=True), allow_insecure_dev_tee=True, now=NOW)


def test_measurement_not_allowed(make_enclave: MakeEnclave, agg_cert: bytes, nonce: bytes) -> None:
    msg = make_enclave(measurement=bytes(32)).answer_challenge(nonce, agg_cert)
    err = refused(msg, nonce, agg_cert)
    assert err.codes == ("tee_measurement",) and "allow-list" in str(err)


def test_tcb_below_minimum(make_enclave: MakeEnclave, agg_cert: bytes, nonce: bytes) -> None:
    msg = make_enclave(tcb={"bootloader": 3, "tee": 0, "snp": 7, "microcode": 115}).answer_challenge(
        nonce, agg_cert
    )
    err = refused(msg, nonce, agg_cert)
    assert err.codes == ("tee_tcb",) and "min_tcb.snp" in str(err)


def test_every_failed_field_is_listed(make_enclave: MakeEnclave, agg_cert: bytes, nonce: bytes) -> None:
    bad = make_enclave(debug=True, measurement=bytes(32), tcb={"snp": 1}, timestamp=NOW_TS - 3600)
    err = refused(bad.answer_challenge(nonce, tls_cert("other")), nonce, agg_cert)
    assert set(err.codes) == {"tee_channel_binding", "tee_debug", "tee_measurement", "tee_tcb", "tee_stale"}
    for word in ("debug", "measurement", "min_tcb.snp", "timestamp", "TLS certificate"):
        assert word in str(err)


def test_stale_evidence(make_enclave: MakeEnclave, agg_cert: bytes, nonce: bytes) -> None:
    msg = make_enclave(timestamp=NOW_TS - 301).answer_challenge(nonce, agg_cert)
    err = refused(msg, nonce, agg_cert)
    assert err.codes == ("tee_stale",) and "max 300 s" in str(err)
    fresh = make_enclave(timestamp=NOW_TS - 299).answer_challenge(nonce, agg_cert)
    verify_aggregator(fresh, nonce, agg_cert, policy(), allow_insecure_dev_tee=True, now=NOW)


def test_dev_evidence_from_a_key_that_is_not_pinned(
    make_enclave: MakeEnclave, agg_cert: bytes, nonce: bytes, dev_key_pem: bytes
) -> None:
    rogue = ec.generate_private_key(ec.SECP384R1())
    rogue_pem = rogue.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    msg = make_enclave(key=rogue).answer_challenge(nonce, agg_cert)
    err = refused(msg, nonce, agg_cert, trusted_dev_keys=[dev_key_pem])
    assert err.codes == ("tee_chain",) and "not among the trusted keys" in str(err)
    # the aggregator cannot make its own key trusted by sending it along with the evidence
    with_own_key = EvidenceMessage(
        msg.evidence, msg.announcement, msg.nonce, msg.tls_cert_sha256, (rogue_pem,)
    )
    assert refused(with_own_key, nonce, agg_cert, trusted_dev_keys=[dev_key_pem]).codes == ("tee_chain",)


@pytest.mark.filterwarnings("ignore:.*serial number")  # AMD VCEKs have serial number 0
def test_real_sev_snp_report_is_refused_for_binding(agg_cert: bytes, nonce: bytes, keys: EnclaveKeys) -> None:
    """A genuine, verifiable Milan report (virtee/sev vector) that was not made for this exchange."""
    report = (SNP / "virtee-sev" / "report_milan.hex").read_bytes()
    vcek = (SNP / "virtee-sev" / "vcek_milan.der").read_bytes()
    ann = keys.announcement()
    msg = EvidenceMessage(report, ann, nonce, os.urandom(32), (vcek,))
    snp_policy = policy(types=["sev-snp"], measurements=[], allow_insecure_dev_tee=False)
    err = refused(msg, nonce, agg_cert, snp_policy, allow=False)
    assert err.codes == ("tee_key_binding",)  # authentic (no tee_chain), but binds none of our data
    strict = policy(types=["sev-snp"], measurements=[], allow_insecure_dev_tee=False, vmpl=3)
    assert set(refused(msg, nonce, agg_cert, strict, allow=False).codes) == {"tee_key_binding", "tee_policy"}
    # and with an expired chain it is not authentic at all
    with pytest.raises(AttestationRefused) as late:
        verify_aggregator(
            msg, nonce, agg_cert, snp_policy, allow_insecure_dev_tee=False, now=NOW.replace(year=2031)
        )
    assert late.value.codes == ("tee_chain",) and "cert_validity" in str(late.value)


def test_production_policy_refuses_dev_tee(enclave: Enclave, agg_cert: bytes, nonce: bytes) -> None:
    msg = enclave.answer_challenge(nonce, agg_cert)
    err = refused(msg, nonce, agg_cert, policy(allow_insecure_dev_tee=False), allow=False)
    assert err.code == "tee_dev_not_allowed"
    assert "insecure dev TEE refused" in str(err) and "allow_insecure_dev_tee" in str(err)
    err = refused(msg, nonce, agg_cert, policy(types=["sev-snp", "tdx"]), allow=False)
    assert set(err.codes) == {"tee_dev_not_allowed", "tee_type"}


def test_malformed_answers(enclave: Enclave, agg_cert: bytes, nonce: bytes) -> None:
    assert refused(b"not json", nonce, agg_cert).codes == ("tee_malformed",)
    msg = enclave.answer_challenge(nonce, agg_cert)
    junk = EvidenceMessage(b"\x00" * 10, msg.announcement, nonce, msg.tls_cert_sha256)
    assert refused(junk, nonce, agg_cert).codes == ("tee_malformed",)


def test_aggregator_switching_keys_mid_job(
    make_enclave: MakeEnclave, enclave: Enclave, agg_cert: bytes
) -> None:
    pin = KeyPin()

    def check(enc: Enclave, job: str) -> TrustedAggregator:
        n = os.urandom(32)
        return verify_aggregator(
            enc.answer_challenge(n, agg_cert),
            n,
            agg_cert,
            policy(),
            allow_insecure_dev_tee=True,
            now=NOW,
            key_pin=pin,
            job=job,
        )

    check(enclave, "job-1")
    check(enclave, "job-1")  # fresh evidence, same keys: fine
    switched = make_enclave(enclave_keys=EnclaveKeys.generate())
    with pytest.raises(AttestationRefused) as info:
        check(switched, "job-1")
    assert info.value.code == "tee_key_changed" and "job-1" in str(info.value)
    check(switched, "job-2")  # another job may use other keys
    restored = KeyPin.from_json(pin.to_json())
    assert restored.pinned("job-1") == enclave.announcement.digest().hex()
    with pytest.raises(AttestationRefused):
        restored.check("job-1", switched.announcement)

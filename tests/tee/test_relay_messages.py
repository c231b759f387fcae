"""``tee-mask`` messages: sealed per phase from the sites, signed per recipient by the enclave."""

from __future__ import annotations

import pytest

from secagg.errors import UpdateRejected
from secagg.tee import Enclave, TrustedAggregator
from secagg.tee.errors import RelaySignatureInvalid
from secagg.tee.relaysig import EVERYONE

MSG = b'{"phase": "keys", "x": 1}'


def test_a_sealed_message_opens_only_for_its_own_phase_and_site(
    trusted: TrustedAggregator, enclave: Enclave
) -> None:
    sealed = list(trusted.seal_message(MSG, "job-1", 2, "site-1", "mask-keys/attempt-0"))
    assert MSG not in b"".join(sealed)
    assert enclave.open_message(sealed, "job-1", 2, "site-1", "mask-keys/attempt-0", max_bytes=1 << 20) == MSG
    for site, purpose, rnd in [
        ("site-1", "mask-shares/attempt-0", 2),  # replayed into another phase
        ("site-1", "mask-keys/attempt-1", 2),  # into another attempt
        ("site-2", "mask-keys/attempt-0", 2),  # in another site's name
        ("site-1", "mask-keys/attempt-0", 3),  # into another round
    ]:
        with pytest.raises(UpdateRejected) as info:
            enclave.open_message(sealed, "job-1", rnd, site, purpose, max_bytes=1 << 20)
        assert info.value.code == "tee_chunk_auth"


def test_a_message_is_not_an_update(trusted: TrustedAggregator, enclave: Enclave) -> None:
    """Neither kind of sealed bytes opens as the other, so a masked input cannot pass for a message."""
    update = list(trusted.seal_update(MSG, "job-1", 2, "site-1"))
    with pytest.raises(UpdateRejected):
        enclave.open_message(update, "job-1", 2, "site-1", "mask-keys/attempt-0", max_bytes=1 << 20)
    message = list(trusted.seal_message(MSG, "job-1", 2, "site-1", "mask-keys/attempt-0"))
    with pytest.raises(UpdateRejected):
        enclave.open_update(message, "job-1", 2, "site-1")


def test_a_message_over_its_phase_limit_is_refused(trusted: TrustedAggregator, enclave: Enclave) -> None:
    sealed = list(trusted.seal_message(MSG * 100, "job-1", 2, "site-1", "p"))
    with pytest.raises(UpdateRejected) as info:
        enclave.open_message(sealed, "job-1", 2, "site-1", "p", max_bytes=len(MSG))
    assert info.value.code == "tee_chunk_size"


def test_what_the_enclave_publishes_is_signed_per_recipient(
    trusted: TrustedAggregator, enclave: Enclave
) -> None:
    signed = enclave.sign_message(MSG, "job-1", 2, 0, "mask-myshares", "site-1")
    assert trusted.open_message(signed, "job-1", 2, 0, "mask-myshares", "site-1") == MSG
    for args in [
        ("job-1", 2, 0, "mask-myshares", "site-2"),  # shown to another site
        ("job-1", 2, 0, "mask-keyroster", "site-1"),  # passed off as another phase
        ("job-1", 2, 1, "mask-myshares", "site-1"),  # replayed into a retry
        ("job-2", 2, 0, "mask-myshares", "site-1"),  # into another job
    ]:
        with pytest.raises(RelaySignatureInvalid):
            trusted.open_message(signed, *args)  # type: ignore[arg-type]
    broadcast = enclave.sign_message(MSG, "job-1", 2, 0, "mask-keyroster", EVERYONE)
    assert trusted.open_message(broadcast, "job-1", 2, 0, "mask-keyroster", EVERYONE) == MSG


def test_the_host_cannot_alter_or_forge_what_the_enclave_said(
    trusted: TrustedAggregator, enclave: Enclave
) -> None:
    signed = enclave.sign_message(MSG, "job-1", 2, 0, "mask-unmask", EVERYONE)
    altered = signed[:-1] + bytes([signed[-1] ^ 1])  # e.g. another list of survivors
    for bad in (altered, MSG, b"", b"\x00\x01", b"\xff\xff" + signed[2:]):
        with pytest.raises(RelaySignatureInvalid) as info:
            trusted.open_message(bad, "job-1", 2, 0, "mask-unmask", EVERYONE)
        assert info.value.code == "tee_relay_signature"

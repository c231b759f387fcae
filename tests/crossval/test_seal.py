"""A sealed local model opens only for its recipient, in its job, from its signed sender; a consent
verifies only as signed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from secagg.crossval.seal import Consent, Envelope, EnvelopeError, open_model, seal_model
from secagg.provision.kit import Kit, load_kit

MODEL = b"safetensors bytes of a local model" * 10


@pytest.fixture(scope="module")
def kits(workspace: Path) -> dict[str, Kit]:
    return {s: load_kit(workspace / s) for s in ("site-1", "site-2", "site-3")}


def _seal(kits: dict[str, Kit], sender: str = "site-1", to: str = "site-2", job: str = "job-1") -> Envelope:
    return seal_model(
        MODEL,
        project=kits[sender].config.project,
        job=job,
        sender=sender,
        sender_key=kits[sender].private_key,
        recipient=to,
        recipient_cert=kits[to].cert,
    )


def _open(
    kits: dict[str, Kit], env: Envelope, me: str = "site-2", job: str = "job-1", sender: str = "site-1"
) -> bytes:
    return open_model(
        env,
        project=kits[me].config.project,
        job=job,
        me=me,
        my_key=kits[me].private_key,
        sender_cert=kits[sender].cert,
    )


def test_round_trip_through_bytes(kits: dict[str, Kit]) -> None:
    env = Envelope.from_bytes(_seal(kits).to_bytes())
    assert MODEL not in env.to_bytes()
    assert _open(kits, env) == MODEL


def test_only_the_recipient_opens_it(kits: dict[str, Kit]) -> None:
    env = _seal(kits)
    with pytest.raises(EnvelopeError, match="not site-3"):
        _open(kits, env, me="site-3")
    readdressed = dataclasses.replace(env, recipient="site-3")  # a relay cannot re-address it either
    with pytest.raises(EnvelopeError, match="not signed by site-1"):
        _open(kits, readdressed, me="site-3")


def test_another_job_or_a_forged_sender_is_refused(kits: dict[str, Kit]) -> None:
    env = _seal(kits)
    with pytest.raises(EnvelopeError):
        _open(kits, env, job="job-2")  # replayed into another job
    # site-3 seals a model of its own and calls it site-1's: site-1's signature is missing
    forged = dataclasses.replace(_seal(kits, sender="site-3"), sender="site-1")
    with pytest.raises(EnvelopeError, match="not signed by site-1"):
        _open(kits, forged)


def test_tampered_ciphertext_is_refused(kits: dict[str, Kit]) -> None:
    env = _seal(kits)
    flipped = dataclasses.replace(env, sealed=env.sealed[:-1] + bytes([env.sealed[-1] ^ 1]))
    with pytest.raises(EnvelopeError):
        _open(kits, flipped)


def test_malformed_envelope_is_one_clear_error() -> None:
    for data in (b"not json", b"[]", b'{"format": "other"}'):
        with pytest.raises(EnvelopeError):
            Envelope.from_bytes(data)


def test_consent_verifies_only_as_signed(kits: dict[str, Kit]) -> None:
    k = kits["site-1"]
    c = Consent("job-1", "site-1", True, "ok").signed(k.private_key, k.config.project)
    again = Consent.from_dict(c.to_dict())
    again.verify(k.cert, k.config.project)
    with pytest.raises(EnvelopeError):
        dataclasses.replace(again, share=False).verify(k.cert, k.config.project)
    with pytest.raises(EnvelopeError):
        again.verify(kits["site-2"].cert, k.config.project)
    with pytest.raises(EnvelopeError):
        Consent.from_dict({**c.to_dict(), "share": "yes"})

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from secagg.errors import IdentityError, IntegrityError
from secagg.he.codec import CiphertextAccumulator, decrypt_vector, encrypt_vector
from secagg.he.context import SecretContext
from secagg.he.custody import SUITE, KeyRelease, _envelope_info, make_key_envelopes, open_envelope
from secagg.provision.kit import Kit, load_kit
from secagg.provision.writer import provision
from tests.conftest import make_project

PROJECT = "test-project"


@pytest.fixture(scope="module")
def kits(workspace: Path) -> dict[str, Kit]:
    return {name: load_kit(workspace / name) for name in ("site-1", "site-2", "site-3", "aggregator")}


@pytest.fixture(scope="module")
def release(kits: dict[str, Kit], secret_ctx: SecretContext) -> KeyRelease:
    holder = kits["site-1"]
    recipients = {name: kits[name].cert for name in ("site-2", "site-3")}
    return make_key_envelopes(secret_ctx, holder.private_key, holder.cert, recipients, PROJECT)


def test_release_round_trip_and_end_to_end(
    kits: dict[str, Kit], release: KeyRelease, secret_ctx: SecretContext
) -> None:
    relayed = KeyRelease.from_bytes(release.to_bytes())
    assert relayed == release and set(relayed.envelopes) == {"site-2", "site-3"}
    assert secret_ctx.serialize_secret() not in relayed.to_bytes()
    ca = kits["aggregator"].ca_cert
    public = relayed.verify(ca, "site-1", PROJECT)  # what the aggregator does
    assert public.key_commitment == secret_ctx.key_commitment
    site2 = relayed.open(kits["site-2"].private_key, "site-2", ca, "site-1", PROJECT)
    site3 = relayed.open(kits["site-3"].private_key, "site-3", ca, "site-1", PROJECT)
    assert site2.key_commitment == site3.key_commitment == secret_ctx.key_commitment
    x = np.random.default_rng(0).uniform(-0.05, 0.05, (2, 50))
    acc = CiphertextAccumulator(public, 1)
    for ctx, xi in ((site2, x[0]), (site3, x[1])):
        for i, frame in enumerate(encrypt_vector(ctx, xi, 0.5)):
            acc.add(i, frame)
    out = decrypt_vector(secret_ctx, acc.result(), 50)
    assert np.max(np.abs(out - x.mean(axis=0))) <= 1e-7


def test_envelope_opens_only_for_its_recipient(kits: dict[str, Kit], release: KeyRelease) -> None:
    public = release.verify(kits["site-2"].ca_cert, "site-1", PROJECT)
    env = release.envelopes["site-2"]
    cases = [
        (kits["site-3"].private_key, "site-2", PROJECT),  # another site's key
        (kits["site-3"].private_key, "site-3", PROJECT),  # another site, its own name
        (kits["site-2"].private_key, "site-3", PROJECT),  # right key, wrong name in info
        (kits["site-2"].private_key, "site-2", "other-project"),
    ]
    for key, name, project in cases:
        with pytest.raises(IntegrityError, match="does not open"):
            open_envelope(env, key, name, project, public=public)
    tampered = bytearray(env)
    tampered[-20] ^= 1
    with pytest.raises(IntegrityError, match="does not open"):
        open_envelope(bytes(tampered), kits["site-2"].private_key, "site-2", PROJECT, public=public)
    with pytest.raises(IntegrityError, match="no envelope"):
        release.open(kits["site-1"].private_key, "site-1", kits["site-1"].ca_cert, "site-1", PROJECT)


def test_relay_cannot_substitute_its_own_key(
    kits: dict[str, Kit], release: KeyRelease, other_secret_ctx: SecretContext
) -> None:
    """HPKE base mode lets anyone seal to a site; the signed key commitment is what stops a relay."""
    public = release.verify(kits["site-2"].ca_cert, "site-1", PROJECT)
    forged = SUITE.encrypt(
        other_secret_ctx.serialize_secret(),
        kits["site-2"].cert.public_key(),
        info=_envelope_info(PROJECT, "site-2"),
    )
    with pytest.raises(IntegrityError, match="not the one the key holder signed"):
        open_envelope(forged, kits["site-2"].private_key, "site-2", PROJECT, public=public)
    swapped = dataclasses.replace(release, envelopes={"site-2": forged})
    with pytest.raises(IntegrityError):
        swapped.open(kits["site-2"].private_key, "site-2", kits["site-2"].ca_cert, "site-1", PROJECT)


def test_public_context_signature_refusals(
    kits: dict[str, Kit], release: KeyRelease, secret_ctx: SecretContext, tmp_path: Path
) -> None:
    ca = kits["aggregator"].ca_cert
    tampered_ctx = bytearray(release.public_context)
    tampered_ctx[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not verify"):
        dataclasses.replace(release, public_context=bytes(tampered_ctx)).verify(ca, "site-1", PROJECT)
    bad_sig = bytearray(release.public_context_sig)
    bad_sig[-1] ^= 1
    with pytest.raises(IntegrityError):
        dataclasses.replace(release, public_context_sig=bytes(bad_sig)).verify(ca, "site-1", PROJECT)
    with pytest.raises(IntegrityError, match="does not verify"):
        release.verify(ca, "site-1", "other-project")
    # a genuine site that is not the key holder
    by_site2 = make_key_envelopes(secret_ctx, kits["site-2"].private_key, kits["site-2"].cert, {}, PROJECT)
    with pytest.raises(IdentityError, match="not the key holder"):
        by_site2.verify(ca, "site-1", PROJECT)
    # holder's signature presented with another site's certificate
    with pytest.raises(IntegrityError, match="does not verify"):
        dataclasses.replace(release, holder_cert_pem=by_site2.holder_cert_pem).verify(ca, "site-2", PROJECT)
    # the aggregator is never a key holder, even if named as one
    by_agg = make_key_envelopes(
        secret_ctx, kits["aggregator"].private_key, kits["aggregator"].cert, {}, PROJECT
    )
    with pytest.raises(IdentityError, match="role"):
        by_agg.verify(ca, "aggregator", PROJECT)
    # same names, another project CA
    foreign_ws = tmp_path / "foreign"
    provision(make_project(name=PROJECT), foreign_ws)
    foreign = load_kit(foreign_ws / "site-1")
    by_foreign = make_key_envelopes(secret_ctx, foreign.private_key, foreign.cert, {}, PROJECT)
    with pytest.raises(IdentityError, match="CA"):
        by_foreign.verify(ca, "site-1", PROJECT)


def test_make_key_envelopes_checks_its_inputs(kits: dict[str, Kit], secret_ctx: SecretContext) -> None:
    holder = kits["site-1"]
    with pytest.raises(IdentityError, match="does not belong"):
        make_key_envelopes(secret_ctx, kits["site-2"].private_key, holder.cert, {}, PROJECT)
    with pytest.raises(IdentityError, match="not a site"):
        make_key_envelopes(
            secret_ctx, holder.private_key, holder.cert, {"site-2": kits["site-3"].cert}, PROJECT
        )
    with pytest.raises(IdentityError, match="not a site"):
        make_key_envelopes(
            secret_ctx, holder.private_key, holder.cert, {"aggregator": kits["aggregator"].cert}, PROJECT
        )


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"format": "secagg-he-key-release/v1"}',
        b'{"format": "other"}',
    ],
)
def test_release_parse_refusals(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        KeyRelease.from_bytes(data)


def test_release_bad_base64_refused(release: KeyRelease) -> None:
    text = release.to_bytes().replace(b'"public_context": "', b'"public_context": "!!')
    with pytest.raises(IntegrityError, match="base64"):
        KeyRelease.from_bytes(text)
